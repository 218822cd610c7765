//! The import structure of `src/`: every `crate::…`, `super::…` and `self::…` path in library code (test
//! modules excluded) is an edge from the module that names it to the deepest module it reaches. The test fails
//! on an edge that goes up the layers or on a cycle at any depth (files, folders, folders of folders).
//! A module always contains its children, so edges between a module and its own ancestors or descendants are
//! containment, not dependencies.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// The layers from the bottom up: a module may use its own layer and those below.
const LAYERS: &[&[&str]] = &[
    &["error", "formats"],
    &["device", "kernels"],
    &["model"],
    &["pipeline"],
    &["store"],
    &["web"],
    &["app"],
    &["ui"],
    &["harness"],
];

type Module = Vec<String>;

fn layer_of(top: &str) -> Option<usize> {
    LAYERS.iter().position(|layer| layer.contains(&top))
}

/// `src/model/flux/mod.rs` → `["model", "flux"]`; `src/lib.rs` → `[]`.
fn module_of(relative: &Path) -> Module {
    let mut parts: Module = relative.iter().map(|p| p.to_string_lossy().into_owned()).collect();
    let file = parts.pop().unwrap_or_default();
    let stem = file.trim_end_matches(".rs");
    if stem != "mod" && stem != "lib" {
        parts.push(stem.to_string());
    }
    parts
}

/// The text with comments, string and char literals blanked, so that only code is scanned.
fn code_only(text: &str) -> String {
    let chars: Vec<char> = text.chars().collect();
    let mut out = String::with_capacity(text.len());
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let next = chars.get(i + 1).copied();
        if c == '/' && next == Some('/') {
            while i < chars.len() && chars[i] != '\n' {
                i += 1;
            }
        } else if c == '/' && next == Some('*') {
            let mut depth = 0;
            while i < chars.len() {
                if chars[i] == '/' && chars.get(i + 1) == Some(&'*') {
                    depth += 1;
                    i += 2;
                } else if chars[i] == '*' && chars.get(i + 1) == Some(&'/') {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    i += 1;
                }
            }
        } else if c == 'r' && (next == Some('"') || next == Some('#')) && !is_ident(chars.get(i.wrapping_sub(1))) {
            let mut j = i + 1;
            let mut hashes = 0;
            while chars.get(j) == Some(&'#') {
                hashes += 1;
                j += 1;
            }
            if chars.get(j) != Some(&'"') {
                out.push(c);
                i += 1;
                continue;
            }
            j += 1;
            loop {
                if j >= chars.len() {
                    break;
                }
                if chars[j] == '"' && (0..hashes).all(|h| chars.get(j + 1 + h) == Some(&'#')) {
                    j += 1 + hashes;
                    break;
                }
                j += 1;
            }
            out.push_str("\"\"");
            i = j;
        } else if c == '"' {
            i += 1;
            while i < chars.len() && chars[i] != '"' {
                i += if chars[i] == '\\' { 2 } else { 1 };
            }
            i += 1;
            out.push_str("\"\"");
        } else if c == '\'' && (chars.get(i + 2) == Some(&'\'') || next == Some('\\')) {
            // A char literal ('x' or '\n', '\u{..}'); a lifetime ('a) has no closing quote right after.
            i += 1;
            while i < chars.len() && chars[i] != '\'' {
                i += if chars[i] == '\\' { 2 } else { 1 };
            }
            i += 1;
            out.push_str("' '");
        } else {
            out.push(c);
            i += 1;
        }
    }
    out
}

fn is_ident(c: Option<&char>) -> bool {
    c.is_some_and(|c| c.is_alphanumeric() || *c == '_')
}

