//! A Kubernetes API server stand-in, inside the test process, speaking the real HTTP protocol
//! for what genie uses, so the agent's real kube-rs client can be pointed at it through a
//! kubeconfig.
//!
//! Implemented: list (with `resourceVersion` in the list metadata, no paging), watch streams
//! (chunked JSON lines: ADDED / MODIFIED / DELETED, BOOKMARK when asked for, an ERROR event with
//! `410 Gone` when the requested version is older than the compaction point), JSON merge
//! patch (RFC 7386) on objects and on the `status` subresource, and create (POST) of
//! cluster-scoped genie objects, for the cluster-scoped genie kinds, Pods, Nodes and the
//! Services of `kube-system`. Test controls: put/delete objects, drop every open watch, compact
//! the history, and stop/restart the server on the same port.
//!
//! Not implemented: authentication, label and field selectors (ignored: every watch gets every
//! object of its resource), paging (`limit` is ignored, lists are complete), server-side
//! apply, strategic merge patch, update, create of core objects, namespaced lists other than
//! all pods.

use std::{
    collections::BTreeMap,
    io::{BufRead as _, BufReader, Read as _, Write as _},
    net::{SocketAddr, TcpListener, TcpStream},
    path::Path,
    sync::{Arc, Condvar, Mutex},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};
use serde_json::{Value, json};

/// A resource the stand-in serves: its list path and how objects are named in it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Resource {
    PhysicalNetworks,
    LogicalNetworks,
    Tenants,
    Pods,
    Nodes,
    /// Services of `kube-system` only (the cluster DNS).
    Services,
    /// What each node's agent publishes (created by the agents).
    NodeEndpoints,
}

impl Resource {
    const ALL: [Resource; 7] = [
        Resource::PhysicalNetworks,
        Resource::LogicalNetworks,
        Resource::Tenants,
        Resource::Pods,
        Resource::Nodes,
        Resource::Services,
        Resource::NodeEndpoints,
    ];

    fn list_path(self) -> &'static str {
        match self {
            Resource::PhysicalNetworks => "/apis/genie.dev/v1alpha1/physicalnetworks",
            Resource::LogicalNetworks => "/apis/genie.dev/v1alpha1/logicalnetworks",
            Resource::Tenants => "/apis/genie.dev/v1alpha1/tenants",
            Resource::Pods => "/api/v1/pods",
            Resource::Nodes => "/api/v1/nodes",
            Resource::Services => "/api/v1/namespaces/kube-system/services",
            Resource::NodeEndpoints => "/apis/genie.dev/v1alpha1/nodeendpoints",
        }
    }

    fn api_version(self) -> &'static str {
        match self {
            Resource::Pods | Resource::Nodes | Resource::Services => "v1",
            _ => "genie.dev/v1alpha1",
        }
    }

    fn kind(self) -> &'static str {
        match self {
            Resource::PhysicalNetworks => "PhysicalNetwork",
            Resource::LogicalNetworks => "LogicalNetwork",
            Resource::Tenants => "Tenant",
            Resource::Pods => "Pod",
            Resource::Nodes => "Node",
            Resource::Services => "Service",
            Resource::NodeEndpoints => "NodeEndpoints",
        }
    }

    /// The resource of a `kind`.
    pub fn of_kind(kind: &str) -> Option<Resource> {
        Resource::ALL.into_iter().find(|r| r.kind() == kind)
    }
}

/// (resource, namespace, name).
type Key = (Resource, String, String);

