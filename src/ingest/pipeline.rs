//! One file's way through ingestion, as a sequence of recorded, idempotent
//! steps (see the module docs of `ingest`). [`Pipeline::take`] starts a job
//! for a settled file; [`Pipeline::resume`] finishes every job a crash left
//! open; both end in [`Pipeline::advance`], which does whatever step the
//! row says is next.

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use serde::Serialize;

use super::chunk::chunk;
use super::extract::{Extracted, Extractor};
use super::names::{extension, IgnoreSet, Kind};
use super::reason::Reject;
use super::spool::{self, sha256_file, spool_rel, sync_dir};
use super::{crash_point, IngestError};
use crate::config;
use crate::data_dir::DataDir;
use crate::store::ingest::{FileRow, NewChunk, NewDocument, NewFile, Recorded};
use crate::store::{Level, Store};
use crate::text::normalize::search_form;
use crate::text::tags::tags;

const MIB: u64 = 1 << 20;

/// The state a file ended in (`Waiting`: not taken yet, no row).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    Ingested,
    Duplicate,
    Rejected,
    Ignored,
    Waiting,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::Ingested => "ingested",
            State::Duplicate => "duplicate",
            State::Rejected => "rejected",
            State::Ignored => "ignored",
            State::Waiting => "waiting",
        }
    }
}

/// What happened to one file: the CLI's `--json` line.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Outcome {
    pub path: String,
    pub state: State,
    pub document_id: Option<i64>,
    pub chunks: usize,
    pub reason: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// In the drop folder: moved to processed/ or rejected/ when done.
    Drop,
    /// Named on the command line: ingested in place.
    Path,
}

impl Origin {
    fn as_str(self) -> &'static str {
        match self {
            Origin::Drop => "drop",
            Origin::Path => "path",
        }
    }
}

/// A file to take: where it is and the name it is recorded under.
#[derive(Debug, Clone)]
pub struct Candidate {
    pub abs: PathBuf,
    /// Drop-relative path (drop folder) or the absolute path (in place).
    pub rel: String,
    pub origin: Origin,
}

pub struct Pipeline {
    store: Store,
    data: DataDir,
    cfg: config::Ingest,
    extractor: Extractor,
    ignore: IgnoreSet,
}

impl Pipeline {
    /// The caller holds the data dir's writer lock.
    pub fn new(
        store: Store,
        data: DataDir,
        cfg: config::Ingest,
        extractor: Extractor,
    ) -> Result<Self, IngestError> {
        data.create().map_err(|e| IngestError::io(data.root(), std::io::Error::other(e)))?;
        let stale = spool::clean_tmp(&data.spool()).map_err(|e| IngestError::io(&data.spool(), e))?;
        if stale > 0 {
            tracing::info!(stale, "removed unfinished spool copies");
        }
        let ignore = IgnoreSet::new(&cfg.ignore);
        Ok(Self { store, data, cfg, extractor, ignore })
    }

    pub fn store(&mut self) -> &mut Store {
        &mut self.store
    }

    pub fn config(&self) -> &config::Ingest {
        &self.cfg
    }

    pub fn ignore(&self) -> &IgnoreSet {
        &self.ignore
    }

    pub fn drop_root(&self) -> &Path {
        &self.cfg.drop_folder
    }

    /// Finish every open job (after a crash: pending extractions, unfinished
    /// moves). Moves wait while the drop folder is absent.
    pub fn resume(&mut self) -> Result<Vec<Outcome>, IngestError> {
        let open = self.store.files_open()?;
        let mut out = Vec::new();
        for row in open {
            if row.origin == "drop" && row.state != "pending" && !self.drop_root().is_dir() {
                continue;
            }
            let (id, path) = (row.id, row.path.clone());
            match self.advance(row, None) {
                Ok(o) => out.push(o),
                // One job that cannot finish (a move the filesystem refuses)
                // must not hold up the others; it stays open for next time.
                Err(IngestError::Store(e)) => return Err(IngestError::Store(e)),
                Err(e) => {
                    self.store.event(
                        Level::Error,
                        "ingest",
                        &format!("cannot finish {path} yet: {e}"),
                        Some(serde_json::json!({ "file_id": id })),
                    )?;
                }
            }
        }
        Ok(out)
    }

