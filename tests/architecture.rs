//! Architecture invariants that the compiler does not check, read from the source tree (in the
//! spirit of rust-analyzer's tidy tests): which module may import which. ARCHITECTURE.md states
//! them; this test keeps them true.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Every `.rs` file under `src/`, with its text.
fn sources() -> Vec<(PathBuf, String)> {
    fn walk(dir: &Path, out: &mut Vec<(PathBuf, String)>) {
        let mut entries: Vec<_> = std::fs::read_dir(dir)
            .expect("read src dir")
            .map(|e| e.expect("dir entry").path())
            .collect();
        entries.sort();
        for path in entries {
            if path.is_dir() {
                walk(&path, out);
            } else if path.extension().is_some_and(|x| x == "rs") {
                let text = std::fs::read_to_string(&path).expect("read source file");
                out.push((path, text));
            }
        }
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut out = Vec::new();
    walk(&root, &mut out);
    assert!(out.len() > 20, "found only {} source files", out.len());
    out
}

/// `src/engine/mod.rs` → `engine`; `src/lib.rs` → `lib`.
fn top_module(path: &Path) -> String {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let rel = path.strip_prefix(&root).expect("under src");
    let first = rel.components().next().expect("non-empty path");
    let name = first.as_os_str().to_string_lossy().to_string();
    name.trim_end_matches(".rs").to_string()
}

/// The top-level modules a file names through `crate::x` or `use crate::{x, y}`. Comment
/// lines are skipped, so a doc sentence that names a module is not an import.
fn crate_refs(text: &str) -> BTreeSet<String> {
    let mut refs = BTreeSet::new();
    for line in text.lines() {
        let code = line.trim_start();
        if code.starts_with("//") {
            continue;
        }
        let mut rest = code;
        while let Some(i) = rest.find("crate::") {
            rest = &rest[i + "crate::".len()..];
            if let Some(group) = rest.strip_prefix('{') {
                let end = group.find('}').unwrap_or(group.len());
                for item in group[..end].split(',') {
                    let name: String = item
                        .trim()
                        .chars()
                        .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                        .collect();
                    if !name.is_empty() {
                        refs.insert(name);
                    }
                }
            } else {
                let name: String = rest
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                if !name.is_empty() {
                    refs.insert(name);
                }
            }
        }
    }
    refs
}

#[test]
fn nothing_imports_cli() {
    let offenders: Vec<_> = sources()
        .into_iter()
        .filter(|(p, t)| top_module(p) != "cli" && crate_refs(t).contains("cli"))
        .map(|(p, _)| p)
        .collect();
    assert!(offenders.is_empty(), "these import cli: {offenders:?}");
}

#[test]
fn only_cli_reaches_into_remote() {
    let offenders: Vec<_> = sources()
        .into_iter()
        .filter(|(p, t)| {
            let m = top_module(p);
            m != "remote" && m != "cli" && m != "lib" && crate_refs(t).contains("remote")
        })
        .map(|(p, _)| p)
        .collect();
    assert!(
        offenders.is_empty(),
        "the core must not know the server protocol; these import remote: {offenders:?}"
    );
}

#[test]
fn only_transport_imports_ureq() {
    let offenders: Vec<_> = sources()
        .into_iter()
        .filter(|(p, t)| {
            !p.ends_with("remote/transport.rs")
                && t.lines()
                    .any(|l| !l.trim_start().starts_with("//") && l.contains("ureq::"))
        })
        .map(|(p, _)| p)
        .collect();
    assert!(offenders.is_empty(), "these import ureq: {offenders:?}");
}

#[test]
fn top_level_modules_form_no_cycle() {
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for (path, text) in sources() {
        let from = top_module(&path);
        if from == "lib" || from == "main" {
            continue;
        }
        let to = graph.entry(from.clone()).or_default();
        to.extend(crate_refs(&text).into_iter().filter(|m| *m != from));
    }
    assert!(graph.contains_key("engine") && graph.contains_key("cli"));
    // Depth-first search; a node met again while still on the stack closes a cycle.
    fn visit(
        node: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        stack: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(i) = stack.iter().position(|n| n == node) {
            let mut cycle = stack[i..].to_vec();
            cycle.push(node.to_string());
            return Some(cycle);
        }
        if done.contains(node) {
            return None;
        }
        stack.push(node.to_string());
        for next in graph.get(node).into_iter().flatten() {
            if let Some(cycle) = visit(next, graph, stack, done) {
                return Some(cycle);
            }
        }
        stack.pop();
        done.insert(node.to_string());
        None
    }
    let mut done = BTreeSet::new();
    for node in graph.keys() {
        if let Some(cycle) = visit(node, &graph, &mut Vec::new(), &mut done) {
            panic!("module cycle: {}", cycle.join(" -> "));
        }
    }
}

#[test]
fn the_scanner_sees_grouped_and_plain_imports() {
    let refs = crate_refs(
        "use crate::{signals, timer};\n// crate::cli in a comment\nlet x = crate::model::Y;\n",
    );
    let expected: BTreeSet<String> = ["signals", "timer", "model"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    assert_eq!(refs, expected);
}