#[derive(Debug, Default)]
struct State {
    objects: BTreeMap<Key, Value>,
    /// Every change: (resourceVersion, resource, event type, object).
    history: Vec<(u64, Resource, &'static str, Value)>,
    version: u64,
    /// Watches asking to resume before this version get `410 Gone`.
    compacted: u64,
    /// Bumped to end every open watch.
    watch_epoch: u64,
    /// While false, open watches end and no request is served.
    up: bool,
    /// Requests served, by method and path (for tests that check what the agent did).
    requests: Vec<String>,
    /// Resources whose watch events are held back (a watch that is slow to deliver).
    held: std::collections::BTreeSet<Resource>,
}

#[derive(Debug)]
struct Shared {
    state: Mutex<State>,
    changed: Condvar,
}

/// The stand-in; stops when dropped.
#[derive(Debug)]
pub struct ApiServer {
    shared: Arc<Shared>,
    address: SocketAddr,
    listener: Mutex<Option<thread::JoinHandle<()>>>,
}

impl ApiServer {
    /// Starts on a free loopback port.
    pub fn start() -> Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let address = listener.local_addr()?;
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                version: 1,
                up: true,
                ..State::default()
            }),
            changed: Condvar::new(),
        });
        let server = Self {
            shared,
            address,
            listener: Mutex::new(None),
        };
        server.serve(listener);
        Ok(server)
    }

    fn serve(&self, listener: TcpListener) {
        let shared = Arc::clone(&self.shared);
        let handle = thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                if !shared.state.lock().expect("state").up {
                    // Stopped: this accept only woke the loop; the listener is closed below.
                    break;
                }
                let shared = Arc::clone(&shared);
                thread::spawn(move || {
                    let _ = handle(&shared, stream);
                });
            }
        });
        *self.listener.lock().expect("listener") = Some(handle);
    }

    /// `http://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("http://{}", self.address)
    }

    /// Writes a kubeconfig pointing at the stand-in to `path`.
    pub fn write_kubeconfig(&self, path: &Path) -> Result<()> {
        let text = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: standin\n  cluster: {{server: \"{}\"}}\nusers:\n- name: genie\n  user: {{}}\ncontexts:\n- name: standin\n  context: {{cluster: standin, user: genie}}\ncurrent-context: standin\n",
            self.url()
        );
        std::fs::write(path, text).context("writing the kubeconfig")
    }

    /// Creates or replaces an object (`apiVersion`, `kind` and `metadata.name` must be set;
    /// `metadata.namespace` for pods). Returns its new resourceVersion.
    pub fn put(&self, mut object: Value) -> Result<u64> {
        let resource = Resource::of_kind(object["kind"].as_str().unwrap_or_default())
            .context("an object of a kind the stand-in does not serve")?;
        let key = key_of(resource, &object);
        let mut s = self.shared.state.lock().expect("state");
        s.version += 1;
        let version = s.version;
        let existing = s.objects.get(&key).cloned();
        let generation = match &existing {
            Some(old) if old["spec"] == object["spec"] => {
                old["metadata"]["generation"].as_u64().unwrap_or(1)
            }
            Some(old) => old["metadata"]["generation"].as_u64().unwrap_or(1) + 1,
            None => 1,
        };
        if let Some(old) = &existing
            && object.get("status").is_none()
        {
            object["status"] = old["status"].clone();
        }
        // Like the real server: set at creation, kept on every update. One second per
        // version keeps "older" unambiguous between objects.
        object["metadata"]["creationTimestamp"] = match &existing {
            Some(old) => old["metadata"]["creationTimestamp"].clone(),
            None => json!(rfc3339(CREATION_EPOCH + version)),
        };
        object["metadata"]["resourceVersion"] = json!(version.to_string());
        object["metadata"]["generation"] = json!(generation);
        object["metadata"]["uid"] = json!(format!("uid-{}-{}", key.1, key.2));
        let event = if existing.is_some() {
            "MODIFIED"
        } else {
            "ADDED"
        };
        s.objects.insert(key, object.clone());
        s.history.push((version, resource, event, object));
        drop(s);
        self.shared.changed.notify_all();
        Ok(version)
    }

    /// Puts every document of a YAML stream (the files' form of the objects).
    pub fn put_yaml(&self, yaml: &str) -> Result<()> {
        for object in objects_from_yaml(yaml)? {
            self.put(object)?;
        }
        Ok(())
    }

    /// Deletes an object.
    pub fn delete(&self, kind: &str, namespace: &str, name: &str) -> Result<()> {
        let resource = Resource::of_kind(kind).context("unknown kind")?;
        let mut s = self.shared.state.lock().expect("state");
        let Some(mut object) = s
            .objects
            .remove(&(resource, namespace.to_owned(), name.to_owned()))
        else {
            return Ok(());
        };
        s.version += 1;
        let version = s.version;
        object["metadata"]["resourceVersion"] = json!(version.to_string());
        s.history.push((version, resource, "DELETED", object));
        drop(s);
        self.shared.changed.notify_all();
        Ok(())
    }

    /// The object as the server holds it now.
    pub fn get(&self, kind: &str, namespace: &str, name: &str) -> Option<Value> {
        let resource = Resource::of_kind(kind)?;
        self.shared
            .state
            .lock()
            .expect("state")
            .objects
            .get(&(resource, namespace.to_owned(), name.to_owned()))
            .cloned()
    }

    /// Holds back (or releases) the watch events of `kind`: lists and GETs still see every
    /// object, watches deliver nothing of it until released.
    pub fn hold_watches(&self, kind: &str, held: bool) {
        let resource = Resource::of_kind(kind).expect("a kind the stand-in serves");
        let mut s = self.shared.state.lock().expect("state");
        if held {
            s.held.insert(resource);
        } else {
            s.held.remove(&resource);
        }
        drop(s);
        self.shared.changed.notify_all();
    }

    /// Ends every open watch stream (clients reconnect and resume).
    pub fn drop_watches(&self) {
        self.shared.state.lock().expect("state").watch_epoch += 1;
        self.shared.changed.notify_all();
    }

    /// Forgets the history: a watch resuming from an older version gets `410 Gone` and must
    /// relist.
    pub fn compact(&self) {
        let mut s = self.shared.state.lock().expect("state");
        s.compacted = s.version + 1;
        s.history.clear();
        drop(s);
        self.drop_watches();
    }

    /// Stops serving: open watches end, new connections are refused.
    pub fn stop(&self) {
        self.shared.state.lock().expect("state").up = false;
        self.drop_watches();
        // Wake the accept loop so it sees `up == false` and closes the listener.
        let _ = TcpStream::connect(self.address);
        if let Some(handle) = self.listener.lock().expect("listener").take() {
            let _ = handle.join();
        }
    }

    /// Serves again on the same port, with everything put or deleted meanwhile.
    pub fn restart(&self) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(10);
        let listener = loop {
            match TcpListener::bind(self.address) {
                Ok(l) => break l,
                Err(e) if Instant::now() < deadline => {
                    let _ = e;
                    thread::sleep(Duration::from_millis(100));
                }
                Err(e) => return Err(e).context("rebinding the stand-in's port"),
            }
        };
        self.shared.state.lock().expect("state").up = true;
        self.serve(listener);
        Ok(())
    }

    /// Requests served so far, with their query ("PATCH /api/v1/nodes/n1",
    /// "GET /api/v1/pods?watch=true&…", …).
    pub fn requests(&self) -> Vec<String> {
        self.shared.state.lock().expect("state").requests.clone()
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The documents of a YAML stream as JSON objects.
pub fn objects_from_yaml(yaml: &str) -> Result<Vec<Value>> {
    let mut out = Vec::new();
    for document in serde_yaml::Deserializer::from_str(yaml) {
        let value: Value = serde::Deserialize::deserialize(document)?;
        if !value.is_null() {
            out.push(value);
        }
    }
    Ok(out)
}

fn key_of(resource: Resource, object: &Value) -> Key {
    (
        resource,
        object["metadata"]["namespace"]
            .as_str()
            .unwrap_or_default()
            .to_owned(),
        object["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_owned(),
    )
}

struct Request {
    method: String,
    path: String,
    query: BTreeMap<String, String>,
    body: Vec<u8>,
}

fn read_request(stream: &mut BufReader<TcpStream>) -> Result<Option<Request>> {
    let mut line = String::new();
    if stream.read_line(&mut line)? == 0 {
        return Ok(None);
    }
    let mut parts = line.split_whitespace();
    let method = parts.next().unwrap_or_default().to_owned();
    let target = parts.next().unwrap_or_default().to_owned();
    let mut length = 0;
    loop {
        let mut header = String::new();
        stream.read_line(&mut header)?;
        let header = header.trim_end();
        if header.is_empty() {
            break;
        }
        if let Some((name, value)) = header.split_once(':')
            && name.eq_ignore_ascii_case("content-length")
        {
            length = value.trim().parse().unwrap_or(0);
        }
    }
    let mut body = vec![0; length];
    stream.read_exact(&mut body)?;
    let (path, query) = target.split_once('?').unwrap_or((&target, ""));
    let query = query
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    Ok(Some(Request {
        method,
        path: path.to_owned(),
        query,
        body,
    }))
}

fn respond(stream: &mut TcpStream, status: &str, body: &Value) -> Result<()> {
    let body = body.to_string();
    write!(
        stream,
        "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )?;
    Ok(())
}

fn status_error(code: u16, reason: &str, message: &str) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
           "message": message, "reason": reason, "code": code})
}