/// Removes every item marked `#[cfg(test)]` or `#[cfg(all(test, …))]` (test modules and test-only helpers):
/// they are not library code.
fn without_test_items(code: &str) -> String {
    let mut out = String::new();
    let mut rest = code;
    while let Some(at) = ["#[cfg(test)]", "#[cfg(all(test,"].iter().filter_map(|m| rest.find(m)).min() {
        out.push_str(&rest[..at]);
        let after = &rest[at..];
        // The item ends at its matching closing brace, or at `;` if that comes first (`mod x;`, `use …;`).
        let (mut depth, mut end) = (0usize, after.len());
        for (k, ch) in after.char_indices() {
            match ch {
                '{' => depth += 1,
                '}' => {
                    depth -= 1;
                    if depth == 0 {
                        end = k + 1;
                        break;
                    }
                }
                ';' if depth == 0 => {
                    end = k + 1;
                    break;
                }
                _ => {}
            }
        }
        rest = &after[end..];
    }
    out.push_str(rest);
    out
}

/// Every path that starts with `crate`, `super` or `self` in `code`, expanded through `{…}` groups, as
/// absolute segment lists (`super`/`self` resolved against `module`).
fn paths_in(code: &str, module: &Module) -> Vec<Module> {
    let tokens = tokenize(code);
    let mut found = Vec::new();
    let mut i = 0;
    while i < tokens.len() {
        let start = &tokens[i];
        let preceded_by_path = i > 0 && tokens[i - 1] == "::";
        if !preceded_by_path && (start == "crate" || start == "super" || start == "self") {
            // `self` as a receiver or a value is not a path: only `self::` is.
            if tokens.get(i + 1).map(String::as_str) == Some("::") {
                let base = match start.as_str() {
                    "crate" => Vec::new(),
                    "self" => module.clone(),
                    _ => {
                        let mut parent = module.clone();
                        parent.pop();
                        parent
                    }
                };
                i = expand(&tokens, i + 1, base, &mut found);
                continue;
            }
        }
        i += 1;
    }
    found
}

/// Reads `::seg::seg…` or `::{…}` from `tokens[i]` on, pushing the full paths; returns the index after it.
fn expand(tokens: &[String], mut i: usize, mut prefix: Module, found: &mut Vec<Module>) -> usize {
    loop {
        if tokens.get(i).map(String::as_str) != Some("::") {
            found.push(prefix);
            return i;
        }
        match tokens.get(i + 1).map(String::as_str) {
            Some("{") => {
                i += 2;
                loop {
                    match tokens.get(i).map(String::as_str) {
                        Some("}") | None => return i + 1,
                        Some(",") => i += 1,
                        Some("self") => {
                            found.push(prefix.clone());
                            i += 1;
                        }
                        Some(word) if is_word(word) => {
                            let mut inner = prefix.clone();
                            inner.push(word.to_string());
                            i = expand(tokens, i + 1, inner, found);
                            // Skip `as name` and anything else up to the next separator.
                            while let Some(t) = tokens.get(i) {
                                if t == "," || t == "}" {
                                    break;
                                }
                                i += 1;
                            }
                        }
                        Some(_) => i += 1,
                    }
                }
            }
            Some(word) if is_word(word) => {
                prefix.push(word.to_string());
                i += 2;
            }
            _ => {
                found.push(prefix);
                return i + 1;
            }
        }
    }
}

fn is_word(token: &str) -> bool {
    token.chars().next().is_some_and(|c| c.is_alphabetic() || c == '_')
}

/// Identifiers, `::`, and single punctuation characters.
fn tokenize(code: &str) -> Vec<String> {
    let chars: Vec<char> = code.chars().collect();
    let mut tokens = Vec::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c.is_alphanumeric() || c == '_' {
            let start = i;
            while i < chars.len() && (chars[i].is_alphanumeric() || chars[i] == '_') {
                i += 1;
            }
            tokens.push(chars[start..i].iter().collect());
        } else if c == ':' && chars.get(i + 1) == Some(&':') {
            tokens.push("::".into());
            i += 2;
        } else {
            if !c.is_whitespace() {
                tokens.push(c.to_string());
            }
            i += 1;
        }
    }
    tokens
}

/// The module graph of a source tree: module → the modules its library code names.
struct Graph {
    modules: BTreeSet<Module>,
    edges: BTreeMap<Module, BTreeSet<Module>>,
}

