//! The fixed eval set: JSONL files of questions with reference answers
//! (`task: "qa"`) or options (`task: "choice"`), their validation, and the
//! hash that ties stored results to the exact bytes they were scored on.
//!
//! Format (docs/EVAL.md): one JSON object per line,
//! `{"id", "task": "qa"|"choice", "question", "answer", "choices"?, "lang",
//! "dialect"?, "source"?}`. Blank lines and lines starting with `//` are
//! skipped. Every problem is reported with the file and line.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

#[derive(Debug, thiserror::Error)]
pub enum EvalSetError {
    #[error("cannot read eval set {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path}:{line}: {reason}")]
    Line { path: PathBuf, line: usize, reason: String },
    #[error("eval set {path} has no items")]
    Empty { path: PathBuf },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Task {
    /// Free answer, scored by exact match, token F1 and chrF of a greedy generation.
    Qa,
    /// Pick one of `choices` by log-likelihood.
    Choice,
}

/// One eval question.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EvalItem {
    pub id: String,
    pub task: Task,
    pub question: String,
    pub answer: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub choices: Vec<String>,
    pub lang: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dialect: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
}

impl EvalItem {
    /// Index of the answer among the choices (validated to exist for choice items).
    pub fn answer_index(&self) -> Option<usize> {
        self.choices.iter().position(|c| c == &self.answer)
    }
}

/// A loaded eval set with the sha256 of the bytes it came from.
#[derive(Debug, Clone, PartialEq)]
pub struct EvalSet {
    pub items: Vec<EvalItem>,
    /// sha256 (hex) of the file's bytes; of the files' bytes concatenated in
    /// name order when a directory was loaded.
    pub sha256: String,
    pub files: Vec<PathBuf>,
}

const LANGS: [&str; 3] = ["ar", "en", "mixed"];
const DIALECTS: [&str; 5] = ["msa", "egyptian", "gulf", "levantine", "maghrebi"];

impl EvalSet {
    /// Load one `.jsonl` file, or every `*.jsonl` file of a directory (name order).
    pub fn load(path: &Path) -> Result<Self, EvalSetError> {
        let io = |source| EvalSetError::Io { path: path.to_path_buf(), source };
        let files = if path.is_dir() {
            let mut v: Vec<PathBuf> = std::fs::read_dir(path)
                .map_err(io)?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|e| e == "jsonl") && p.is_file())
                .collect();
            v.sort();
            v
        } else {
            vec![path.to_path_buf()]
        };
        let mut hasher = Sha256::new();
        let mut items = Vec::new();
        let mut ids = HashSet::new();
        for f in &files {
            let bytes = std::fs::read(f).map_err(|source| EvalSetError::Io { path: f.clone(), source })?;
            hasher.update(&bytes);
            parse_into(f, &bytes, &mut items, &mut ids)?;
        }
        if items.is_empty() {
            return Err(EvalSetError::Empty { path: path.to_path_buf() });
        }
        Ok(Self { items, sha256: hex::encode(hasher.finalize()), files })
    }

    /// Parse JSONL bytes (`origin` names them in errors).
    pub fn parse(origin: &Path, bytes: &[u8]) -> Result<Self, EvalSetError> {
        let mut items = Vec::new();
        parse_into(origin, bytes, &mut items, &mut HashSet::new())?;
        if items.is_empty() {
            return Err(EvalSetError::Empty { path: origin.to_path_buf() });
        }
        Ok(Self { items, sha256: hex::encode(Sha256::digest(bytes)), files: vec![origin.to_path_buf()] })
    }

    pub fn count(&self, task: Task) -> usize {
        self.items.iter().filter(|i| i.task == task).count()
    }
}

fn parse_into(
    path: &Path,
    bytes: &[u8],
    items: &mut Vec<EvalItem>,
    ids: &mut HashSet<String>,
) -> Result<(), EvalSetError> {
    let bad = |line: usize, reason: String| EvalSetError::Line { path: path.to_path_buf(), line, reason };
    let text = std::str::from_utf8(bytes).map_err(|e| {
        let line = bytes[..e.valid_up_to()].iter().filter(|&&b| b == b'\n').count() + 1;
        bad(line, format!("not UTF-8 (byte offset {})", e.valid_up_to()))
    })?;
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    for (n, raw) in text.lines().enumerate() {
        let line = n + 1;
        let l = raw.trim();
        if l.is_empty() || l.starts_with("//") {
            continue;
        }
        let item: EvalItem = serde_json::from_str(l).map_err(|e| bad(line, e.to_string()))?;
        validate(&item).map_err(|r| bad(line, format!("item {:?}: {r}", item.id)))?;
        if !ids.insert(item.id.clone()) {
            return Err(bad(line, format!("duplicate id {:?}", item.id)));
        }
        items.push(item);
    }
    Ok(())
}

