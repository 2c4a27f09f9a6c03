//! The module graph stays acyclic: a test that reads this crate's sources,
//! finds which top-level module uses which (`crate::<module>` outside
//! comments and test code), and fails on a cycle, naming it. README.md
//! draws the layers this allows.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Top-level module -> the top-level modules its non-test code uses.
fn graph(src: &Path) -> BTreeMap<String, BTreeSet<String>> {
    let mut modules = BTreeSet::new();
    for entry in std::fs::read_dir(src).expect("reading src") {
        let path = entry.expect("a directory entry").path();
        let name = path
            .file_stem()
            .and_then(|n| n.to_str())
            .unwrap_or_default()
            .to_string();
        if !matches!(name.as_str(), "lib" | "main") {
            modules.insert(name);
        }
    }
    let mut edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut files = vec![src.to_path_buf()];
    while let Some(path) = files.pop() {
        if path.is_dir() {
            for e in std::fs::read_dir(&path).expect("reading a folder") {
                files.push(e.expect("a directory entry").path());
            }
            continue;
        }
        let rel = path.strip_prefix(src).expect("under src");
        let top = rel
            .components()
            .next()
            .and_then(|c| c.as_os_str().to_str())
            .map(|c| c.trim_end_matches(".rs").to_string())
            .unwrap_or_default();
        let file = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default();
        // Test code, and the fuzzer's harness (built only for tests and
        // fuzzing), may reach across layers.
        let test_file = matches!(
            file,
            "tests.rs" | "sim.rs" | "scale.rs" | "fuzz.rs" | "fuzzing.rs"
        ) || rel.components().any(|c| c.as_os_str() == "tests");
        if !modules.contains(&top) || test_file || path.extension().is_none_or(|e| e != "rs") {
            continue;
        }
        let text = std::fs::read_to_string(&path).expect("reading a source file");
        // Code only: up to an inline test module, without comments.
        let code = text
            .split("#[cfg(test)]\nmod tests {")
            .next()
            .unwrap_or_default();
        for line in code
            .lines()
            .map(|l| l.split("//").next().unwrap_or_default())
        {
            for (i, _) in line.match_indices("crate::") {
                let rest = &line[i + "crate::".len()..];
                // A grouped import would hide its modules from this
                // reading: one `use crate::module::...` per module.
                assert!(
                    !rest.starts_with('{'),
                    "{}: write one `use` of this crate per module, not a braced group",
                    rel.display()
                );
                let used: String = rest
                    .chars()
                    .take_while(|c| c.is_ascii_lowercase() || *c == '_')
                    .collect();
                if used != top && modules.contains(&used) {
                    edges.entry(top.clone()).or_default().insert(used);
                }
            }
        }
    }
    edges
}

/// A cycle in `edges`, if there is one.
fn cycle(edges: &BTreeMap<String, BTreeSet<String>>) -> Option<Vec<String>> {
    fn visit(
        node: &str,
        edges: &BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(at) = path.iter().position(|p| p == node) {
            let mut c = path[at..].to_vec();
            c.push(node.to_string());
            return Some(c);
        }
        if done.contains(node) {
            return None;
        }
        path.push(node.to_string());
        for next in edges.get(node).into_iter().flatten() {
            if let Some(c) = visit(next, edges, path, done) {
                return Some(c);
            }
        }
        path.pop();
        done.insert(node.to_string());
        None
    }
    let mut done = BTreeSet::new();
    edges
        .keys()
        .find_map(|n| visit(n, edges, &mut Vec::new(), &mut done))
}

#[test]
fn the_top_level_modules_use_each_other_without_a_cycle() {
    let src = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("src");
    let edges = graph(&src);
    for (module, uses) in &edges {
        let uses: Vec<&str> = uses.iter().map(String::as_str).collect();
        eprintln!("{module} -> {}", uses.join(" "));
    }
    assert!(edges.contains_key("gateway"), "the graph was read");
    if let Some(c) = cycle(&edges) {
        panic!("a cycle between top-level modules: {}", c.join(" -> "));
    }
}

#[test]
fn a_cycle_is_found_and_named() {
    let mut edges: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    edges.entry("a".into()).or_default().insert("b".into());
    edges.entry("b".into()).or_default().insert("c".into());
    assert_eq!(cycle(&edges), None);
    edges.entry("c".into()).or_default().insert("a".into());
    assert_eq!(
        cycle(&edges).map(|c| c.join(" -> ")),
        Some("a -> b -> c -> a".into())
    );
}
