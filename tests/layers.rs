//! The library's layering, checked from its source: every `crate::` path a
//! module uses (outside its tests) names a module of a lower layer or of its
//! own top-level module, and the imports between modules form no cycle.
//! The layers are those `src/lib.rs` lists.

use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    path::Path,
};

/// Top-level modules by layer, lowest first.
const LAYERS: &[&[&str]] = &[
    &["units"],
    &["testdata", "error", "progress"],
    &["crypto", "block"],
    &["dag", "ticket", "lease"],
    &["store"],
    &["import", "export"],
    &["net"],
    &["node"],
    &["bench", "fuzzing", "gateway"],
    &["cli"],
];

fn layer(top: &str) -> usize {
    LAYERS
        .iter()
        .position(|l| l.contains(&top))
        .unwrap_or_else(|| panic!("module {top} has no layer"))
}

/// Every module of `src/` (as `a::b`) and its source without tests.
fn modules() -> BTreeMap<String, String> {
    fn visit(dir: &Path, prefix: &str, out: &mut BTreeMap<String, String>) {
        for entry in fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            let name = path.file_stem().unwrap().to_str().unwrap().to_string();
            if path.is_dir() {
                visit(&path, &format!("{prefix}{name}::"), out);
                continue;
            }
            if path.extension().is_none_or(|e| e != "rs") {
                continue;
            }
            let module = match name.as_str() {
                "mod" => prefix.trim_end_matches("::").to_string(),
                "lib" | "main" if prefix.is_empty() => continue,
                _ => format!("{prefix}{name}"),
            };
            let mut source = fs::read_to_string(&path).unwrap();
            if let Some(tests) = source.find("#[cfg(test)]") {
                source.truncate(tests);
            }
            out.insert(module, source);
        }
    }
    let mut out = BTreeMap::new();
    visit(&Path::new(env!("CARGO_MANIFEST_DIR")).join("src"), "", &mut out);
    out
}

/// Paths named by a use tree such as `a::{b, c::{d, e}}` (after `crate::`).
fn expand(tree: &str, prefix: &str, out: &mut Vec<String>) {
    let tree = tree.trim();
    if let Some(open) = tree.find('{') {
        let head = format!("{prefix}{}", &tree[..open]);
        let inner = &tree[open + 1..tree.rfind('}').unwrap()];
        let (mut depth, mut start) = (0, 0);
        for (i, c) in inner.char_indices() {
            match c {
                '{' => depth += 1,
                '}' => depth -= 1,
                ',' if depth == 0 => {
                    expand(&inner[start..i], &head, out);
                    start = i + 1;
                }
                _ => {}
            }
        }
        expand(&inner[start..], &head, out);
    } else if !tree.is_empty() {
        out.push(format!("{prefix}{}", tree.split(" as ").next().unwrap().trim()));
    }
}

/// The `crate::` paths a source names: in `use` trees and inline.
fn crate_paths(source: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = source;
    while let Some(at) = rest.find("crate::") {
        rest = &rest[at + "crate::".len()..];
        let end = rest
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
            .unwrap_or(rest.len());
        if rest[end..].starts_with('{') {
            // A use tree: up to its matching brace.
            let mut depth = 0;
            let close = rest[end..]
                .char_indices()
                .find(|&(_, c)| {
                    depth += match c {
                        '{' => 1,
                        '}' => -1,
                        _ => 0,
                    };
                    depth == 0
                })
                .map(|(i, _)| end + i + 1)
                .unwrap();
            expand(&rest[..close], "", &mut out);
            rest = &rest[close..];
        } else {
            out.push(rest[..end].trim_end_matches(':').to_string());
        }
    }
    out
}

/// The module a path names: its longest prefix that is a module.
fn module_of(path: &str, modules: &BTreeMap<String, String>) -> Option<String> {
    let parts: Vec<&str> = path.split("::").collect();
    (1..=parts.len()).rev().map(|k| parts[..k].join("::")).find(|m| modules.contains_key(m))
}

#[test]
fn no_module_imports_a_higher_layer_and_imports_have_no_cycle() {
    let modules = modules();
    let mut edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut upward = Vec::new();
    for (module, source) in &modules {
        let top = module.split("::").next().unwrap();
        for path in crate_paths(source) {
            let Some(target) = module_of(&path, &modules) else { continue };
            if target == *module || module.starts_with(&format!("{target}::")) {
                continue;
            }
            let target_top = target.split("::").next().unwrap();
            if target_top != top && layer(target_top) >= layer(top) {
                upward.push(format!("{module} -> {target} (crate::{path})"));
            }
            edges.entry(module.clone()).or_default().insert(target);
        }
    }
    assert!(upward.is_empty(), "imports of a layer not below: {upward:#?}");

    // A cycle shows as an edge whose target reaches its source.
    let reaches = |from: &str, to: &str| {
        let (mut stack, mut seen) = (vec![from.to_string()], BTreeSet::new());
        while let Some(m) = stack.pop() {
            if m == to {
                return true;
            }
            if seen.insert(m.clone()) {
                stack.extend(edges.get(&m).into_iter().flatten().cloned());
            }
        }
        false
    };
    let cycles: Vec<String> = edges
        .iter()
        .flat_map(|(a, bs)| bs.iter().map(move |b| (a, b)))
        .filter(|(a, b)| reaches(b, a))
        .map(|(a, b)| format!("{a} -> {b}"))
        .collect();
    assert!(cycles.is_empty(), "import cycles through: {cycles:#?}");
    // The check sees the imports it should.
    assert!(edges["net::get"].contains("net::providers"));
    assert!(edges["store::gc"].contains("dag"));
}
