//! Typed queries over the `evals` table: one row per evaluation of one
//! adapter (`adapter_id` NULL = the bare base model), tied to the eval set's
//! hash, the base model's hash and where it ran (device, dtype, quant), with
//! the metric set as JSON.

use rusqlite::{params, OptionalExtension, Row};
use serde::{Deserialize, Serialize};

use super::{Result, Store};

/// Where an evaluation ran, by name: device ("cpu", "cuda"), compute dtype
/// ("f32", "bf16", "f16") and the load-time quantization ("nf4", "q4k").
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EvalPlacement {
    pub device: String,
    pub dtype: String,
    pub quant: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvalRow {
    pub id: i64,
    pub adapter_id: Option<i64>,
    pub base_sha256: Option<String>,
    /// None for evaluations recorded before placements were.
    pub placement: Option<EvalPlacement>,
    pub eval_set_hash: String,
    pub metrics: serde_json::Value,
    pub created_at: String,
}

fn from_row(row: &Row<'_>) -> rusqlite::Result<EvalRow> {
    let m: String = row.get(4)?;
    Ok(EvalRow {
        id: row.get(0)?,
        adapter_id: row.get(1)?,
        base_sha256: row.get(2)?,
        eval_set_hash: row.get(3)?,
        metrics: serde_json::from_str(&m).unwrap_or(serde_json::Value::Null),
        created_at: row.get(5)?,
        placement: match (row.get(6)?, row.get(7)?, row.get(8)?) {
            (Some(device), Some(dtype), Some(quant)) => Some(EvalPlacement { device, dtype, quant }),
            _ => None,
        },
    })
}

const COLUMNS: &str = "id, adapter_id, base_sha256, eval_set_hash, metrics, created_at, device, dtype, quant";

impl Store {
    /// Record one evaluation; returns the row id.
    pub fn insert_eval(
        &mut self,
        adapter_id: Option<i64>,
        base_sha256: Option<&str>,
        placement: &EvalPlacement,
        eval_set_hash: &str,
        metrics: &serde_json::Value,
    ) -> Result<i64> {
        let err = self.sql_err();
        self.write(|tx| {
            tx.execute(
                "INSERT INTO evals (adapter_id, base_sha256, eval_set_hash, metrics, device, dtype, quant) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                params![
                    adapter_id,
                    base_sha256,
                    eval_set_hash,
                    metrics.to_string(),
                    placement.device,
                    placement.dtype,
                    placement.quant
                ],
            )
            .map_err(&err)?;
            Ok(tx.last_insert_rowid())
        })
    }

    /// The newest evaluation of `adapter_id` (None = base) on this eval set
    /// and base, run on this placement.
    pub fn latest_eval(
        &self,
        adapter_id: Option<i64>,
        base_sha256: Option<&str>,
        placement: &EvalPlacement,
        eval_set_hash: &str,
    ) -> Result<Option<EvalRow>> {
        self.conn()
            .query_row(
                &format!(
                    "SELECT {COLUMNS} FROM evals WHERE adapter_id IS ?1 AND base_sha256 IS ?2 \
                     AND eval_set_hash = ?3 AND device = ?4 AND dtype = ?5 AND quant = ?6 \
                     ORDER BY id DESC LIMIT 1"
                ),
                params![
                    adapter_id,
                    base_sha256,
                    eval_set_hash,
                    placement.device,
                    placement.dtype,
                    placement.quant
                ],
                from_row,
            )
            .optional()
            .map_err(|e| self.err(e))
    }

    /// Every evaluation, newest first.
    pub fn evals(&self) -> Result<Vec<EvalRow>> {
        let mut stmt = self
            .conn()
            .prepare(&format!("SELECT {COLUMNS} FROM evals ORDER BY id DESC"))
            .map_err(|e| self.err(e))?;
        let rows = stmt.query_map([], from_row).and_then(|it| it.collect()).map_err(|e| self.err(e))?;
        Ok(rows)
    }
}

/// A reviewed answer that can serve as a reference (see `eval::suite::ReviewItem`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReviewRef {
    pub review_id: i64,
    pub question: String,
    pub answer: String,
}