    /// Take a settled file. `settled` is the (size, mtime_ns) the settler saw
    /// stay unchanged; the copy is refused if the file differs from it.
    pub fn take(
        &mut self,
        c: &Candidate,
        settled: Option<(u64, i64)>,
    ) -> Result<Option<Outcome>, IngestError> {
        let meta = match std::fs::symlink_metadata(&c.abs) {
            Ok(m) => m,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(IngestError::io(&c.abs, e)),
        };
        if c.origin == Origin::Drop {
            if let Some(row) = self.store.file_open_at(&c.rel, "drop")? {
                return self.advance(row, None).map(Some);
            }
        }
        let name = file_name(&c.rel);
        if let Some(pattern) = self.ignore.file_match(&name) {
            return self.record_ignored(c, &pattern);
        }
        let new = |sha: Option<&str>| (meta.len(), mtime_ns(&meta), sha.map(str::to_string));
        let early = if meta.file_type().is_symlink() {
            Some(Reject::Symlink)
        } else if !meta.is_file() {
            Some(Reject::Unreadable { detail: "not a regular file".into() })
        } else if meta.len() == 0 {
            Some(Reject::Empty)
        } else if meta.len() > self.cfg.max_file_mib * MIB {
            Some(Reject::TooLarge { mib: meta.len().div_ceil(MIB), limit_mib: self.cfg.max_file_mib })
        } else if Kind::from_name(&name).is_none() {
            Some(Reject::Unsupported { ext: extension(&name).map(|e| format!(".{e}")).unwrap_or_default() })
        } else {
            None
        };
        if let Some(r) = early {
            let (size, mtime, _) = new(None);
            let id = self.insert(c, size, mtime, None, "rejected", Some(&r.to_string()), None)?;
            self.log_reject(c, &r)?;
            return self.advance_with(id, Some(&r)).map(Some);
        }
        let mut file = match crate::sys::open_no_follow(&c.abs) {
            Ok(f) => f,
            Err(e) if c.origin == Origin::Drop => {
                tracing::debug!(path = %c.abs.display(), error = %e, "not openable yet");
                return Ok(Some(waiting(c, "the file does not open yet")));
            }
            Err(e) => {
                let r = Reject::Unreadable { detail: e.to_string() };
                let id = self.insert(
                    c,
                    meta.len(),
                    mtime_ns(&meta),
                    None,
                    "rejected",
                    Some(&r.to_string()),
                    None,
                )?;
                self.log_reject(c, &r)?;
                return self.advance_with(id, Some(&r)).map(Some);
            }
        };
        let before = file.metadata().map_err(|e| IngestError::io(&c.abs, e))?;
        let seen = (before.len(), mtime_ns(&before));
        if settled.is_some_and(|s| s != seen) {
            return Ok(Some(waiting(c, "the file changed while settling")));
        }
        let staged = match spool::stage(&self.data.spool(), &mut file, self.cfg.max_file_mib * MIB) {
            Ok(s) => s,
            Err(spool::SpoolError::FileTooLarge) | Err(spool::SpoolError::Read(_))
                if c.origin == Origin::Drop =>
            {
                return Ok(Some(waiting(c, "the file changed while it was copied")));
            }
            // Named on the command line: there is no later look, so say why now.
            Err(e @ (spool::SpoolError::FileTooLarge | spool::SpoolError::Read(_))) => {
                let r = match e {
                    spool::SpoolError::FileTooLarge => Reject::TooLarge {
                        mib: std::fs::metadata(&c.abs).map_or(0, |m| m.len().div_ceil(MIB)),
                        limit_mib: self.cfg.max_file_mib,
                    },
                    other => Reject::Unreadable { detail: other.to_string() },
                };
                let id = self.insert(c, seen.0, seen.1, None, "rejected", Some(&r.to_string()), None)?;
                self.log_reject(c, &r)?;
                return self.advance_with(id, Some(&r)).map(Some);
            }
            Err(e) => return Err(e.into()),
        };
        let after = std::fs::symlink_metadata(&c.abs).map_err(|e| IngestError::io(&c.abs, e))?;
        if (after.len(), mtime_ns(&after)) != seen || staged.bytes != seen.0 {
            staged.discard();
            return Ok(Some(waiting(c, "the file changed while it was copied")));
        }
        let sha = staged.sha256.clone();
        if let Some((doc_id, doc_name)) = self.store.document_by_sha(&sha)? {
            staged.discard();
            let reason = format!("same content as document {doc_id} ({doc_name})");
            let id = self.insert(c, seen.0, seen.1, Some(&sha), "duplicate", Some(&reason), Some(doc_id))?;
            return self.advance_with(id, None).map(Some);
        }
        let ext = extension(&name).unwrap_or("bin").to_string();
        staged.commit(self.data.root(), &ext)?;
        crash_point("crash-after-spool");
        let id = self.insert(c, seen.0, seen.1, Some(&sha), "pending", None, None)?;
        crash_point("crash-after-pending");
        self.advance_with(id, None).map(Some)
    }

