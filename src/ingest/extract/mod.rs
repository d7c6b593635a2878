//! Text extraction, one reader per format, and the isolation that runs them.
//!
//! The readers ([`extract`]) run only inside a child process of the same
//! binary (`warsha __extract FILE KIND`, see [`isolate`]), under a time and
//! address-space limit, so a parser that panics, loops or allocates without
//! end rejects that one file and never touches the service. They return the
//! text in train form (see `text::normalize`), warnings (bad lines, …) and
//! question–answer pairs for Q&A sets.

mod docx;
pub mod isolate;
mod pdf;
mod plain;
mod qa;

use std::path::Path;

use serde::{Deserialize, Serialize};

use super::names::Kind;
use super::reason::Reject;

pub use isolate::Extractor;

/// What a reader got out of a file.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Extracted {
    /// The whole text, train form; paragraphs separated by blank lines,
    /// headings as `# ` lines.
    pub text: String,
    /// The text encoding detected (plain text and Q&A sets).
    pub encoding: Option<String>,
    /// Problems that did not stop the file: bad lines with their numbers, …
    pub warnings: Vec<String>,
    /// Question–answer rows (CSV/JSONL sets).
    pub qa: Vec<QaPair>,
}

/// A question–answer row as extraction finds it and `qa_pairs` keeps it.
pub use crate::store::ingest::QaPair;

/// Limits the child applies itself (the parent enforces time and memory).
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Largest unpacked size of a DOCX part, bytes.
    pub max_unpacked: u64,
}

/// Read `path` as `kind`. Runs in the extract child.
pub fn extract(path: &Path, kind: Kind, limits: Limits) -> Result<Extracted, Reject> {
    fault_points();
    let out = match kind {
        Kind::Txt | Kind::Md => plain::extract(&read(path)?),
        Kind::Csv => qa::extract_csv(&read(path)?, tsv_name(path)),
        Kind::Jsonl => qa::extract_jsonl(&read(path)?),
        Kind::Docx => docx::extract(path, limits.max_unpacked),
        Kind::Pdf => pdf::extract(path),
    }?;
    if out.text.trim().is_empty() {
        return Err(Reject::NoText);
    }
    Ok(out)
}

fn tsv_name(path: &Path) -> bool {
    path.extension().is_some_and(|e| e.eq_ignore_ascii_case("tsv"))
}

fn read(path: &Path) -> Result<Vec<u8>, Reject> {
    std::fs::read(path).map_err(|e| Reject::Unreadable { detail: e.to_string() })
}

/// Named failure points for tests of the isolation (`WARSHA_FAULT`, a
/// comma-separated list): a parser that panics, hangs, or eats memory.
fn fault_points() {
    if crate::ingest::fault("extract-panic") {
        panic!("fault point extract-panic");
    }
    if crate::ingest::fault("extract-hang") {
        loop {
            std::thread::sleep(std::time::Duration::from_secs(1));
        }
    }
    if crate::ingest::fault("extract-oom") {
        let mut hoard: Vec<Vec<u8>> = Vec::new();
        loop {
            hoard.push(vec![1u8; 64 << 20]);
        }
    }
}

/// Normalize line ends and apply the train form to a whole text.
pub(crate) fn train_text(s: &str) -> String {
    let s = s.strip_prefix('\u{feff}').unwrap_or(s);
    let s = if s.contains('\r') { s.replace("\r\n", "\n").replace('\r', "\n") } else { s.to_string() };
    crate::text::normalize::train_form(&s)
}