impl Graph {
    /// Builds the graph from `(relative path, text)` pairs.
    fn from_files(files: &[(String, String)]) -> Self {
        let modules: BTreeSet<Module> = files.iter().map(|(path, _)| module_of(Path::new(path))).collect();
        let mut edges: BTreeMap<Module, BTreeSet<Module>> = BTreeMap::new();
        for (path, text) in files {
            let module = module_of(Path::new(path));
            let code = without_test_items(&code_only(text));
            for target in paths_in(&code, &module) {
                let reached = (0..=target.len())
                    .rev()
                    .map(|n| target[..n].to_vec())
                    .find(|prefix| modules.contains(prefix))
                    .unwrap_or_default();
                if !related(&module, &reached) {
                    edges.entry(module.clone()).or_default().insert(reached);
                }
            }
        }
        Self { modules, edges }
    }

    /// Edges that go from a lower layer to a higher one, or touch a top-level module no layer names.
    fn upward_edges(&self) -> Vec<String> {
        let mut faults = Vec::new();
        for module in &self.modules {
            if let Some(top) = module.first()
                && layer_of(top).is_none()
            {
                faults.push(format!("`{}` is in no layer: add it to LAYERS in tests/layering.rs", top));
            }
        }
        for (from, targets) in &self.edges {
            for to in targets {
                let (Some(a), Some(b)) = (from.first(), to.first()) else { continue };
                if let (Some(la), Some(lb)) = (layer_of(a), layer_of(b))
                    && lb > la
                {
                    faults.push(format!("{} uses {}, a higher layer", name(from), name(to)));
                }
            }
        }
        faults.sort();
        faults.dedup();
        faults
    }

    /// One cycle per depth at which modules, collapsed to their first `depth` segments, import each other.
    fn cycles(&self) -> Vec<String> {
        let deepest = self.modules.iter().map(Vec::len).max().unwrap_or(0);
        let mut found = Vec::new();
        for depth in 1..=deepest {
            let mut graph: BTreeMap<Module, BTreeSet<Module>> = BTreeMap::new();
            for (from, targets) in &self.edges {
                for to in targets {
                    let (a, b) = (collapse(from, depth), collapse(to, depth));
                    if !related(&a, &b) {
                        graph.entry(a).or_default().insert(b);
                    }
                }
            }
            if let Some(cycle) = find_cycle(&graph) {
                let text = cycle.iter().map(name).collect::<Vec<_>>().join(" → ");
                if !found.contains(&text) {
                    found.push(text);
                }
            }
        }
        found
    }
}

fn collapse(module: &Module, depth: usize) -> Module {
    module[..module.len().min(depth)].to_vec()
}

/// Whether one module contains the other (or they are the same).
fn related(a: &Module, b: &Module) -> bool {
    a.starts_with(b) || b.starts_with(a)
}

fn name(module: &Module) -> String {
    if module.is_empty() { "crate".into() } else { module.join("::") }
}

/// A cycle of `graph` as a path that ends where it starts, if there is one.
fn find_cycle(graph: &BTreeMap<Module, BTreeSet<Module>>) -> Option<Vec<Module>> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        Open,
        Done,
    }
    fn visit(
        node: &Module,
        graph: &BTreeMap<Module, BTreeSet<Module>>,
        marks: &mut BTreeMap<Module, Mark>,
        stack: &mut Vec<Module>,
    ) -> Option<Vec<Module>> {
        match marks.get(node) {
            Some(Mark::Done) => return None,
            Some(Mark::Open) => {
                let start = stack.iter().position(|m| m == node).unwrap_or(0);
                let mut cycle = stack[start..].to_vec();
                cycle.push(node.clone());
                return Some(cycle);
            }
            None => {}
        }
        marks.insert(node.clone(), Mark::Open);
        stack.push(node.clone());
        for next in graph.get(node).into_iter().flatten() {
            if let Some(cycle) = visit(next, graph, marks, stack) {
                return Some(cycle);
            }
        }
        stack.pop();
        marks.insert(node.clone(), Mark::Done);
        None
    }
    let mut marks = BTreeMap::new();
    graph.keys().find_map(|node| visit(node, graph, &mut marks, &mut Vec::new()))
}