impl Store {
    /// Approved answers and corrections that no training run has used yet
    /// (only an answer's newest review counts): the reference is the
    /// correction when there is one, else the approved answer.
    pub fn unused_reviews(&self) -> Result<Vec<ReviewRef>> {
        let mut stmt = self
            .conn()
            .prepare(
                "SELECT r.id, q.text, CASE WHEN r.verdict = 'corrected' THEN r.correction ELSE a.text END \
                 FROM reviews r JOIN answers a ON a.id = r.answer_id JOIN questions q ON q.id = a.question_id \
                 WHERE r.verdict IN ('approved', 'corrected') AND r.used_in_run IS NULL \
                 AND r.id = (SELECT max(r2.id) FROM reviews r2 WHERE r2.answer_id = r.answer_id) \
                 AND (r.verdict = 'approved' OR (r.correction IS NOT NULL AND trim(r.correction) != '')) \
                 ORDER BY r.id",
            )
            .map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map([], |r| Ok(ReviewRef { review_id: r.get(0)?, question: r.get(1)?, answer: r.get(2)? }))
            .and_then(|it| it.collect())
            .map_err(|e| self.err(e))?;
        Ok(rows)
    }

    /// (id, sha256, train-form text) of every document, by id.
    pub fn document_texts(&self) -> Result<Vec<(i64, String, String)>> {
        let mut stmt = self
            .conn()
            .prepare("SELECT id, sha256, text FROM documents ORDER BY id")
            .map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .and_then(|it| it.collect())
            .map_err(|e| self.err(e))?;
        Ok(rows)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn evals_round_trip_and_latest_matches_null_adapter_and_placement() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Store::open(&dir.path().join("w.db")).unwrap();
        let cpu = EvalPlacement { device: "cpu".into(), dtype: "f32".into(), quant: "nf4".into() };
        let gpu = EvalPlacement { device: "cuda".into(), dtype: "bf16".into(), quant: "nf4".into() };
        let m = serde_json::json!({"score": 0.5});
        s.insert_eval(None, Some("b"), &cpu, "h", &m).unwrap();
        let id2 = s.insert_eval(None, Some("b"), &cpu, "h", &serde_json::json!({"score": 0.6})).unwrap();
        let got = s.latest_eval(None, Some("b"), &cpu, "h").unwrap().unwrap();
        assert_eq!(got.id, id2);
        assert_eq!(got.adapter_id, None);
        assert_eq!(got.placement.as_ref(), Some(&cpu));
        assert!(s.latest_eval(None, Some("other"), &cpu, "h").unwrap().is_none());
        assert!(s.latest_eval(Some(1), Some("b"), &cpu, "h").unwrap().is_none());
        assert!(
            s.latest_eval(None, Some("b"), &gpu, "h").unwrap().is_none(),
            "measured on another placement"
        );
        assert_eq!(s.evals().unwrap().len(), 2);
    }

    #[test]
    fn evaluations_from_before_placements_migrate_and_are_never_reused() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("w.db");
        {
            // A database at schema version 1 with one evaluation in it.
            let c = rusqlite::Connection::open(&db).unwrap();
            c.execute_batch(include_str!("schema.sql")).unwrap();
            c.execute_batch(
                "INSERT INTO evals (adapter_id, base_sha256, eval_set_hash, metrics) VALUES (NULL, 'b', 'h', '{}');
                 PRAGMA user_version = 1;",
            )
            .unwrap();
        }
        let s = Store::open(&db).unwrap();
        assert_eq!(s.schema_version().unwrap(), super::super::schema_version_latest());
        let rows = s.evals().unwrap();
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0].placement, None);
        let cpu = EvalPlacement { device: "cpu".into(), dtype: "f32".into(), quant: "nf4".into() };
        assert!(s.latest_eval(None, Some("b"), &cpu, "h").unwrap().is_none());
    }

    #[test]
    fn unused_reviews_take_corrections_and_skip_used_ones() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Store::open(&dir.path().join("w.db")).unwrap();
        let err = s.sql_err();
        s.write(|tx| {
            tx.execute_batch(
                "INSERT INTO questions (id, text, origin) VALUES (1, 'q1', 'cli'), (2, 'q2', 'cli'), (3, 'q3', 'cli');
                 INSERT INTO answers (id, question_id, text, sources) VALUES (1, 1, 'a1', '[]'), (2, 2, 'a2', '[]'), (3, 3, 'a3', '[]');
                 INSERT INTO runs (id, status, base_model, config, data_snapshot, max_steps) VALUES (9, 'done', 'm', '{}', '{}', 1);
                 INSERT INTO reviews (answer_id, verdict, correction) VALUES (1, 'approved', NULL), (2, 'corrected', 'fixed');
                 INSERT INTO reviews (answer_id, verdict, correction, used_in_run) VALUES (3, 'approved', NULL, 9);",
            )
            .map_err(&err)
        })
        .unwrap();
        let r = s.unused_reviews().unwrap();
        let got: Vec<(&str, &str)> = r.iter().map(|x| (x.question.as_str(), x.answer.as_str())).collect();
        assert_eq!(got, vec![("q1", "a1"), ("q2", "fixed")]);
    }
}