    /// Record a temporary/system name once; it stays where it is.
    pub fn record_ignored(&mut self, c: &Candidate, pattern: &str) -> Result<Option<Outcome>, IngestError> {
        let origin = c.origin.as_str();
        if self.store.file_ignored_at(&c.rel, origin)? {
            return Ok(None);
        }
        let meta = std::fs::symlink_metadata(&c.abs).ok();
        let reason = format!("temporary or system name (matches {pattern:?}); left untouched");
        let f = NewFile {
            path: &c.rel,
            origin,
            size: meta.as_ref().map_or(0, |m| m.len()),
            mtime_ns: meta.as_ref().map(mtime_ns),
            sha256: None,
        };
        self.store.file_insert(&f, "ignored", Some(&reason), None, true)?;
        Ok(Some(Outcome {
            path: c.rel.clone(),
            state: State::Ignored,
            document_id: None,
            chunks: 0,
            reason: Some(reason),
        }))
    }

    #[allow(clippy::too_many_arguments)]
    fn insert(
        &mut self,
        c: &Candidate,
        size: u64,
        mtime: i64,
        sha: Option<&str>,
        state: &str,
        reason: Option<&str>,
        doc: Option<i64>,
    ) -> Result<i64, IngestError> {
        let f = NewFile { path: &c.rel, origin: c.origin.as_str(), size, mtime_ns: Some(mtime), sha256: sha };
        // In place, a final state closes the job; in the drop folder the move does.
        let closed = c.origin == Origin::Path && state != "pending";
        Ok(self.store.file_insert(&f, state, reason, doc, closed)?)
    }

    fn log_reject(&mut self, c: &Candidate, r: &Reject) -> Result<(), IngestError> {
        self.store.event(
            Level::Warn,
            "ingest",
            &format!("rejected {}: {r}", c.rel),
            Some(serde_json::json!({ "path": c.rel, "reason": r.to_string() })),
        )?;
        Ok(())
    }

    fn advance_with(&mut self, id: i64, reject: Option<&Reject>) -> Result<Outcome, IngestError> {
        let row = self.store.file(id)?.ok_or_else(|| {
            IngestError::io(Path::new(&id.to_string()), std::io::Error::other("files row vanished"))
        })?;
        self.advance(row, reject)
    }

    /// Do the next steps of a job until it is closed (or must wait for the drop folder).
    fn advance(&mut self, mut row: FileRow, reject: Option<&Reject>) -> Result<Outcome, IngestError> {
        let mut chunks = 0;
        let mut fresh = None;
        if row.state == "pending" {
            let (n, r) = self.extract_and_record(&row)?;
            chunks = n;
            fresh = r;
            crash_point("crash-after-record");
            row = self.store.file(row.id)?.unwrap_or(row);
        }
        if row.origin == "drop" && !row.closed && self.drop_root().is_dir() {
            let moved = self.move_original(&row, fresh.as_ref().or(reject))?;
            crash_point("crash-after-move");
            self.store.file_close(row.id, moved.as_deref())?;
        }
        if chunks == 0 && row.state == "ingested" {
            chunks = row.document_id.map(|d| self.store.chunk_count(d).unwrap_or(0)).unwrap_or(0);
        }
        let state = match row.state.as_str() {
            "ingested" => State::Ingested,
            "duplicate" => State::Duplicate,
            "ignored" => State::Ignored,
            _ => State::Rejected,
        };
        let path = row.path.clone();
        Ok(Outcome { path, state, document_id: row.document_id, chunks, reason: row.reason })
    }