fn handle(shared: &Shared, stream: TcpStream) -> Result<()> {
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut stream = stream;
    // Keep-alive: serve requests on this connection until the client closes it.
    while let Some(request) = read_request(&mut reader)? {
        {
            let mut s = shared.state.lock().expect("state");
            if !s.up {
                return Ok(());
            }
            let query: Vec<String> = request
                .query
                .iter()
                .map(|(k, v)| format!("{k}={v}"))
                .collect();
            s.requests.push(format!(
                "{} {}{}{}",
                request.method,
                request.path,
                if query.is_empty() { "" } else { "?" },
                query.join("&")
            ));
        }
        let list = Resource::ALL
            .into_iter()
            .find(|r| r.list_path() == request.path);
        match (request.method.as_str(), list) {
            ("GET", Some(resource))
                if request.query.get("watch").map(String::as_str) == Some("true")
                    || request.query.get("watch").map(String::as_str) == Some("1") =>
            {
                watch(shared, &mut stream, resource, &request)?;
                // A watch response ends with the connection.
                return Ok(());
            }
            ("GET", Some(resource)) => {
                let s = shared.state.lock().expect("state");
                let items: Vec<Value> = s
                    .objects
                    .iter()
                    .filter(|(k, _)| k.0 == resource)
                    .map(|(_, v)| v.clone())
                    .collect();
                let body = json!({
                    "apiVersion": resource.api_version(),
                    "kind": format!("{}List", resource.kind()),
                    "metadata": {"resourceVersion": s.version.to_string()},
                    "items": items,
                });
                drop(s);
                respond(&mut stream, "200 OK", &body)?;
            }
            ("GET", None) => {
                // One pod by name (the agent's GET of a pod its watch has not delivered).
                let segments: Vec<&str> = request.path.trim_start_matches('/').split('/').collect();
                let found = match segments.as_slice() {
                    ["api", "v1", "namespaces", ns, "pods", name] => {
                        let s = shared.state.lock().expect("state");
                        s.objects
                            .get(&(Resource::Pods, (*ns).to_owned(), (*name).to_owned()))
                            .cloned()
                    }
                    _ => None,
                };
                match found {
                    Some(object) => respond(&mut stream, "200 OK", &object)?,
                    None => respond(
                        &mut stream,
                        "404 Not Found",
                        &status_error(404, "NotFound", "no such object"),
                    )?,
                }
            }
            ("PATCH", _) => {
                let (status, body) = patch(shared, &request);
                respond(&mut stream, status, &body)?;
            }
            ("POST", Some(resource)) if resource.api_version() != "v1" => {
                let (status, body) = create(shared, resource, &request);
                respond(&mut stream, status, &body)?;
            }
            _ => respond(
                &mut stream,
                "404 Not Found",
                &status_error(404, "NotFound", "the stand-in does not serve this"),
            )?,
        }
    }
    Ok(())
}

