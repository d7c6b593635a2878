//! Typed queries for training: what a round learns from (documents' chunks,
//! Q&A pairs, reviewed answers), the `runs` row of a round and its
//! `run_steps`, and the candidate adapter a finished round registers.

use rusqlite::{params, OptionalExtension};
use serde::{Deserialize, Serialize};

use super::{Result, Store};

/// A document's text as causal-LM material (chunks in order, train form).
#[derive(Debug, Clone, PartialEq)]
pub struct DocSource {
    pub id: i64,
    pub sha256: String,
    pub name: String,
    pub chunks: Vec<String>,
}

/// One question–answer pair from a Q&A set.
#[derive(Debug, Clone, PartialEq)]
pub struct QaSource {
    pub id: i64,
    pub document_id: i64,
    pub system: Option<String>,
    pub question: String,
    pub answer: String,
}

/// A reviewed answer: the operator's correction, or the approved answer as given.
#[derive(Debug, Clone, PartialEq)]
pub struct ReviewSource {
    pub id: i64,
    pub question: String,
    pub answer: String,
}

/// Everything a round may learn from.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TrainingSources {
    pub docs: Vec<DocSource>,
    pub qa: Vec<QaSource>,
    pub reviews: Vec<ReviewSource>,
}

/// The ids a run was built from (`runs.data_snapshot`): a resumed run reads
/// exactly these, whatever was ingested since.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DataSnapshot {
    pub train_documents: Vec<i64>,
    pub heldout_documents: Vec<i64>,
    pub qa_pairs: Vec<i64>,
    pub reviews: Vec<i64>,
}

/// One optimizer step's figures (`run_steps`).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StepRow {
    pub step: i64,
    pub loss: f64,
    pub lr: f64,
    pub grad_norm: Option<f64>,
    pub tokens_per_s: Option<f64>,
    pub peak_mem_mib: Option<f64>,
}

/// A `runs` row.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RunRow {
    pub id: i64,
    pub status: String,
    pub base_model: String,
    pub base_sha256: Option<String>,
    pub config: serde_json::Value,
    pub data_snapshot: DataSnapshot,
    pub steps_done: i64,
    pub max_steps: i64,
    pub checkpoint_dir: Option<String>,
    pub heldout_loss: Option<f64>,
    pub adapter_id: Option<i64>,
    pub error: Option<String>,
    pub started_at: String,
    pub ended_at: Option<String>,
}

/// What a candidate adapter row records.
#[derive(Debug, Clone)]
pub struct NewAdapter<'a> {
    pub run_id: i64,
    pub path: &'a str,
    pub sha256: &'a str,
    pub bytes: i64,
    pub base_sha256: Option<&'a str>,
    pub rank: i64,
    pub alpha: f64,
    pub targets: &'a [String],
    pub data_snapshot: &'a DataSnapshot,
}

const RUN_COLS: &str = "id, status, base_model, base_sha256, config, data_snapshot, steps_done, max_steps, \
     checkpoint_dir, heldout_loss, adapter_id, error, started_at, ended_at";

fn run_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<RunRow> {
    let config: String = r.get(4)?;
    let snap: String = r.get(5)?;
    Ok(RunRow {
        id: r.get(0)?,
        status: r.get(1)?,
        base_model: r.get(2)?,
        base_sha256: r.get(3)?,
        config: serde_json::from_str(&config).unwrap_or(serde_json::Value::Null),
        // A snapshot that does not parse resumes with no data and fails there, by name.
        data_snapshot: serde_json::from_str(&snap).unwrap_or_default(),
        steps_done: r.get(6)?,
        max_steps: r.get(7)?,
        checkpoint_dir: r.get(8)?,
        heldout_loss: r.get(9)?,
        adapter_id: r.get(10)?,
        error: r.get(11)?,
        started_at: r.get(12)?,
        ended_at: r.get(13)?,
    })
}

impl Store {
    /// All current training material. Documents that hold Q&A pairs (CSV/JSONL
    /// sets) contribute their pairs as chat samples, not their raw text.
    pub fn training_sources(&self) -> Result<TrainingSources> {
        self.sources_where(None)
    }

    /// The material a run's snapshot names (held-out documents included in `docs`).
    pub fn training_sources_for(&self, snap: &DataSnapshot) -> Result<TrainingSources> {
        self.sources_where(Some(snap))
    }