/// Every `.rs` file under `src/` except the binaries, as (path relative to `src/`, text).
fn library_sources() -> Vec<(String, String)> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("src");
    let mut files = Vec::new();
    let mut dirs = vec![root.clone()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let relative = path.strip_prefix(&root).unwrap().to_string_lossy().into_owned();
            if path.is_dir() {
                if relative != "bin" {
                    dirs.push(path);
                }
            } else if relative.ends_with(".rs") {
                files.push((relative, std::fs::read_to_string(&path).unwrap()));
            }
        }
    }
    files.sort();
    files
}

#[test]
fn src_has_no_upward_imports_and_no_cycles() {
    let graph = Graph::from_files(&library_sources());
    assert!(graph.modules.len() > 40, "found only {} modules under src/", graph.modules.len());
    assert!(graph.edges.values().map(BTreeSet::len).sum::<usize>() > 50, "the scan found almost no imports");
    let upward = graph.upward_edges();
    assert!(upward.is_empty(), "imports against the layers:\n{}", upward.join("\n"));
    let cycles = graph.cycles();
    assert!(cycles.is_empty(), "import cycles:\n{}", cycles.join("\n"));
}

fn files(list: &[(&str, &str)]) -> Vec<(String, String)> {
    list.iter().map(|(p, t)| (p.to_string(), t.to_string())).collect()
}

#[test]
fn a_two_file_cycle_and_a_folder_cycle_are_found() {
    let graph = Graph::from_files(&files(&[
        ("lib.rs", "pub mod model;"),
        ("model/mod.rs", "pub mod a; pub mod b;"),
        ("model/a.rs", "use crate::model::b::B; pub struct A;"),
        ("model/b.rs", "use super::a::A; pub struct B;"),
    ]));
    assert_eq!(graph.cycles(), vec!["model::a → model::b → model::a".to_string()]);

    // No file imports one that imports it back, but the folders do.
    let graph = Graph::from_files(&files(&[
        ("model/flux/mod.rs", "pub mod lora;"),
        ("model/flux/lora.rs", "use crate::model::vae::config::C;"),
        ("model/vae/mod.rs", "pub mod config; pub mod tiling;"),
        ("model/vae/config.rs", "pub struct C;"),
        ("model/vae/tiling.rs", "fn f() { crate::model::flux::rope(); }"),
    ]));
    assert_eq!(graph.cycles(), vec!["model::flux → model::vae → model::flux".to_string()]);
}

#[test]
fn an_upward_import_and_an_unknown_folder_are_found() {
    let graph = Graph::from_files(&files(&[
        ("formats/gguf.rs", "use crate::{Error, pipeline::loader::{self, KontextModel}};"),
        ("pipeline/loader.rs", "pub struct KontextModel;"),
        ("extras/x.rs", ""),
    ]));
    assert_eq!(
        graph.upward_edges(),
        vec![
            "`extras` is in no layer: add it to LAYERS in tests/layering.rs".to_string(),
            "formats::gguf uses pipeline::loader, a higher layer".to_string(),
        ]
    );
}

#[test]
fn tests_comments_strings_and_containment_are_not_edges() {
    let graph = Graph::from_files(&files(&[
        (
            "formats/gguf.rs",
            "//! See [`crate::pipeline::loader`].\n\
             const S: &str = \"crate::pipeline::loader\";\n\
             const R: &str = r#\"crate::pipeline\"#;\n\
             fn f(x: char) -> bool { x == '\"' }\n\
             #[cfg(test)]\nmod tests { use crate::pipeline::loader::KontextModel; }\n\
             #[cfg(all(test, not(target_arch = \"wasm32\")))]\nmod more { use crate::pipeline::loader::K; }\n\
             use super::Thing;",
        ),
        ("formats/mod.rs", "pub mod gguf; pub struct Thing;"),
        ("pipeline/loader.rs", "pub struct KontextModel;"),
    ]));
    assert!(graph.edges.is_empty(), "{:?}", graph.edges);
}