/// A merge patch on `/…/<name>` or `/…/<name>/status`, or on a pod
/// (`/api/v1/namespaces/<ns>/pods/<name>`).
fn patch(shared: &Shared, request: &Request) -> (&'static str, Value) {
    let segments: Vec<&str> = request.path.trim_start_matches('/').split('/').collect();
    let (resource, namespace, name, status_only) = match segments.as_slice() {
        ["api", "v1", "namespaces", ns, "pods", name] => (Resource::Pods, *ns, *name, false),
        ["api", "v1", "nodes", name] => (Resource::Nodes, "", *name, false),
        ["apis", "genie.dev", "v1alpha1", plural, name, rest @ ..] => {
            let Some(r) = Resource::ALL
                .into_iter()
                .find(|r| r.list_path().ends_with(&format!("/{plural}")))
            else {
                return (
                    "404 Not Found",
                    status_error(404, "NotFound", "no such resource"),
                );
            };
            (r, "", *name, rest == ["status"])
        }
        _ => {
            return (
                "404 Not Found",
                status_error(404, "NotFound", "no such path"),
            );
        }
    };
    let Ok(patch) = serde_json::from_slice::<Value>(&request.body) else {
        return (
            "400 Bad Request",
            status_error(400, "BadRequest", "not JSON"),
        );
    };
    let mut s = shared.state.lock().expect("state");
    let key = (resource, namespace.to_owned(), name.to_owned());
    let Some(mut object) = s.objects.get(&key).cloned() else {
        return (
            "404 Not Found",
            status_error(404, "NotFound", "no such object"),
        );
    };
    if status_only {
        merge(&mut object["status"], &patch["status"]);
    } else {
        let spec_before = object["spec"].clone();
        merge(&mut object, &patch);
        if object["spec"] != spec_before {
            let generation = object["metadata"]["generation"].as_u64().unwrap_or(1) + 1;
            object["metadata"]["generation"] = json!(generation);
        }
    }
    s.version += 1;
    let version = s.version;
    object["metadata"]["resourceVersion"] = json!(version.to_string());
    s.objects.insert(key, object.clone());
    s.history
        .push((version, resource, "MODIFIED", object.clone()));
    drop(s);
    shared.changed.notify_all();
    ("200 OK", object)
}

