//! The daemon's modules depend on each other in one direction only
//! (docs/ARCHITECTURE.md): from the top of [`LAYERS`] to the bottom, and no
//! file imports, directly or through others, a file that imports it.
//!
//! Read from the sources, so that a new `use` that breaks the shape fails the
//! suite instead of waiting for a reviewer.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// The top-level modules, each allowed to use only those after it.
const LAYERS: &[&str] = &[
    "app", "server", "proxy", "handler", "login", "token", "state", "error", "store", "provider",
    "config",
];

/// A source file as a module path: `token/check.rs` is `["token", "check"]`.
type Module = Vec<String>;

fn sources() -> BTreeMap<Module, String> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut out = BTreeMap::new();
    let mut stack = vec![root.clone()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "rs") {
                if let Some(module) = module_of(&root, &path) {
                    out.insert(
                        module,
                        without_tests(&std::fs::read_to_string(&path).unwrap()),
                    );
                }
            }
        }
    }
    out
}

/// `None` for the crate roots (`lib.rs`, `main.rs`), which may use anything.
fn module_of(root: &Path, path: &Path) -> Option<Module> {
    let rel = path.strip_prefix(root).unwrap();
    let mut parts: Vec<String> = rel
        .iter()
        .map(|p| p.to_string_lossy().trim_end_matches(".rs").to_string())
        .collect();
    if parts.last().is_some_and(|p| p == "mod") {
        parts.pop();
    }
    (!(parts == ["lib"] || parts == ["main"])).then_some(parts)
}

/// The text before the unit tests, which may reach across the layers.
fn without_tests(text: &str) -> String {
    match text.find("#[cfg(test)]\nmod tests") {
        Some(at) => text[..at].to_string(),
        None => text.to_string(),
    }
}

/// Every module path a file names with `crate::` (grouped `use`s expanded)
/// or `super::`.
fn references(module: &Module, text: &str, known: &BTreeSet<Module>) -> BTreeSet<Module> {
    let mut paths: Vec<Vec<String>> = Vec::new();
    for (at, _) in text.match_indices("crate::") {
        let rest = &text[at + "crate::".len()..];
        if let Some(group) = rest.strip_prefix('{') {
            let body = &group[..group.find('}').unwrap_or(group.len())];
            paths.extend(body.split(',').map(|item| segments(item.trim())));
        } else {
            paths.push(segments(rest));
        }
    }
    let parent: Vec<String> = module[..module.len().saturating_sub(1)].to_vec();
    for (at, _) in text.match_indices("super::") {
        let mut path = parent.clone();
        path.extend(segments(&text[at + "super::".len()..]));
        paths.push(path);
    }
    paths
        .into_iter()
        .filter_map(|p| resolve(&p, known))
        .filter(|target| target != module)
        .collect()
}

fn segments(path: &str) -> Vec<String> {
    path.split("::")
        .map(|s| {
            s.chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect::<String>()
        })
        .take_while(|s| !s.is_empty() && s.chars().next().is_some_and(|c| c.is_ascii_lowercase()))
        .collect()
}

/// The longest known module that `path` starts with.
fn resolve(path: &[String], known: &BTreeSet<Module>) -> Option<Module> {
    (1..=path.len())
        .rev()
        .map(|n| path[..n].to_vec())
        .find(|m| known.contains(m))
}

fn graph() -> BTreeMap<Module, BTreeSet<Module>> {
    let files = sources();
    let known: BTreeSet<Module> = files.keys().cloned().collect();
    files
        .iter()
        .map(|(m, text)| (m.clone(), references(m, text, &known)))
        .collect()
}

#[test]
fn every_top_level_module_is_in_a_layer() {
    for module in graph().keys() {
        assert!(
            LAYERS.contains(&module[0].as_str()),
            "daemon/src/{} is in no layer: add it to LAYERS and docs/ARCHITECTURE.md",
            module.join("/")
        );
    }
}

#[test]
fn modules_depend_only_on_the_layers_below_them() {
    let layer = |m: &Module| LAYERS.iter().position(|l| *l == m[0]).unwrap_or(0);
    let mut wrong = Vec::new();
    for (from, targets) in graph() {
        for to in targets {
            if from[0] != to[0] && layer(&from) >= layer(&to) {
                wrong.push(format!("{} -> {}", from.join("/"), to.join("/")));
            }
        }
    }
    assert!(
        wrong.is_empty(),
        "imports against the flow:\n{}",
        wrong.join("\n")
    );
}

#[test]
fn no_file_imports_a_file_that_imports_it() {
    let graph = graph();
    // Depth-first search; a node met again while on the stack closes a cycle.
    fn visit(
        m: &Module,
        graph: &BTreeMap<Module, BTreeSet<Module>>,
        stack: &mut Vec<Module>,
        done: &mut BTreeSet<Module>,
    ) -> Option<Vec<Module>> {
        if let Some(at) = stack.iter().position(|s| s == m) {
            return Some(stack[at..].to_vec());
        }
        if done.contains(m) {
            return None;
        }
        stack.push(m.clone());
        for next in graph.get(m).into_iter().flatten() {
            if let Some(cycle) = visit(next, graph, stack, done) {
                return Some(cycle);
            }
        }
        stack.pop();
        done.insert(m.clone());
        None
    }
    let mut done = BTreeSet::new();
    for m in graph.keys() {
        if let Some(cycle) = visit(m, &graph, &mut Vec::new(), &mut done) {
            let names: Vec<String> = cycle.iter().map(|m| m.join("/")).collect();
            panic!("import cycle: {}", names.join(" -> "));
        }
    }
}
