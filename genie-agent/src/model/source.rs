//! Objects as the sources deliver them: typed, one by one, each with where it came from.
//!
//! Both sources (the YAML directory and the Kubernetes API) build [`SourceObject`]s through
//! [`SourceObject::new`], so a spec is read into its type once, by the same code, and an
//! object that cannot be read is that object's problem only.

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt, fs,
    path::{Path, PathBuf},
};

use serde::{Deserialize as _, de::DeserializeOwned};

use super::{
    ConfigError,
    check::check_name,
    objects::{API_VERSION, LogicalNetworkSpec, ObjectMeta, PhysicalNetworkSpec, TenantSpec},
};

/// Every kind genie reads. The three genie kinds come first, in the order acceptance decides
/// them (a `LogicalNetwork` depends on its `Tenant` and `PhysicalNetwork`).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
pub enum Kind {
    PhysicalNetwork,
    Tenant,
    LogicalNetwork,
    /// A pod manifest (file mode; the Kubernetes source delivers this node's pods): only its
    /// annotations matter, they say which networks the pod asks for.
    Pod,
}

impl Kind {
    /// The kinds genie defines (its CRDs), in acceptance order.
    pub const GENIE: [Kind; 3] = [Kind::PhysicalNetwork, Kind::Tenant, Kind::LogicalNetwork];
    pub const ALL: [Kind; 4] = [
        Kind::PhysicalNetwork,
        Kind::Tenant,
        Kind::LogicalNetwork,
        Kind::Pod,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Kind::PhysicalNetwork => "PhysicalNetwork",
            Kind::Tenant => "Tenant",
            Kind::LogicalNetwork => "LogicalNetwork",
            Kind::Pod => "Pod",
        }
    }

    pub fn parse(name: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.name() == name)
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Where an object came from.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase", tag = "source")]
pub enum Origin {
    /// A document of a YAML file (1-based).
    File { path: PathBuf, document: usize },
    /// The Kubernetes API.
    Api {
        kind: Kind,
        name: String,
        resource_version: String,
    },
}

impl Origin {
    /// The file an object came from (file mode).
    pub fn file(&self) -> Option<&Path> {
        match self {
            Origin::File { path, .. } => Some(path),
            Origin::Api { .. } => None,
        }
    }

    /// What error messages name as the object's "file".
    pub fn label(&self) -> PathBuf {
        match self {
            Origin::File { path, .. } => path.clone(),
            Origin::Api { kind, name, .. } => PathBuf::from(format!("kube:{kind}/{name}")),
        }
    }
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::File { path, document } => write!(f, "{} document {document}", path.display()),
            Origin::Api {
                kind,
                name,
                resource_version,
            } => write!(f, "{kind}/{name} resourceVersion {resource_version}"),
        }
    }
}

/// An object's spec, read into its type.
#[derive(Debug, Clone, PartialEq)]
pub enum Spec {
    Physical(PhysicalNetworkSpec),
    Tenant(TenantSpec),
    Logical(Box<LogicalNetworkSpec>),
    Pod,
}

/// One object from a source.
#[derive(Debug, Clone, PartialEq)]
pub struct SourceObject {
    pub kind: Kind,
    pub name: String,
    /// Pods only.
    pub namespace: Option<String>,
    /// Pods only: the network requests.
    pub annotations: BTreeMap<String, String>,
    pub origin: Origin,
    /// Age rank for conflicts (lower is older): creation time in seconds (Kubernetes), the
    /// file's position in the sorted directory (file mode); ties are broken by name.
    pub age: i64,
    /// The spec as the source holds it (what "changed" is decided on, and what is kept as the
    /// last valid version).
    pub raw: serde_json::Value,
    /// The spec read into its type, or why it cannot be.
    pub spec: Result<Spec, Vec<ConfigError>>,
}

impl SourceObject {
    /// Reads one object: `api_version` must be genie's (except for pods), the name a DNS
    /// label, and `raw` the kind's spec (an absent spec reads as an empty one, so required
    /// fields are reported by name).
    pub fn new(
        kind: Kind,
        meta: ObjectMeta,
        api_version: &str,
        raw: serde_json::Value,
        origin: Origin,
        age: i64,
    ) -> Self {
        let label = origin.label();
        let err = |field: &str, message: String| ConfigError {
            file: label.clone(),
            kind: kind.name().to_owned(),
            name: meta.name.clone(),
            field: field.to_owned(),
            message,
        };
        let spec = if kind == Kind::Pod {
            Ok(Spec::Pod)
        } else if api_version != API_VERSION {
            Err(vec![err(
                "apiVersion",
                format!("{api_version:?} is not {API_VERSION:?}"),
            )])
        } else if let Err(message) = check_name(&meta.name) {
            Err(vec![err("metadata.name", message)])
        } else {
            let typed = match kind {
                Kind::PhysicalNetwork => typed(&raw).map(Spec::Physical),
                Kind::Tenant => typed(&raw).map(Spec::Tenant),
                Kind::LogicalNetwork => typed(&raw).map(|s| Spec::Logical(Box::new(s))),
                Kind::Pod => Ok(Spec::Pod),
            };
            typed.map_err(|(field, message)| vec![err(&field, message)])
        };
        Self {
            kind,
            name: meta.name,
            namespace: meta.namespace,
            annotations: meta.annotations,
            origin,
            age,
            raw,
            spec,
        }
    }
}

/// `raw` read as `T`, or the field path and message of the first problem.
fn typed<T: DeserializeOwned>(raw: &serde_json::Value) -> Result<T, (String, String)> {
    let mut spec = if raw.is_null() {
        serde_json::Value::Object(serde_json::Map::new())
    } else {
        raw.clone()
    };
    drop_null_fields(&mut spec);
    serde_path_to_error::deserialize(spec).map_err(|e| {
        let path = e.path().to_string();
        let field = if path == "." {
            "spec".to_owned()
        } else {
            format!("spec.{path}")
        };
        (field, e.into_inner().to_string())
    })
}

