//! The architecture's absences, checked on the source tree: who may name
//! `rusqlite` and `libc`, which top-level modules may import which, and that
//! the imports between the top-level modules of `src/` form no cycle.
//!
//! An import is a path through `crate::` (or `warsha::` in `main.rs`), or a
//! chain of `super::` that climbs to the crate root. Comment lines and
//! `#[cfg(test)]` modules are not scanned: a unit test may reach across.
//! Every failure names the file and line.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// One source file: its path from the package root, top-level module, and
/// its code lines (1-based numbers) with comments and test modules left out.
struct Source {
    path: String,
    top: String,
    lines: Vec<(usize, String)>,
}

/// One import of another top-level module.
struct Import {
    to: String,
    at: String,
}

fn sources() -> Vec<Source> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut files = Vec::new();
    walk(&root.join("src"), &mut files);
    files.sort();
    files
        .into_iter()
        .map(|p| {
            let rel = p.strip_prefix(root).unwrap().to_string_lossy().into_owned();
            let text = std::fs::read_to_string(&p).unwrap();
            Source { top: top_module(&rel), lines: code_lines(&text), path: rel }
        })
        .collect()
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            walk(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// `src/model/load.rs` → `model`; `src/answer.rs` → `answer`; `src/main.rs` → `main`.
fn top_module(rel: &str) -> String {
    let inner = rel.strip_prefix("src/").unwrap();
    let first = inner.split('/').next().unwrap();
    first.strip_suffix(".rs").unwrap_or(first).to_string()
}

/// How deep the file's module sits below the crate root.
fn module_depth(rel: &str) -> usize {
    let parts: Vec<&str> = rel.strip_prefix("src/").unwrap().split('/').collect();
    let last = *parts.last().unwrap();
    if matches!(last, "lib.rs" | "main.rs") && parts.len() == 1 {
        0
    } else if last == "mod.rs" {
        parts.len() - 1
    } else {
        parts.len()
    }
}

/// Code lines: comment lines dropped, `#[cfg(test)] mod … { … }` skipped.
fn code_lines(text: &str) -> Vec<(usize, String)> {
    let lines: Vec<&str> = text.lines().collect();
    let mut out = Vec::new();
    let mut i = 0;
    while i < lines.len() {
        let t = lines[i].trim_start();
        if t.starts_with("#[cfg(test)]") {
            let next = lines.get(i + 1).map(|l| l.trim_start()).unwrap_or("");
            let is_mod = next.starts_with("mod ")
                || next.starts_with("pub mod ")
                || next.starts_with("pub(crate) mod ");
            if is_mod && next.trim_end().ends_with('{') {
                // Skip the module's braces.
                let mut depth = 0i64;
                let mut j = i + 1;
                loop {
                    for c in lines[j].chars() {
                        match c {
                            '{' => depth += 1,
                            '}' => depth -= 1,
                            _ => {}
                        }
                    }
                    j += 1;
                    if depth <= 0 || j >= lines.len() {
                        break;
                    }
                }
                i = j;
                continue;
            }
            if is_mod {
                // A test-only module in its own file is skipped with its declaration.
                i += 2;
                continue;
            }
        }
        if !t.starts_with("//") {
            let code = match t.find("//") {
                // A trailing comment, unless the slashes sit inside a string.
                Some(k) if !t[..k].contains('"') => &t[..k],
                _ => t,
            };
            out.push((i + 1, code.to_string()));
        }
        i += 1;
    }
    out
}

fn is_ident(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '_'
}

/// The identifiers that follow `prefix` (as a whole path segment) on a line.
fn segments_after<'a>(line: &'a str, prefix: &str) -> Vec<&'a str> {
    let mut out = Vec::new();
    let mut from = 0;
    while let Some(k) = line[from..].find(prefix) {
        let start = from + k;
        let before = line[..start].chars().next_back();
        let rest = &line[start + prefix.len()..];
        if !before.is_some_and(|c| is_ident(c) || c == '$') {
            let end = rest.find(|c: char| !is_ident(c)).unwrap_or(rest.len());
            if end > 0 {
                out.push(&rest[..end]);
            }
        }
        from = start + prefix.len();
    }
    out
}