fn validate(item: &EvalItem) -> Result<(), String> {
    if item.id.trim().is_empty() {
        return Err("empty id".into());
    }
    if item.question.trim().is_empty() {
        return Err("empty question".into());
    }
    if item.answer.trim().is_empty() {
        return Err("empty answer".into());
    }
    if !LANGS.contains(&item.lang.as_str()) {
        return Err(format!("lang {:?}: expected one of {}", item.lang, LANGS.join(", ")));
    }
    if let Some(d) = &item.dialect {
        if !DIALECTS.contains(&d.as_str()) {
            return Err(format!("dialect {d:?}: expected one of {}", DIALECTS.join(", ")));
        }
    }
    match item.task {
        Task::Qa if !item.choices.is_empty() => {
            Err("choices given for a qa item (use task \"choice\")".into())
        }
        Task::Choice => {
            if item.choices.len() < 2 {
                return Err(format!("a choice item needs at least 2 choices, found {}", item.choices.len()));
            }
            if item.choices.iter().any(|c| c.trim().is_empty()) {
                return Err("empty choice".into());
            }
            match item.choices.iter().filter(|c| *c == &item.answer).count() {
                1 => Ok(()),
                0 => Err(format!("answer {:?} is not among the choices", item.answer)),
                n => Err(format!("answer {:?} appears {n} times among the choices", item.answer)),
            }
        }
        Task::Qa => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<EvalSet, EvalSetError> {
        EvalSet::parse(Path::new("t.jsonl"), s.as_bytes())
    }

    #[test]
    fn parses_both_tasks_and_hashes_the_bytes() {
        let s = concat!(
            "{\"id\":\"en-1\",\"task\":\"qa\",\"question\":\"Torque?\",\"answer\":\"45 Nm\",\"lang\":\"en\"}\n",
            "\n// comment\n",
            "{\"id\":\"ar-1\",\"task\":\"choice\",\"question\":\"ما الضغط؟\",\"answer\":\"6 بار\",",
            "\"choices\":[\"4 بار\",\"6 بار\"],\"lang\":\"ar\",\"dialect\":\"egyptian\",\"source\":\"press.md\"}\n"
        );
        let set = parse(s).unwrap();
        assert_eq!(set.items.len(), 2);
        assert_eq!(set.count(Task::Choice), 1);
        assert_eq!(set.items[1].answer_index(), Some(1));
        assert_eq!(set.sha256, hex::encode(Sha256::digest(s.as_bytes())));
    }

    #[test]
    fn errors_name_the_line_and_the_problem() {
        let cases = [
            ("{\"id\":\"a\",\"task\":\"qa\",\"question\":\"q\",\"answer\":\"x\",\"lang\":\"fr\"}", "lang"),
            (
                "{\"id\":\"a\",\"task\":\"choice\",\"question\":\"q\",\"answer\":\"x\",\"choices\":[\"y\",\"z\"],\"lang\":\"en\"}",
                "not among the choices",
            ),
            ("{\"id\":\"a\",\"task\":\"qa\",\"question\":\"q\",\"answer\":\"x\",\"lang\":\"en\",\"extra\":1}", "extra"),
            ("{\"id\":\"a\",\"task\":\"open\",\"question\":\"q\",\"answer\":\"x\",\"lang\":\"en\"}", "open"),
        ];
        for (line, want) in cases {
            let e = parse(&format!("\n{line}\n")).unwrap_err().to_string();
            assert!(e.starts_with("t.jsonl:2:") && e.contains(want), "{e}");
        }
        let dup = "{\"id\":\"a\",\"task\":\"qa\",\"question\":\"q\",\"answer\":\"x\",\"lang\":\"en\"}\n";
        let e = parse(&format!("{dup}{dup}")).unwrap_err().to_string();
        assert!(e.contains(":2:") && e.contains("duplicate"), "{e}");
        assert!(matches!(parse("\n\n"), Err(EvalSetError::Empty { .. })));
    }

    #[test]
    fn directory_loads_files_in_name_order() {
        let dir = tempfile::tempdir().unwrap();
        let a = "{\"id\":\"a\",\"task\":\"qa\",\"question\":\"q\",\"answer\":\"x\",\"lang\":\"en\"}\n";
        let b = "{\"id\":\"b\",\"task\":\"qa\",\"question\":\"q\",\"answer\":\"y\",\"lang\":\"en\"}\n";
        std::fs::write(dir.path().join("2.jsonl"), b).unwrap();
        std::fs::write(dir.path().join("1.jsonl"), a).unwrap();
        std::fs::write(dir.path().join("notes.txt"), "ignored").unwrap();
        let set = EvalSet::load(dir.path()).unwrap();
        assert_eq!(set.items.iter().map(|i| i.id.as_str()).collect::<Vec<_>>(), ["a", "b"]);
        assert_eq!(set.sha256, hex::encode(Sha256::digest(format!("{a}{b}").as_bytes())));
    }
}