    /// Extract a pending job's spool copy and record the result in one transaction.
    fn extract_and_record(&mut self, row: &FileRow) -> Result<(usize, Option<Reject>), IngestError> {
        let name = file_name(&row.path);
        let close = row.origin != "drop";
        let result = match (row.sha256.as_deref(), Kind::from_name(&name)) {
            (Some(sha), Some(kind)) => {
                let ext = extension(&name).unwrap_or("bin");
                let rel = spool_rel(sha, ext);
                let spooled = self.data.root().join(&rel);
                if !spooled.is_file() {
                    self.respool(row, sha, ext)?;
                }
                if spooled.is_file() {
                    self.extractor.run(&spooled, kind).map(|e| (e, kind, rel))
                } else {
                    Err(Reject::Unreadable {
                        detail: "the spool copy is missing and the original changed".into(),
                    })
                }
            }
            _ => Err(Reject::Unsupported {
                ext: extension(&name).map(|e| format!(".{e}")).unwrap_or_default(),
            }),
        };
        match result {
            Ok((ex, kind, rel)) => {
                let sha = row.sha256.as_deref().unwrap_or_default();
                let n = self.record(row, sha, &name, kind, &rel, &ex, close)?;
                Ok((n, None))
            }
            Err(r) => {
                self.store.file_finish(row.id, "rejected", Some(&r.to_string()), None, close)?;
                self.store.event(
                    Level::Warn,
                    "ingest",
                    &format!("rejected {}: {r}", row.path),
                    Some(serde_json::json!({ "file_id": row.id, "path": row.path, "reason": r.to_string() })),
                )?;
                Ok((0, Some(r)))
            }
        }
    }