/// Whether `word` occurs on the line as a whole identifier.
fn has_word(line: &str, word: &str) -> bool {
    let mut from = 0;
    while let Some(k) = line[from..].find(word) {
        let start = from + k;
        let before = line[..start].chars().next_back();
        let after = line[start + word.len()..].chars().next();
        if !before.is_some_and(is_ident) && !after.is_some_and(is_ident) {
            return true;
        }
        from = start + word.len();
    }
    false
}

/// The top-level modules a file imports (other than its own).
fn imports(src: &Source) -> Vec<Import> {
    let depth = module_depth(&src.path);
    let mut out = Vec::new();
    for (n, line) in &src.lines {
        let mut tops: Vec<String> = segments_after(line, "crate::").into_iter().map(str::to_string).collect();
        if src.top == "main" {
            tops.extend(segments_after(line, "warsha::").into_iter().map(str::to_string));
        }
        // `super::super::x` from depth 2 names the crate root's `x`.
        if depth > 0 {
            let climb = "super::".repeat(depth);
            for s in segments_after(line, &climb) {
                if s != "super" {
                    tops.push(s.to_string());
                }
            }
        }
        for t in tops {
            if t != src.top && t != "self" && t != "super" {
                out.push(Import { to: t, at: format!("{}:{n}", src.path) });
            }
        }
    }
    out
}

fn under(src: &Source, dirs: &[&str]) -> bool {
    dirs.iter().any(|d| src.path.starts_with(d))
}

fn fail_if_any(what: &str, found: Vec<String>) {
    assert!(found.is_empty(), "{what}:\n  {}", found.join("\n  "));
}

#[test]
fn only_store_names_rusqlite() {
    let mut found = Vec::new();
    for s in sources().iter().filter(|s| !s.path.starts_with("src/store/")) {
        for (n, line) in &s.lines {
            if has_word(line, "rusqlite") {
                found.push(format!("{}:{n}: {}", s.path, line.trim()));
            }
        }
    }
    fail_if_any("rusqlite outside src/store/ (only the store writes SQL)", found);
}

#[test]
fn only_sys_calls_libc() {
    // cuda_mem.rs reads the driver's memory figures through dlopen until a
    // maintained binding replaces it.
    let exempt = ["src/sys.rs", "src/kernels/cuda/cuda_mem.rs"];
    let mut found = Vec::new();
    for s in sources().iter().filter(|s| !exempt.contains(&s.path.as_str())) {
        for (n, line) in &s.lines {
            if line.contains("libc::") {
                found.push(format!("{}:{n}: {}", s.path, line.trim()));
            }
        }
    }
    fail_if_any("libc outside src/sys.rs (give the call a safe wrapper there)", found);
}

/// (module, the top-level modules it must not import, why).
const ABSENCES: &[(&str, &[&str], &str)] = &[
    (
        "text",
        &[
            "adapters",
            "answer",
            "cli",
            "commands",
            "config",
            "data_dir",
            "demo_assets",
            "eval",
            "ingest",
            "install",
            "kernels",
            "model",
            "service",
            "store",
            "sys",
            "train",
            "tui",
        ],
        "Arabic text knows nothing else of the crate",
    ),
    (
        "store",
        &[
            "adapters",
            "answer",
            "cli",
            "commands",
            "demo_assets",
            "eval",
            "ingest",
            "model",
            "service",
            "train",
            "tui",
        ],
        "the store holds rows; it does not know who writes them",
    ),
    (
        "model",
        &["adapters", "answer", "cli", "commands", "data_dir", "eval", "ingest", "service", "store", "tui"],
        "the model knows nothing of SQLite, the data dir or the drop folder",
    ),
    (
        "kernels",
        &["adapters", "answer", "cli", "commands", "data_dir", "eval", "ingest", "service", "store", "tui"],
        "kernels know nothing of SQLite, the data dir or the drop folder",
    ),
    (
        "ingest",
        &["adapters", "answer", "cli", "commands", "eval", "model", "service", "train", "tui"],
        "ingest reads files into the store; it knows no model",
    ),
    ("sys", &["*"], "the system calls know nothing of their callers"),
];

