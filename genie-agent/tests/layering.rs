//! ARCHITECTURE.md's rule, checked: no two of genie-agent's top-level modules use each other.
//! Every `crate::<module>` path outside test code counts, in `use` trees too.

use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    path::Path,
};

/// The top-level modules each source file under `dir` names through `crate::`.
fn collect(dir: &Path, top: Option<&str>, deps: &mut BTreeMap<String, BTreeSet<String>>) {
    for entry in fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let module = top.map_or_else(|| name.trim_end_matches(".rs").to_owned(), str::to_owned);
        if path.is_dir() {
            collect(&path, Some(&module), deps);
            continue;
        }
        if !name.ends_with(".rs") || name == "tests.rs" {
            continue;
        }
        let text = fs::read_to_string(&path).unwrap();
        let code = text.split("#[cfg(test)]").next().unwrap_or_default();
        let used = deps.entry(module.clone()).or_default();
        for (i, _) in code.match_indices("crate::") {
            let rest = &code[i + "crate::".len()..];
            if let Some(tree) = rest.strip_prefix('{') {
                // `use crate::{a::…, b::{…}, c}`: the first segment of each top-level item.
                let mut depth = 0;
                let mut item = String::new();
                for c in tree.chars() {
                    match c {
                        '{' => depth += 1,
                        '}' if depth == 0 => break,
                        '}' => depth -= 1,
                        ',' if depth == 0 => {
                            used.insert(first_segment(&item));
                            item.clear();
                            continue;
                        }
                        _ => {}
                    }
                    if depth == 0 {
                        item.push(c);
                    }
                }
                used.insert(first_segment(&item));
            } else {
                used.insert(first_segment(rest));
            }
        }
        used.remove(&module);
        used.remove("");
    }
}

fn first_segment(path: &str) -> String {
    path.trim()
        .chars()
        .take_while(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_')
        .collect()
}

#[test]
fn no_two_modules_use_each_other() {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut deps = BTreeMap::new();
    collect(&src, None, &mut deps);
    assert!(
        deps["agent"].contains("cni"),
        "the scan sees imports: {deps:?}"
    );
    let cycles: Vec<(&String, &String)> = deps
        .iter()
        .flat_map(|(a, used)| used.iter().map(move |b| (a, b)))
        .filter(|(a, b)| deps.get(*b).is_some_and(|u| u.contains(*a)))
        .collect();
    assert!(cycles.is_empty(), "modules using each other: {cycles:?}");
}
