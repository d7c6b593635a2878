//! Typed queries for ingestion: the `files` job table (one row per file
//! seen, its state and where the original went), documents with their
//! chunks and question–answer pairs, and chunk retrieval over FTS5.

use rusqlite::{params, OptionalExtension, Row};
use serde::{Deserialize, Serialize};

use super::{Result, Store};

/// One question–answer row of a CSV/JSONL set (`qa_pairs`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct QaPair {
    pub system: Option<String>,
    pub question: String,
    pub answer: String,
}

/// One row of `files`.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct FileRow {
    pub id: i64,
    pub path: String,
    pub origin: String,
    pub size: i64,
    pub mtime_ns: Option<i64>,
    pub sha256: Option<String>,
    pub state: String,
    pub reason: Option<String>,
    pub document_id: Option<i64>,
    pub moved_to: Option<String>,
    pub first_seen: String,
    pub closed: bool,
}

const FILE_COLS: &str = "id, path, origin, size, mtime_ns, sha256, state, reason, document_id, moved_to, \
                         first_seen, closed_at IS NOT NULL";

fn file_row(r: &Row<'_>) -> rusqlite::Result<FileRow> {
    Ok(FileRow {
        id: r.get(0)?,
        path: r.get(1)?,
        origin: r.get(2)?,
        size: r.get(3)?,
        mtime_ns: r.get(4)?,
        sha256: r.get(5)?,
        state: r.get(6)?,
        reason: r.get(7)?,
        document_id: r.get(8)?,
        moved_to: r.get(9)?,
        first_seen: r.get(10)?,
        closed: r.get(11)?,
    })
}

/// A file about to be recorded.
#[derive(Debug, Clone)]
pub struct NewFile<'a> {
    pub path: &'a str,
    pub origin: &'a str,
    pub size: u64,
    pub mtime_ns: Option<i64>,
    pub sha256: Option<&'a str>,
}

#[derive(Debug, Clone)]
pub struct NewDocument<'a> {
    pub sha256: &'a str,
    pub name: &'a str,
    pub kind: &'a str,
    pub spool_path: &'a str,
    pub bytes: u64,
    pub encoding: Option<&'a str>,
    pub lang: &'a str,
    pub dialect: Option<&'a str>,
    pub arabic_share: f32,
    pub diacritized: bool,
    pub text: &'a str,
    /// JSON list, or None when there were no warnings.
    pub warnings: Option<String>,
}

#[derive(Debug, Clone)]
pub struct NewChunk {
    pub heading: Option<String>,
    pub text: String,
    pub search_text: String,
    pub tokens: usize,
    pub lang: &'static str,
    pub dialect: Option<&'static str>,
}

/// How recording a document ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Recorded {
    Ingested(i64),
    /// A document with the same sha256 already existed.
    Duplicate(i64),
}

#[derive(Debug, Clone, Serialize)]
pub struct DocumentRow {
    pub id: i64,
    pub sha256: String,
    pub name: String,
    pub kind: String,
    pub spool_path: String,
    pub bytes: i64,
    pub encoding: Option<String>,
    pub lang: Option<String>,
    pub dialect: Option<String>,
    pub arabic_share: Option<f64>,
    pub diacritized: bool,
    pub warnings: Option<serde_json::Value>,
    pub created_at: String,
    pub chunks: i64,
    pub qa_pairs: i64,
}

const DOC_COLS: &str =
    "d.id, d.sha256, d.name, d.kind, d.spool_path, d.bytes, d.encoding, d.lang, d.dialect, \
     d.arabic_share, d.diacritized, d.warnings, d.created_at, \
     (SELECT count(*) FROM chunks c WHERE c.document_id = d.id), \
     (SELECT count(*) FROM qa_pairs q WHERE q.document_id = d.id)";

fn doc_row(r: &Row<'_>) -> rusqlite::Result<DocumentRow> {
    let warnings: Option<String> = r.get(11)?;
    Ok(DocumentRow {
        id: r.get(0)?,
        sha256: r.get(1)?,
        name: r.get(2)?,
        kind: r.get(3)?,
        spool_path: r.get(4)?,
        bytes: r.get(5)?,
        encoding: r.get(6)?,
        lang: r.get(7)?,
        dialect: r.get(8)?,
        arabic_share: r.get(9)?,
        diacritized: r.get(10)?,
        warnings: warnings.and_then(|w| serde_json::from_str(&w).ok()),
        created_at: r.get(12)?,
        chunks: r.get(13)?,
        qa_pairs: r.get(14)?,
    })
}