    /// The spool copy vanished (someone cleaned the data dir): copy the
    /// original again if it still holds the same bytes.
    fn respool(&mut self, row: &FileRow, sha: &str, ext: &str) -> Result<(), IngestError> {
        let abs = self.original_path(row);
        if let Ok(mut f) = crate::sys::open_no_follow(&abs) {
            if let Ok(staged) = spool::stage(&self.data.spool(), &mut f, self.cfg.max_file_mib * MIB) {
                if staged.sha256 == sha {
                    staged.commit(self.data.root(), ext)?;
                } else {
                    staged.discard();
                }
            }
        }
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn record(
        &mut self,
        row: &FileRow,
        sha: &str,
        name: &str,
        kind: Kind,
        spool_rel: &str,
        ex: &Extracted,
        close: bool,
    ) -> Result<usize, IngestError> {
        let t = tags(&tag_sample(&ex.text));
        let chunks: Vec<NewChunk> = chunk(&ex.text, self.cfg.chunk_tokens, self.cfg.chunk_overlap)
            .into_iter()
            .map(|c| {
                let ct = tags(&c.text);
                let search_text = match &c.heading {
                    Some(h) => search_form(&format!("{h}\n{}", c.text)),
                    None => search_form(&c.text),
                };
                NewChunk {
                    heading: c.heading,
                    search_text,
                    tokens: c.tokens,
                    lang: ct.lang.as_str(),
                    dialect: ct.dialect.map(|d| d.as_str()),
                    text: c.text,
                }
            })
            .collect();
        let warnings =
            (!ex.warnings.is_empty()).then(|| serde_json::Value::from(ex.warnings.clone()).to_string());
        let doc = NewDocument {
            sha256: sha,
            name,
            kind: kind.as_str(),
            spool_path: spool_rel,
            bytes: row.size as u64,
            encoding: ex.encoding.as_deref(),
            lang: t.lang.as_str(),
            dialect: t.dialect.map(|d| d.as_str()),
            arabic_share: t.arabic_share,
            diacritized: t.diacritized,
            text: &ex.text,
            warnings,
        };
        let n = chunks.len();
        match self.store.file_record_document(row.id, &doc, &chunks, &ex.qa, close)? {
            Recorded::Ingested(_) => Ok(n),
            Recorded::Duplicate(_) => Ok(0),
        }
    }

    fn original_path(&self, row: &FileRow) -> PathBuf {
        if row.origin == "drop" {
            self.drop_root().join(&row.path)
        } else {
            PathBuf::from(&row.path)
        }
    }

    /// Move a finished drop-folder original to processed/ or rejected/ (never
    /// overwriting), or find where an interrupted run already put it.
    /// Returns the drop-relative destination, or None when the original is gone.
    fn move_original(
        &mut self,
        row: &FileRow,
        reject: Option<&Reject>,
    ) -> Result<Option<String>, IngestError> {
        let root = self.drop_root().to_path_buf();
        let src = root.join(&row.path);
        let folder = if row.state == "rejected" { &self.cfg.rejected_dir } else { &self.cfg.processed_dir };
        let rel = Path::new(&row.path);
        let sub = rel.parent().unwrap_or(Path::new(""));
        let dest_dir_rel = Path::new(folder).join(sub);
        let dest_dir = root.join(&dest_dir_rel);
        let name = file_name(&row.path);
        if !is_same_file(&src, row) {
            // Already moved by a run that died before recording it, or gone.
            let found = find_moved(&dest_dir, &name, row);
            let moved = found.map(|n| dest_dir_rel.join(n).to_string_lossy().into_owned());
            if moved.is_none() {
                self.store.event(
                    Level::Warn,
                    "ingest",
                    &format!("{} left the drop folder before it was moved", row.path),
                    Some(serde_json::json!({ "file_id": row.id })),
                )?;
            }
            return Ok(moved);
        }
        std::fs::create_dir_all(&dest_dir).map_err(|e| IngestError::io(&dest_dir, e))?;
        for n in 1..10_000u32 {
            let cand = numbered(&name, n);
            let dest = dest_dir.join(&cand);
            let err_file = dest_dir.join(format!("{cand}.error.txt"));
            if std::fs::symlink_metadata(&dest).is_ok() {
                continue;
            }
            if row.state == "rejected" {
                // The name is free; an error file already beside it is ours,
                // from a run that died between writing it and the move.
                if std::fs::symlink_metadata(&err_file).is_ok() {
                    std::fs::remove_file(&err_file).map_err(|e| IngestError::io(&err_file, e))?;
                }
                let text = match reject {
                    Some(r) => r.error_file_text(&name, row.sha256.as_deref()),
                    None => format!(
                        "لم يُقبل هذا الملف (السبب مذكور بالإنجليزية أدناه)\nThis file was not accepted: {}\n\nFile / الملف: {}\n",
                        row.reason.as_deref().unwrap_or("unknown reason"),
                        name
                    ),
                };
                write_new(&err_file, text.as_bytes()).map_err(|e| IngestError::io(&err_file, e))?;
            }
            match crate::sys::rename_noreplace(&src, &dest) {
                Ok(()) => {
                    sync_dir(&dest_dir).map_err(|e| IngestError::io(&dest_dir, e))?;
                    if let Some(p) = src.parent() {
                        sync_dir(p).map_err(|e| IngestError::io(p, e))?;
                    }
                    return Ok(Some(dest_dir_rel.join(cand).to_string_lossy().into_owned()));
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    if row.state == "rejected" {
                        let _ = std::fs::remove_file(&err_file);
                    }
                    continue;
                }
                Err(e) => return Err(IngestError::io(&src, e)),
            }
        }
        Err(IngestError::io(&dest_dir, std::io::Error::other("no free name")))
    }
}

/// Document-level tags read a bounded sample: 16 evenly spaced slices of a
/// long text say as much about its language as the whole of it, at a
/// fraction of the cost (each chunk is still tagged in full).
fn tag_sample(text: &str) -> std::borrow::Cow<'_, str> {
    const SAMPLE: usize = 1 << 20;
    if text.len() <= SAMPLE {
        return std::borrow::Cow::Borrowed(text);
    }
    let slices = 16;
    let each = SAMPLE / slices;
    let stride = text.len() / slices;
    let mut out = String::with_capacity(SAMPLE + slices);
    for i in 0..slices {
        let mut a = i * stride;
        while !text.is_char_boundary(a) {
            a += 1;
        }
        let mut b = (a + each).min(text.len());
        while !text.is_char_boundary(b) {
            b -= 1;
        }
        out.push_str(&text[a..b]);
        out.push('\n');
    }
    std::borrow::Cow::Owned(out)
}

