//! Typed writes over `questions` and `answers`: an operator's question and
//! the answer given to it, with the sources the answer was built on.
//!
//! The sources arrive as any serializable list and are kept as JSON: this
//! module records what answering produced, it does not know how answers are
//! made.

use rusqlite::params;
use serde::Serialize;

use super::{Result, Store};

impl Store {
    /// Record a question and its answer in one transaction; returns
    /// (question id, answer id).
    #[allow(clippy::too_many_arguments)]
    pub fn record_answer<S: Serialize>(
        &mut self,
        question: &str,
        origin: &str,
        adapter_id: Option<i64>,
        text: &str,
        sources: &[S],
        tokens: usize,
        latency_ms: u64,
    ) -> Result<(i64, i64)> {
        let err = self.sql_err();
        let sources = serde_json::to_string(sources).unwrap_or_else(|_| "[]".into());
        self.write(|tx| {
            tx.execute("INSERT INTO questions (text, origin) VALUES (?1, ?2)", params![question, origin])
                .map_err(&err)?;
            let qid = tx.last_insert_rowid();
            tx.execute(
                "INSERT INTO answers (question_id, adapter_id, text, sources, tokens, latency_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![qid, adapter_id, text, sources, tokens as i64, latency_ms as i64],
            )
            .map_err(&err)?;
            Ok((qid, tx.last_insert_rowid()))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Serialize)]
    struct Src {
        chunk_id: i64,
        name: &'static str,
    }

    #[test]
    fn recorded_answer_round_trips() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(&dir.path().join("warsha.db")).unwrap();
        let src = vec![Src { chunk_id: 1, name: "a.md" }];
        // Sources point at chunks that do not exist here: the JSON column has no foreign key.
        let (q, a) = store.record_answer("ما هو E-17؟", "cli", None, "Low oil.", &src, 3, 120).unwrap();
        let (text, sources): (String, String) = store
            .conn()
            .query_row("SELECT text, sources FROM answers WHERE id = ?1 AND question_id = ?2", [a, q], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .unwrap();
        assert_eq!(text, "Low oil.");
        assert!(sources.contains("a.md"));
    }
}