/// A retrieved chunk, best first.
#[derive(Debug, Clone, Serialize)]
pub struct ChunkHit {
    pub chunk_id: i64,
    pub document_id: i64,
    pub name: String,
    pub ord: i64,
    pub heading: Option<String>,
    /// Train form.
    pub text: String,
    /// Higher is better (negated bm25).
    pub score: f64,
}

impl Store {
    /// Record a file in `state`; a closed row is a finished job.
    pub fn file_insert(
        &mut self,
        f: &NewFile<'_>,
        state: &str,
        reason: Option<&str>,
        document_id: Option<i64>,
        closed: bool,
    ) -> Result<i64> {
        let err = self.sql_err();
        self.write(|tx| {
            tx.execute(
                "INSERT INTO files (path, origin, size, mtime_ns, sha256, state, reason, document_id, closed_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8,
                         CASE WHEN ?9 THEN strftime('%Y-%m-%dT%H:%M:%fZ', 'now') END)",
                params![f.path, f.origin, f.size as i64, f.mtime_ns, f.sha256, state, reason, document_id, closed],
            )
            .map_err(&err)?;
            Ok(tx.last_insert_rowid())
        })
    }

    /// Set a job's final state (no document), closing it when nothing is left to do.
    pub fn file_finish(
        &mut self,
        id: i64,
        state: &str,
        reason: Option<&str>,
        document_id: Option<i64>,
        close: bool,
    ) -> Result<()> {
        let err = self.sql_err();
        self.write(|tx| {
            tx.execute(
                "UPDATE files SET state = ?2, reason = ?3, document_id = ?4,
                        updated_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now'),
                        closed_at = CASE WHEN ?5 THEN strftime('%Y-%m-%dT%H:%M:%fZ', 'now') END
                 WHERE id = ?1",
                params![id, state, reason, document_id, close],
            )
            .map_err(&err)?;
            Ok(())
        })
    }

    /// Insert a document with its chunks and Q&A pairs and mark the job
    /// ingested, in one transaction; a document with the same sha256 turns
    /// the job into a duplicate instead.
    pub fn file_record_document(
        &mut self,
        file_id: i64,
        doc: &NewDocument<'_>,
        chunks: &[NewChunk],
        qa: &[QaPair],
        close: bool,
    ) -> Result<Recorded> {
        let err = self.sql_err();
        self.write(|tx| {
            let existing: Option<(i64, String)> = tx
                .query_row("SELECT id, name FROM documents WHERE sha256 = ?1", [doc.sha256], |r| {
                    Ok((r.get(0)?, r.get(1)?))
                })
                .optional()
                .map_err(&err)?;
            let (state, doc_id, reason, recorded) = match existing {
                Some((id, name)) => {
                    ("duplicate", id, Some(format!("same content as document {id} ({name})")), Recorded::Duplicate(id))
                }
                None => {
                    tx.execute(
                        "INSERT INTO documents (sha256, name, kind, spool_path, bytes, encoding, lang, dialect,
                                                arabic_share, diacritized, text, warnings)
                         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
                        params![
                            doc.sha256,
                            doc.name,
                            doc.kind,
                            doc.spool_path,
                            doc.bytes as i64,
                            doc.encoding,
                            doc.lang,
                            doc.dialect,
                            doc.arabic_share as f64,
                            doc.diacritized,
                            doc.text,
                            doc.warnings
                        ],
                    )
                    .map_err(&err)?;
                    let id = tx.last_insert_rowid();
                    let mut ins = tx
                        .prepare_cached(
                            "INSERT INTO chunks (document_id, ord, heading, text, search_text, tokens, lang, dialect)
                             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                        )
                        .map_err(&err)?;
                    for (ord, c) in chunks.iter().enumerate() {
                        ins.execute(params![
                            id,
                            ord as i64,
                            c.heading,
                            c.text,
                            c.search_text,
                            c.tokens as i64,
                            c.lang,
                            c.dialect
                        ])
                        .map_err(&err)?;
                    }
                    let mut ins = tx
                        .prepare_cached(
                            "INSERT INTO qa_pairs (document_id, ord, system, question, answer)
                             VALUES (?1, ?2, ?3, ?4, ?5)",
                        )
                        .map_err(&err)?;
                    for (ord, p) in qa.iter().enumerate() {
                        ins.execute(params![id, ord as i64, p.system, p.question, p.answer]).map_err(&err)?;
                    }
                    ("ingested", id, None, Recorded::Ingested(id))
                }
            };
            tx.execute(
                "UPDATE files SET state = ?2, reason = ?3, document_id = ?4,
                        updated_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now'),
                        closed_at = CASE WHEN ?5 THEN strftime('%Y-%m-%dT%H:%M:%fZ', 'now') END
                 WHERE id = ?1",
                params![file_id, state, reason, doc_id, close],
            )
            .map_err(&err)?;
            Ok(recorded)
        })
    }

    /// The original is where `moved_to` says (None: it was gone); the job is closed.
    pub fn file_close(&mut self, id: i64, moved_to: Option<&str>) -> Result<()> {
        let err = self.sql_err();
        self.write(|tx| {
            tx.execute(
                "UPDATE files SET moved_to = ?2, updated_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now'),
                        closed_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now')
                 WHERE id = ?1",
                params![id, moved_to],
            )
            .map_err(&err)?;
            Ok(())
        })
    }

    pub fn file(&self, id: i64) -> Result<Option<FileRow>> {
        self.conn()
            .query_row(&format!("SELECT {FILE_COLS} FROM files WHERE id = ?1"), [id], file_row)
            .optional()
            .map_err(|e| self.err(e))
    }

    /// Unfinished jobs, oldest first.
    pub fn files_open(&self) -> Result<Vec<FileRow>> {
        self.query_files(&format!("SELECT {FILE_COLS} FROM files WHERE closed_at IS NULL ORDER BY id"), [])
    }

    /// The unfinished job for a drop-folder path, if any.
    pub fn file_open_at(&self, path: &str, origin: &str) -> Result<Option<FileRow>> {
        self.conn()
            .query_row(
                &format!(
                    "SELECT {FILE_COLS} FROM files WHERE path = ?1 AND origin = ?2 AND closed_at IS NULL
                     ORDER BY id DESC LIMIT 1"
                ),
                params![path, origin],
                file_row,
            )
            .optional()
            .map_err(|e| self.err(e))
    }

    /// Whether `path` was already recorded as ignored (temporary names stay put).
    pub fn file_ignored_at(&self, path: &str, origin: &str) -> Result<bool> {
        self.conn()
            .query_row(
                "SELECT EXISTS (SELECT 1 FROM files WHERE path = ?1 AND origin = ?2 AND state = 'ignored')",
                params![path, origin],
                |r| r.get(0),
            )
            .map_err(|e| self.err(e))
    }

    /// Every file seen, newest first (at most `limit`).
    pub fn files_list(&self, limit: usize) -> Result<Vec<FileRow>> {
        self.query_files(&format!("SELECT {FILE_COLS} FROM files ORDER BY id DESC LIMIT ?1"), [limit as i64])
    }

    fn query_files<P: rusqlite::Params>(&self, sql: &str, p: P) -> Result<Vec<FileRow>> {
        let mut stmt = self.conn().prepare(sql).map_err(|e| self.err(e))?;
        let rows = stmt.query_map(p, file_row).and_then(|it| it.collect()).map_err(|e| self.err(e))?;
        Ok(rows)
    }

    /// The document holding these bytes, if any: (id, name).
    pub fn document_by_sha(&self, sha256: &str) -> Result<Option<(i64, String)>> {
        self.conn()
            .query_row("SELECT id, name FROM documents WHERE sha256 = ?1", [sha256], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .optional()
            .map_err(|e| self.err(e))
    }

    /// How many chunks a document was cut into.
    pub fn chunk_count(&self, document_id: i64) -> Result<usize> {
        self.conn()
            .query_row("SELECT count(*) FROM chunks WHERE document_id = ?1", [document_id], |r| {
                r.get::<_, i64>(0)
            })
            .map(|n| n as usize)
            .map_err(|e| self.err(e))
    }

    pub fn documents_list(&self) -> Result<Vec<DocumentRow>> {
        let mut stmt = self
            .conn()
            .prepare(&format!("SELECT {DOC_COLS} FROM documents d ORDER BY d.id"))
            .map_err(|e| self.err(e))?;
        let rows = stmt.query_map([], doc_row).and_then(|it| it.collect()).map_err(|e| self.err(e))?;
        Ok(rows)
    }

    /// One document's metadata and its text (train form).
    pub fn document(&self, id: i64) -> Result<Option<(DocumentRow, String)>> {
        self.conn()
            .query_row(&format!("SELECT {DOC_COLS}, d.text FROM documents d WHERE d.id = ?1"), [id], |r| {
                Ok((doc_row(r)?, r.get(15)?))
            })
            .optional()
            .map_err(|e| self.err(e))
    }

    /// Chunks matching any term of `query_search_form` (already in the search
    /// form), best bm25 first. Terms are quoted, so no input can break the
    /// MATCH syntax.
    pub fn search_chunks(&self, query_search_form: &str, limit: usize) -> Result<Vec<ChunkHit>> {
        let terms: Vec<String> = query_search_form
            .split_whitespace()
            .map(|t| t.trim_matches(|c: char| !c.is_alphanumeric()))
            .filter(|t| !t.is_empty())
            .map(|t| format!("\"{}\"", t.replace('"', "\"\"")))
            .collect();
        if terms.is_empty() || limit == 0 {
            return Ok(Vec::new());
        }
        let q = terms.join(" OR ");
        let mut stmt = self
            .conn()
            .prepare_cached(
                "SELECT c.id, c.document_id, d.name, c.ord, c.heading, c.text, bm25(chunks_fts) AS rank
                 FROM chunks_fts JOIN chunks c ON c.id = chunks_fts.rowid JOIN documents d ON d.id = c.document_id
                 WHERE chunks_fts MATCH ?1 ORDER BY rank LIMIT ?2",
            )
            .map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map(params![q, limit as i64], |r| {
                Ok(ChunkHit {
                    chunk_id: r.get(0)?,
                    document_id: r.get(1)?,
                    name: r.get(2)?,
                    ord: r.get(3)?,
                    heading: r.get(4)?,
                    text: r.get(5)?,
                    score: -r.get::<_, f64>(6)?,
                })
            })
            .and_then(|it| it.collect())
            .map_err(|e| self.err(e))?;
        Ok(rows)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn doc<'a>(sha: &'a str, text: &'a str) -> NewDocument<'a> {
        NewDocument {
            sha256: sha,
            name: "a.txt",
            kind: "txt",
            spool_path: "spool/aa/a.txt",
            bytes: 3,
            encoding: Some("utf-8"),
            lang: "ar",
            dialect: None,
            arabic_share: 1.0,
            diacritized: false,
            text,
            warnings: None,
        }
    }

    fn chunk(text: &str) -> NewChunk {
        NewChunk {
            heading: None,
            text: text.into(),
            search_text: crate::text::normalize::search_form(text),
            tokens: text.split_whitespace().count(),
            lang: "ar",
            dialect: None,
        }
    }

    #[test]
    fn same_sha_twice_is_a_duplicate_and_search_survives_hostile_queries() {
        let d = tempfile::tempdir().unwrap();
        let mut s = Store::open(&d.path().join("w.db")).unwrap();
        let f = NewFile { path: "a.txt", origin: "drop", size: 3, mtime_ns: None, sha256: Some("aa") };
        let id1 = s.file_insert(&f, "pending", None, None, false).unwrap();
        let chunks = [chunk("ضغط الصمام ستة بار"), chunk("Pump P-101 runs at 6 bar")];
        let r = s.file_record_document(id1, &doc("aa", "x"), &chunks, &[], false).unwrap();
        let Recorded::Ingested(doc_id) = r else { panic!("{r:?}") };
        let id2 = s.file_insert(&f, "pending", None, None, false).unwrap();
        assert_eq!(
            s.file_record_document(id2, &doc("aa", "x"), &chunks, &[], true).unwrap(),
            Recorded::Duplicate(doc_id)
        );
        assert_eq!(s.files_open().unwrap().len(), 1);
        let hits = s.search_chunks(&crate::text::normalize::search_form("الصمام"), 5).unwrap();
        assert_eq!(hits.len(), 1);
        assert_eq!(hits[0].document_id, doc_id);
        for q in ["\"", "AND OR NOT", "p-101 \"bar", "*", "NEAR(", ""] {
            s.search_chunks(q, 5).unwrap();
        }
        assert_eq!(s.search_chunks("pump bar", 5).unwrap()[0].ord, 1);
    }
}