/// Creates a cluster-scoped genie object (`POST` to its list path); `409` when it exists.
fn create(shared: &Shared, resource: Resource, request: &Request) -> (&'static str, Value) {
    let Ok(mut object) = serde_json::from_slice::<Value>(&request.body) else {
        return (
            "400 Bad Request",
            status_error(400, "BadRequest", "not JSON"),
        );
    };
    let key = key_of(resource, &object);
    let mut s = shared.state.lock().expect("state");
    if s.objects.contains_key(&key) {
        return (
            "409 Conflict",
            status_error(409, "AlreadyExists", "the object exists"),
        );
    }
    s.version += 1;
    let version = s.version;
    object["metadata"]["resourceVersion"] = json!(version.to_string());
    object["metadata"]["generation"] = json!(1);
    object["metadata"]["uid"] = json!(format!("uid-{version}"));
    s.objects.insert(key, object.clone());
    s.history.push((version, resource, "ADDED", object.clone()));
    drop(s);
    shared.changed.notify_all();
    ("201 Created", object)
}

/// RFC 7386 JSON merge patch.
fn merge(target: &mut Value, patch: &Value) {
    let Value::Object(patch) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = json!({});
    }
    let Value::Object(object) = target else {
        return;
    };
    for (key, value) in patch {
        if value.is_null() {
            object.remove(key);
        } else {
            merge(object.entry(key.clone()).or_insert(Value::Null), value);
        }
    }
}

fn watch(
    shared: &Shared,
    stream: &mut TcpStream,
    resource: Resource,
    request: &Request,
) -> Result<()> {
    let from: u64 = request
        .query
        .get("resourceVersion")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let bookmarks = request.query.get("allowWatchBookmarks").map(String::as_str) == Some("true");
    let timeout = request
        .query
        .get("timeoutSeconds")
        .and_then(|v| v.parse().ok())
        .map_or(Duration::from_secs(290), Duration::from_secs);
    write!(
        stream,
        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
    )?;
    let send = |stream: &mut TcpStream, event: &Value| -> Result<()> {
        let line = format!("{event}\n");
        write!(stream, "{:x}\r\n{line}\r\n", line.len())?;
        stream.flush()?;
        Ok(())
    };
    let started = Instant::now();
    let mut s = shared.state.lock().expect("state");
    let epoch = s.watch_epoch;
    if from != 0 && from < s.compacted {
        let gone = status_error(410, "Expired", "too old resource version");
        drop(s);
        send(stream, &json!({"type": "ERROR", "object": gone}))?;
        write!(stream, "0\r\n\r\n")?;
        return Ok(());
    }
    let mut sent = from;
    let mut last_bookmark = Instant::now();
    loop {
        let holding = s.held.contains(&resource);
        let pending: Vec<(u64, Value)> = s
            .history
            .iter()
            .filter(|(v, r, _, _)| !holding && *r == resource && *v > sent)
            .map(|(v, _, t, o)| (*v, json!({"type": t, "object": o})))
            .collect();
        let current = s.version;
        drop(s);
        for (version, event) in pending {
            send(stream, &event)?;
            sent = version;
        }
        // A bookmark would move the watch past the held events: none while holding.
        if bookmarks && !holding && last_bookmark.elapsed() > Duration::from_secs(1) {
            let mark = json!({"type": "BOOKMARK", "object": {
                "apiVersion": resource.api_version(), "kind": resource.kind(),
                "metadata": {"resourceVersion": current.to_string()}}});
            send(stream, &mark)?;
            sent = sent.max(current);
            last_bookmark = Instant::now();
        }
        s = shared.state.lock().expect("state");
        if s.watch_epoch != epoch || !s.up || started.elapsed() > timeout {
            break;
        }
        s = shared
            .changed
            .wait_timeout(s, Duration::from_millis(500))
            .expect("state")
            .0;
        if s.watch_epoch != epoch || !s.up {
            break;
        }
    }
    drop(s);
    write!(stream, "0\r\n\r\n")?;
    Ok(())
}

/// 2026-01-01T00:00:00Z: creation timestamps count up from here.
const CREATION_EPOCH: u64 = 1_767_225_600;

/// Seconds since the epoch as RFC 3339 UTC (days to a civil date: H. Hinnant's algorithm).
fn rfc3339(seconds: u64) -> String {
    let days = (seconds / 86_400) as i64;
    let rem = seconds % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn timestamps_are_rfc3339() {
        assert_eq!(
            super::rfc3339(super::CREATION_EPOCH),
            "2026-01-01T00:00:00Z"
        );
        assert_eq!(super::rfc3339(951_782_400 + 86_399), "2000-02-29T23:59:59Z");
    }
}