    fn sources_where(&self, snap: Option<&DataSnapshot>) -> Result<TrainingSources> {
        let c = self.conn();
        let keep = |ids: Option<&Vec<i64>>, id: i64| ids.is_none_or(|v| v.contains(&id));
        let doc_ids: Option<Vec<i64>> = snap.map(|s| {
            let mut v: Vec<i64> = s.train_documents.iter().chain(&s.heldout_documents).copied().collect();
            v.sort_unstable();
            v
        });
        let mut stmt = c
            .prepare(
                "SELECT d.id, d.sha256, d.name, c.text FROM documents d JOIN chunks c ON c.document_id = d.id \
                 WHERE NOT EXISTS (SELECT 1 FROM qa_pairs q WHERE q.document_id = d.id) \
                 ORDER BY d.id, c.ord",
            )
            .map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map([], |r| {
                Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?, r.get::<_, String>(2)?, r.get(3)?))
            })
            .and_then(|it| it.collect::<rusqlite::Result<Vec<(i64, String, String, String)>>>())
            .map_err(|e| self.err(e))?;
        let mut docs: Vec<DocSource> = Vec::new();
        for (id, sha256, name, text) in rows {
            if doc_ids.as_ref().is_some_and(|v| v.binary_search(&id).is_err()) {
                continue;
            }
            match docs.last_mut() {
                Some(d) if d.id == id => d.chunks.push(text),
                _ => docs.push(DocSource { id, sha256, name, chunks: vec![text] }),
            }
        }
        let mut stmt = c
            .prepare(
                "SELECT id, document_id, system, question, answer FROM qa_pairs ORDER BY document_id, ord",
            )
            .map_err(|e| self.err(e))?;
        let qa = stmt
            .query_map([], |r| {
                Ok(QaSource {
                    id: r.get(0)?,
                    document_id: r.get(1)?,
                    system: r.get(2)?,
                    question: r.get(3)?,
                    answer: r.get(4)?,
                })
            })
            .and_then(|it| it.collect::<rusqlite::Result<Vec<_>>>())
            .map_err(|e| self.err(e))?
            .into_iter()
            .filter(|q| keep(snap.map(|s| &s.qa_pairs), q.id))
            .collect();
        let mut stmt = c
            .prepare(
                "SELECT r.id, q.text, CASE r.verdict WHEN 'corrected' THEN r.correction ELSE a.text END \
                 FROM reviews r JOIN answers a ON a.id = r.answer_id JOIN questions q ON q.id = a.question_id \
                 WHERE r.id = (SELECT max(r2.id) FROM reviews r2 WHERE r2.answer_id = r.answer_id) \
                 AND ((r.verdict = 'corrected' AND r.correction IS NOT NULL AND trim(r.correction) <> '') \
                    OR r.verdict = 'approved') \
                 ORDER BY r.id",
            )
            .map_err(|e| self.err(e))?;
        let reviews = stmt
            .query_map([], |r| Ok(ReviewSource { id: r.get(0)?, question: r.get(1)?, answer: r.get(2)? }))
            .and_then(|it| it.collect::<rusqlite::Result<Vec<_>>>())
            .map_err(|e| self.err(e))?
            .into_iter()
            .filter(|rv| keep(snap.map(|s| &s.reviews), rv.id))
            .collect();
        Ok(TrainingSources { docs, qa, reviews })
    }

    /// Open a run row in state 'running'.
    pub fn create_run(
        &mut self,
        base_model: &str,
        base_sha256: Option<&str>,
        config: &serde_json::Value,
        snapshot: &DataSnapshot,
        max_steps: usize,
    ) -> Result<i64> {
        let err = self.sql_err();
        let snap = serde_json::to_string(snapshot).unwrap_or_else(|_| "{}".into());
        self.write(|tx| {
            tx.execute(
                "INSERT INTO runs (status, base_model, base_sha256, config, data_snapshot, max_steps, active_at) \
                 VALUES ('running', ?1, ?2, ?3, ?4, ?5, strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))",
                params![base_model, base_sha256, config.to_string(), snap, max_steps as i64],
            )
            .map_err(&err)?;
            Ok(tx.last_insert_rowid())
        })
    }

    pub fn set_run_checkpoint_dir(&mut self, run_id: i64, dir: &str) -> Result<()> {
        let err = self.sql_err();
        self.write(|tx| {
            tx.execute("UPDATE runs SET checkpoint_dir = ?2 WHERE id = ?1", params![run_id, dir])
                .map_err(&err)?;
            Ok(())
        })
    }

    /// Replace the run's config JSON (the plan may change on resume or back-off).
    pub fn set_run_config(&mut self, run_id: i64, config: &serde_json::Value) -> Result<()> {
        let err = self.sql_err();
        self.write(|tx| {
            tx.execute("UPDATE runs SET config = ?2 WHERE id = ?1", params![run_id, config.to_string()])
                .map_err(&err)?;
            Ok(())
        })
    }

    /// Set a run's status; `ended` stamps `ended_at` (cleared otherwise).
    pub fn set_run_status(
        &mut self,
        run_id: i64,
        status: &str,
        error: Option<&str>,
        ended: bool,
    ) -> Result<()> {
        let err = self.sql_err();
        self.write(|tx| {
            tx.execute(
                "UPDATE runs SET status = ?2, error = ?3, active_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now'), \
                 ended_at = CASE WHEN ?4 THEN strftime('%Y-%m-%dT%H:%M:%fZ', 'now') ELSE NULL END \
                 WHERE id = ?1",
                params![run_id, status, error, ended],
            )
            .map_err(&err)?;
            Ok(())
        })
    }

    /// Record one optimizer step (replacing a row a crashed attempt left for
    /// the same step) and advance `steps_done`.
    pub fn record_step(&mut self, run_id: i64, s: &StepRow) -> Result<()> {
        let err = self.sql_err();
        self.write(|tx| {
            tx.execute(
                "INSERT OR REPLACE INTO run_steps (run_id, step, loss, lr, grad_norm, tokens_per_s, peak_mem_mib) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                params![run_id, s.step, s.loss, s.lr, s.grad_norm, s.tokens_per_s, s.peak_mem_mib],
            )
            .map_err(&err)?;
            tx.execute(
                "UPDATE runs SET steps_done = max(steps_done, ?2), \
                 active_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now') WHERE id = ?1",
                params![run_id, s.step],
            )
                .map_err(&err)?;
            Ok(())
        })
    }

    /// Forget steps after `step` (a resumed run redoes them from its checkpoint).
    pub fn truncate_steps(&mut self, run_id: i64, step: i64) -> Result<()> {
        let err = self.sql_err();
        self.write(|tx| {
            tx.execute("DELETE FROM run_steps WHERE run_id = ?1 AND step > ?2", params![run_id, step])
                .map_err(&err)?;
            tx.execute("UPDATE runs SET steps_done = ?2 WHERE id = ?1", params![run_id, step])
                .map_err(&err)?;
            Ok(())
        })
    }

    pub fn run_steps(&self, run_id: i64) -> Result<Vec<StepRow>> {
        let mut stmt = self
            .conn()
            .prepare(
                "SELECT step, loss, lr, grad_norm, tokens_per_s, peak_mem_mib FROM run_steps \
                 WHERE run_id = ?1 ORDER BY step",
            )
            .map_err(|e| self.err(e))?;
        stmt.query_map([run_id], |r| {
            Ok(StepRow {
                step: r.get(0)?,
                loss: r.get(1)?,
                lr: r.get(2)?,
                grad_norm: r.get(3)?,
                tokens_per_s: r.get(4)?,
                peak_mem_mib: r.get(5)?,
            })
        })
        .and_then(|it| it.collect::<rusqlite::Result<Vec<_>>>())
        .map_err(|e| self.err(e))
    }

    pub fn run(&self, run_id: i64) -> Result<Option<RunRow>> {
        self.conn()
            .query_row(&format!("SELECT {RUN_COLS} FROM runs WHERE id = ?1"), [run_id], run_row)
            .optional()
            .map_err(|e| self.err(e))
    }

    /// The newest run that can be continued: paused, interrupted, or left
    /// 'running' by a process that died (the caller holds the writer lock, so
    /// no other trainer is alive).
    pub fn latest_resumable_run(&self) -> Result<Option<RunRow>> {
        self.conn()
            .query_row(
                &format!(
                    "SELECT {RUN_COLS} FROM runs WHERE status IN ('paused', 'interrupted', 'running') \
                     ORDER BY id DESC LIMIT 1"
                ),
                [],
                run_row,
            )
            .optional()
            .map_err(|e| self.err(e))
    }

    /// Runs left 'running' by a dead process become 'interrupted'. Returns how many.
    pub fn mark_stale_runs_interrupted(&mut self) -> Result<usize> {
        let err = self.sql_err();
        self.write(|tx| {
            tx.execute("UPDATE runs SET status = 'interrupted' WHERE status = 'running'", []).map_err(&err)
        })
    }

    /// Close a finished round: held-out loss, its adapter, 'done'; reviews it
    /// learned from are marked as used by this run (if no earlier run was).
    pub fn finish_run(
        &mut self,
        run_id: i64,
        heldout_loss: Option<f64>,
        adapter_id: Option<i64>,
        review_ids: &[i64],
    ) -> Result<()> {
        let err = self.sql_err();
        self.write(|tx| {
            tx.execute(
                "UPDATE runs SET status = 'done', heldout_loss = ?2, adapter_id = ?3, error = NULL, \
                 ended_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now'), \
                 active_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now') WHERE id = ?1",
                params![run_id, heldout_loss, adapter_id],
            )
            .map_err(&err)?;
            let mut stmt = tx
                .prepare("UPDATE reviews SET used_in_run = ?1 WHERE id = ?2 AND used_in_run IS NULL")
                .map_err(&err)?;
            for id in review_ids {
                stmt.execute(params![run_id, id]).map_err(&err)?;
            }
            Ok(())
        })
    }

    /// Register a trained adapter as a 'candidate' for the eval gate.
    pub fn insert_candidate_adapter(&mut self, a: &NewAdapter<'_>) -> Result<i64> {
        let err = self.sql_err();
        let targets = serde_json::to_string(a.targets).unwrap_or_else(|_| "[]".into());
        let snap = serde_json::to_string(a.data_snapshot).unwrap_or_else(|_| "{}".into());
        self.write(|tx| {
            // The parent is the adapter the operators were using when this one was
            // trained: the one it is gated against and replaces when promoted.
            tx.execute(
                "INSERT INTO adapters (run_id, parent_id, state, path, sha256, bytes, base_sha256, rank, alpha, targets, \
                 data_snapshot) VALUES (?1, (SELECT id FROM adapters WHERE state = 'active'), 'candidate', ?2, ?3, ?4, ?5, \
                 ?6, ?7, ?8, ?9)",
                params![a.run_id, a.path, a.sha256, a.bytes, a.base_sha256, a.rank, a.alpha, targets, snap],
            )
            .map_err(&err)?;
            Ok(tx.last_insert_rowid())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seeded() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Store::open(&dir.path().join("w.db")).unwrap();
        s.write(|tx| {
            tx.execute_batch(
                "INSERT INTO documents (id, sha256, name, kind, spool_path, bytes, text) VALUES
                   (1, 'aa', 'manual.txt', 'txt', 'spool/aa', 10, 'x'),
                   (2, 'bb', 'faq.csv', 'csv', 'spool/bb', 10, 'y'),
                   (3, 'cc', 'safety.md', 'md', 'spool/cc', 10, 'z');
                 INSERT INTO chunks (document_id, ord, text, search_text, tokens) VALUES
                   (1, 1, 'second', 'second', 1), (1, 0, 'first', 'first', 1),
                   (2, 0, 'q,a', 'q,a', 1), (3, 0, 'ة ى', 'ه ي', 2);
                 INSERT INTO qa_pairs (id, document_id, ord, question, answer) VALUES (7, 2, 0, 'Q?', 'A.');
                 INSERT INTO questions (id, text, origin) VALUES (1, 'ask1', 'cli'), (2, 'ask2', 'cli'), (3, 'ask3', 'cli');
                 INSERT INTO answers (id, question_id, text, sources) VALUES (1, 1, 'wrong', '[]'), (2, 2, 'right', '[]'), (3, 3, 'bad', '[]');
                 INSERT INTO reviews (id, answer_id, verdict, correction) VALUES
                   (1, 1, 'corrected', 'fixed'), (2, 2, 'approved', NULL), (3, 3, 'rejected', NULL);",
            )
            .map_err(s_err)
        })
        .unwrap();
        (dir, s)
    }

    fn s_err(e: rusqlite::Error) -> crate::store::StoreError {
        crate::store::StoreError::Sqlite { path: "w.db".into(), source: e }
    }

    #[test]
    fn sources_keep_train_form_order_and_review_verdicts() {
        let (_d, s) = seeded();
        let src = s.training_sources().unwrap();
        let names: Vec<&str> = src.docs.iter().map(|d| d.name.as_str()).collect();
        assert_eq!(names, ["manual.txt", "safety.md"], "Q&A sets are not raw text");
        assert_eq!(src.docs[0].chunks, ["first", "second"]);
        assert_eq!(src.docs[1].chunks, ["ة ى"]);
        assert_eq!(src.qa.len(), 1);
        let rv: Vec<(&str, &str)> =
            src.reviews.iter().map(|r| (r.question.as_str(), r.answer.as_str())).collect();
        assert_eq!(rv, [("ask1", "fixed"), ("ask2", "right")]);
    }

    #[test]
    fn snapshot_pins_the_material_of_a_run() {
        let (_d, mut s) = seeded();
        let snap = DataSnapshot {
            train_documents: vec![3],
            heldout_documents: vec![],
            qa_pairs: vec![],
            reviews: vec![2],
        };
        let src = s.training_sources_for(&snap).unwrap();
        assert_eq!(src.docs.len(), 1);
        assert!(src.qa.is_empty());
        assert_eq!(src.reviews.len(), 1);

        let id = s.create_run("m.gguf", Some("ff"), &serde_json::json!({"r": 16}), &snap, 10).unwrap();
        let step = StepRow {
            step: 1,
            loss: 2.5,
            lr: 1e-4,
            grad_norm: Some(0.5),
            tokens_per_s: None,
            peak_mem_mib: None,
        };
        s.record_step(id, &step).unwrap();
        s.record_step(id, &StepRow { step: 2, ..step.clone() }).unwrap();
        s.truncate_steps(id, 1).unwrap();
        assert_eq!(s.run_steps(id).unwrap(), vec![step]);
        assert_eq!(s.mark_stale_runs_interrupted().unwrap(), 1);
        let r = s.latest_resumable_run().unwrap().unwrap();
        assert_eq!((r.id, r.status.as_str(), r.steps_done), (id, "interrupted", 1));
        assert_eq!(r.data_snapshot, snap);
        let targets = vec!["q_proj".to_string()];
        let aid = s
            .insert_candidate_adapter(&NewAdapter {
                run_id: id,
                path: "adapters/run-1",
                sha256: "00",
                bytes: 4,
                base_sha256: Some("ff"),
                rank: 16,
                alpha: 32.0,
                targets: &targets,
                data_snapshot: &snap,
            })
            .unwrap();
        s.finish_run(id, Some(1.25), Some(aid), &[1, 2]).unwrap();
        let r = s.run(id).unwrap().unwrap();
        assert_eq!((r.status.as_str(), r.adapter_id, r.heldout_loss), ("done", Some(aid), Some(1.25)));
        assert!(s.latest_resumable_run().unwrap().is_none());
        let used: i64 = s
            .conn()
            .query_row("SELECT count(*) FROM reviews WHERE used_in_run = ?1", [id], |r| r.get(0))
            .unwrap();
        assert_eq!(used, 2);

        // Lineage: a later candidate's parent is the adapter active when it was made.
        s.conn().execute("UPDATE adapters SET state = 'active' WHERE id = ?1", [aid]).unwrap();
        let next = s
            .insert_candidate_adapter(&NewAdapter {
                run_id: id,
                path: "adapters/run-2",
                sha256: "01",
                bytes: 4,
                base_sha256: Some("ff"),
                rank: 16,
                alpha: 32.0,
                targets: &targets,
                data_snapshot: &snap,
            })
            .unwrap();
        let parents: Vec<Option<i64>> = [aid, next]
            .iter()
            .map(|a| {
                s.conn().query_row("SELECT parent_id FROM adapters WHERE id = ?1", [a], |r| r.get(0)).unwrap()
            })
            .collect();
        assert_eq!(parents, vec![None, Some(aid)]);
    }
}