fn waiting(c: &Candidate, why: &str) -> Outcome {
    Outcome {
        path: c.rel.clone(),
        state: State::Waiting,
        document_id: None,
        chunks: 0,
        reason: Some(why.into()),
    }
}

/// The last component of a recorded path.
pub fn file_name(rel: &str) -> String {
    Path::new(rel).file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| rel.to_string())
}

pub fn mtime_ns(m: &std::fs::Metadata) -> i64 {
    m.mtime().saturating_mul(1_000_000_000).saturating_add(m.mtime_nsec())
}

/// Is the file at `src` still the one the row describes?
fn is_same_file(src: &Path, row: &FileRow) -> bool {
    let Ok(m) = std::fs::symlink_metadata(src) else { return false };
    if m.len() as i64 != row.size {
        return false;
    }
    if row.mtime_ns.is_some_and(|t| t == mtime_ns(&m)) {
        return true;
    }
    match &row.sha256 {
        Some(sha) => m.is_file() && sha256_file(src).is_ok_and(|s| &s == sha),
        None => false,
    }
}

/// `name`, `name (2).ext`, … in `dir` holding the row's bytes.
fn find_moved(dir: &Path, name: &str, row: &FileRow) -> Option<String> {
    for n in 1..10_000u32 {
        let cand = numbered(name, n);
        let p = dir.join(&cand);
        let Ok(m) = std::fs::symlink_metadata(&p) else { return None };
        let same = m.len() as i64 == row.size
            && match &row.sha256 {
                Some(sha) => !m.is_file() || sha256_file(&p).is_ok_and(|s| &s == sha),
                None => row.mtime_ns.is_some_and(|t| t == mtime_ns(&m)),
            };
        if same {
            return Some(cand);
        }
    }
    None
}

/// `report.pdf` → `report (2).pdf` for n = 2; n = 1 is the name itself.
fn numbered(name: &str, n: u32) -> String {
    if n == 1 {
        return name.to_string();
    }
    match extension(name) {
        Some(ext) => format!("{} ({n}).{ext}", &name[..name.len() - ext.len() - 1]),
        None => format!("{name} ({n})"),
    }
}

/// Create a new file (never replacing one) and sync it. A crash mid-write
/// leaves a short file that the retried move rewrites.
fn write_new(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new().write(true).create_new(true).open(path)?;
    f.write_all(bytes)?;
    f.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbered_names_keep_the_extension() {
        assert_eq!(numbered("report.pdf", 1), "report.pdf");
        assert_eq!(numbered("report.pdf", 3), "report (3).pdf");
        assert_eq!(numbered("README", 2), "README (2)");
        assert_eq!(numbered("دليل الصيانة.docx", 2), "دليل الصيانة (2).docx");
    }

    #[test]
    fn long_texts_are_tagged_from_a_bounded_sample_cut_at_char_boundaries() {
        let short = "نص قصير";
        assert!(matches!(tag_sample(short), std::borrow::Cow::Borrowed(_)));
        let long = "سلامة العمال أولاً ".repeat(200_000);
        let s = tag_sample(&long);
        assert!(s.len() <= (1 << 20) + 16 && s.len() > (1 << 19), "{}", s.len());
        assert!(s.contains("سلامة"));
    }

    #[test]
    fn rename_never_replaces() {
        let d = tempfile::tempdir().unwrap();
        let (a, b) = (d.path().join("a"), d.path().join("b"));
        std::fs::write(&a, "1").unwrap();
        std::fs::write(&b, "2").unwrap();
        assert_eq!(
            crate::sys::rename_noreplace(&a, &b).unwrap_err().kind(),
            std::io::ErrorKind::AlreadyExists
        );
        assert_eq!(std::fs::read(&b).unwrap(), b"2");
        write_new(&d.path().join("c"), b"3").unwrap();
        assert!(write_new(&d.path().join("c"), b"4").is_err());
        assert_eq!(std::fs::read(d.path().join("c")).unwrap(), b"3");
    }
}