/// A field written without a value (`isolation:` in YAML, `null` in JSON) reads as an absent
/// one, as the API server's merge semantics and YAML authors expect.
fn drop_null_fields(value: &mut serde_json::Value) {
    match value {
        serde_json::Value::Object(map) => {
            map.retain(|_, v| !v.is_null());
            map.values_mut().for_each(drop_null_fields);
        }
        serde_json::Value::Array(items) => items.iter_mut().for_each(drop_null_fields),
        _ => {}
    }
}

/// What a configuration directory holds.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Loaded {
    pub objects: Vec<SourceObject>,
    /// Problems that belong to no object (an unreadable file, broken YAML, a document
    /// without kind or name, an unknown kind).
    pub problems: Vec<ConfigError>,
    /// Files that could not be read whole: objects last seen in them are not taken as deleted.
    pub unreadable: BTreeSet<PathBuf>,
}

/// Errors of reading the configuration directory itself.
#[derive(Debug, thiserror::Error)]
#[error("cannot read configuration directory {path}: {source}")]
pub struct ReadDirError {
    pub path: PathBuf,
    pub source: std::io::Error,
}

/// Reads every `*.yaml` / `*.yml` in `dir` (sorted, not recursive).
pub fn load_dir(dir: &Path) -> Result<Loaded, ReadDirError> {
    let mut files: Vec<PathBuf> = fs::read_dir(dir)
        .map_err(|source| ReadDirError {
            path: dir.to_owned(),
            source,
        })?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.is_file() && matches!(p.extension().and_then(|e| e.to_str()), Some("yaml" | "yml"))
        })
        .collect();
    files.sort();
    let mut sources = Vec::new();
    let mut unreadable = Vec::new();
    for file in files {
        match fs::read_to_string(&file) {
            Ok(text) => sources.push((file, text)),
            Err(e) => unreadable.push((file, e)),
        }
    }
    let mut loaded = load_texts(&sources);
    for (file, e) in unreadable {
        loaded
            .problems
            .push(document_error(&file, "", format!("cannot read: {e}")));
        loaded.unreadable.insert(file);
    }
    Ok(loaded)
}

fn document_error(file: &Path, field: &str, message: String) -> ConfigError {
    ConfigError {
        file: file.to_owned(),
        kind: String::new(),
        name: String::new(),
        field: field.to_owned(),
        message,
    }
}

/// Reads objects from (file name, YAML text) pairs; a file's position in the list is its age.
pub fn load_texts(sources: &[(PathBuf, String)]) -> Loaded {
    let mut loaded = Loaded::default();
    for (position, (file, text)) in sources.iter().enumerate() {
        for (index, document) in serde_yaml::Deserializer::from_str(text).enumerate() {
            let document_number = index + 1;
            let value = match serde_yaml::Value::deserialize(document) {
                Ok(v) => v,
                Err(e) => {
                    loaded.problems.push(document_error(
                        file,
                        "",
                        format!("document {document_number}: not valid YAML: {e}"),
                    ));
                    loaded.unreadable.insert(file.clone());
                    // The parser cannot resynchronise after a syntax error (it would report
                    // the same error forever): the rest of the file is unreadable.
                    break;
                }
            };
            if value.is_null() {
                continue;
            }
            let origin = Origin::File {
                path: file.clone(),
                document: document_number,
            };
            match file_object(value, origin, position as i64) {
                Ok(object) => loaded.objects.push(object),
                Err(e) => {
                    // Without a kind and a name the document's object cannot be told apart
                    // from a deleted one: the file counts as unreadable.
                    loaded.unreadable.insert(file.clone());
                    loaded.problems.push(e);
                }
            }
        }
    }
    loaded
}

fn file_object(
    value: serde_yaml::Value,
    origin: Origin,
    age: i64,
) -> Result<SourceObject, ConfigError> {
    let file = origin.label();
    let document = match &origin {
        Origin::File { document, .. } => *document,
        Origin::Api { .. } => 0,
    };
    let err = |kind: &str, name: &str, field: &str, message: String| ConfigError {
        file: file.clone(),
        kind: kind.to_owned(),
        name: name.to_owned(),
        field: field.to_owned(),
        message: format!("document {document}: {message}"),
    };
    let str_field = |key: &str| value.get(key).and_then(|v| v.as_str()).map(str::to_owned);
    let kind_name = str_field("kind").ok_or_else(|| err("", "", "kind", "missing".to_owned()))?;
    let meta: ObjectMeta = match value.get("metadata") {
        Some(m) => serde_yaml::from_value(m.clone())
            .map_err(|e| err(&kind_name, "", "metadata", e.to_string()))?,
        None => return Err(err(&kind_name, "", "metadata.name", "missing".to_owned())),
    };
    let Some(kind) = Kind::parse(&kind_name) else {
        return Err(err(
            &kind_name,
            &meta.name,
            "kind",
            format!(
                "unknown kind {kind_name:?} (expected one of {})",
                Kind::ALL.map(Kind::name).join(", ")
            ),
        ));
    };
    let api_version = str_field("apiVersion").unwrap_or_default();
    let raw = match value.get("spec") {
        None => serde_json::Value::Null,
        Some(spec) => serde_json::to_value(spec)
            .map_err(|e| err(&kind_name, &meta.name, "spec", e.to_string()))?,
    };
    Ok(SourceObject::new(
        kind,
        meta,
        &api_version,
        raw,
        origin,
        age,
    ))
}