#[test]
fn modules_import_nothing_they_must_not_know() {
    let mut found = Vec::new();
    for s in sources() {
        let rules: Vec<&(&str, &[&str], &str)> = ABSENCES.iter().filter(|(m, _, _)| *m == s.top).collect();
        for imp in imports(&s) {
            for (m, banned, why) in &rules {
                if banned.contains(&"*") || banned.contains(&imp.to.as_str()) {
                    found.push(format!("{}: {m} imports {} ({why})", imp.at, imp.to));
                }
            }
            // Only the binary and the command wiring know the command line.
            if (imp.to == "commands" || imp.to == "cli")
                && !matches!(s.top.as_str(), "main" | "commands" | "cli")
            {
                found.push(format!(
                    "{}: {} imports {} (only main.rs and commands/ do)",
                    imp.at, s.top, imp.to
                ));
            }
        }
    }
    fail_if_any("forbidden imports", found);
}

#[test]
fn no_store_path_in_the_model_the_kernels_or_the_training_ops() {
    let dirs = ["src/model/", "src/kernels/", "src/train/ops/", "src/train/cpu/"];
    let mut found = Vec::new();
    for s in sources().iter().filter(|s| under(s, &dirs)) {
        for (n, line) in &s.lines {
            if !segments_after(line, "store::").is_empty() {
                found.push(format!("{}:{n}: {}", s.path, line.trim()));
            }
        }
    }
    fail_if_any("store:: in the model, kernels or training ops", found);
}

#[test]
fn no_model_path_in_text() {
    let mut found = Vec::new();
    for s in sources().iter().filter(|s| s.path.starts_with("src/text/")) {
        for (n, line) in &s.lines {
            if !segments_after(line, "model::").is_empty() {
                found.push(format!("{}:{n}: {}", s.path, line.trim()));
            }
        }
    }
    fail_if_any("model:: in src/text/", found);
}

#[test]
fn top_level_modules_form_no_cycle() {
    // First place each edge is seen, for the message.
    let mut edges: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
    for s in sources().iter().filter(|s| !matches!(s.top.as_str(), "lib" | "main")) {
        for imp in imports(s) {
            edges.entry(s.top.clone()).or_default().entry(imp.to).or_insert(imp.at);
        }
    }
    let nodes: BTreeSet<String> = edges.keys().cloned().collect();
    let mut done = BTreeSet::new();
    for n in &nodes {
        let mut path = Vec::new();
        if let Some(cycle) = find_cycle(n, &edges, &mut path, &mut done) {
            let hops: Vec<String> = cycle
                .windows(2)
                .map(|w| format!("{} → {} (first at {})", w[0], w[1], edges[&w[0]][&w[1]]))
                .collect();
            panic!("import cycle between top-level modules:\n  {}", hops.join("\n  "));
        }
    }
}

fn find_cycle(
    n: &str,
    edges: &BTreeMap<String, BTreeMap<String, String>>,
    path: &mut Vec<String>,
    done: &mut BTreeSet<String>,
) -> Option<Vec<String>> {
    if let Some(k) = path.iter().position(|p| p == n) {
        let mut c = path[k..].to_vec();
        c.push(n.to_string());
        return Some(c);
    }
    if done.contains(n) {
        return None;
    }
    path.push(n.to_string());
    for to in edges.get(n).map(|m| m.keys().cloned().collect::<Vec<_>>()).unwrap_or_default() {
        if let Some(c) = find_cycle(&to, edges, path, done) {
            return Some(c);
        }
    }
    path.pop();
    done.insert(n.to_string());
    None
}

/// The scanner itself: a planted import is found, with its line.
#[test]
fn the_scanner_sees_crate_and_super_paths_and_skips_comments_and_tests() {
    let text = "use crate::store::Store;\n// use crate::ingest::x;\nfn f() { super::super::super::model::Base::load(); }\n\
                #[cfg(test)]\nmod tests {\n    use crate::train::x;\n}\n";
    let s = Source { path: "src/text/shape/x.rs".into(), top: "text".into(), lines: code_lines(text) };
    let got: Vec<(String, String)> = imports(&s).into_iter().map(|i| (i.to, i.at)).collect();
    assert_eq!(
        got,
        vec![
            ("store".into(), "src/text/shape/x.rs:1".into()),
            ("model".into(), "src/text/shape/x.rs:3".into())
        ]
    );
    assert_eq!(module_depth("src/text/shape/x.rs"), 3);
    assert_eq!(module_depth("src/model/mod.rs"), 1);
    assert_eq!(module_depth("src/answer.rs"), 1);
    assert!(has_word("use rusqlite::Connection;", "rusqlite"));
    assert!(!has_word("use rusqlite_migration::M;", "rusqlite"));
}
