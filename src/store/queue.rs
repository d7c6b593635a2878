//! The training loop's pending work, read from rows (the store is the
//! queue): an adapter trained but never gated, the newest round and when it
//! last did anything, and the material that arrived since the last round
//! that finished — documents, Q&A pairs and reviews it did not learn from.
//!
//! Nothing here decides what to do about it; the loop and the scheduler do.

use rusqlite::OptionalExtension;
use serde::Serialize;

use super::adapters::AdapterRow;
use super::{DataSnapshot, Result, Store};

/// The newest round, as the scheduler sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LastRound {
    pub run_id: i64,
    /// `running`, `paused`, `done`, `failed` or `interrupted`.
    pub status: String,
    /// Unix seconds of its start.
    pub started_unix: i64,
    /// Unix seconds of the last time it started, stepped, paused or ended.
    pub active_unix: i64,
}

/// Material a new round would learn from that the last finished round did not.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct NewMaterial {
    pub documents: usize,
    pub qa_pairs: usize,
    /// Approved or corrected answers (the review in force) no round has used.
    pub reviews: usize,
}

impl NewMaterial {
    pub fn any(&self) -> bool {
        self.documents + self.qa_pairs + self.reviews > 0
    }
}

impl Store {
    /// Adapters a round trained and registered that were never gated (a
    /// process that died between training and the gate leaves one), oldest first.
    pub fn ungated_candidates(&self) -> Result<Vec<AdapterRow>> {
        Ok(self.adapters()?.into_iter().rev().filter(|a| a.state == "candidate").collect())
    }

    /// The newest round of all, whatever its state.
    pub fn last_round(&self) -> Result<Option<LastRound>> {
        self.conn()
            .query_row(
                "SELECT id, status, CAST(strftime('%s', started_at) AS INTEGER), \
                 CAST(strftime('%s', coalesce(active_at, ended_at, started_at)) AS INTEGER) \
                 FROM runs ORDER BY id DESC LIMIT 1",
                [],
                |r| {
                    Ok(LastRound {
                        run_id: r.get(0)?,
                        status: r.get(1)?,
                        started_unix: r.get::<_, Option<i64>>(2)?.unwrap_or(0),
                        active_unix: r.get::<_, Option<i64>>(3)?.unwrap_or(0),
                    })
                },
            )
            .optional()
            .map_err(|e| self.err(e))
    }

    /// What arrived since the newest finished round took its snapshot: every
    /// document with text (Q&A sets count by their pairs), pair and
    /// trainable review it did not include. With no finished round, all of it.
    pub fn new_material(&self) -> Result<NewMaterial> {
        let snap: Option<String> = self
            .conn()
            .query_row(
                "SELECT data_snapshot FROM runs WHERE status = 'done' ORDER BY id DESC LIMIT 1",
                [],
                |r| r.get(0),
            )
            .optional()
            .map_err(|e| self.err(e))?;
        let snap: DataSnapshot = snap.and_then(|s| serde_json::from_str(&s).ok()).unwrap_or_default();
        let ids = |sql: &str| -> Result<Vec<i64>> {
            let mut stmt = self.conn().prepare(sql).map_err(|e| self.err(e))?;
            let v = stmt.query_map([], |r| r.get(0)).and_then(|it| it.collect()).map_err(|e| self.err(e))?;
            Ok(v)
        };
        let docs = ids(
            "SELECT d.id FROM documents d WHERE EXISTS (SELECT 1 FROM chunks c WHERE c.document_id = d.id) \
             AND NOT EXISTS (SELECT 1 FROM qa_pairs q WHERE q.document_id = d.id)",
        )?;
        let qa = ids("SELECT id FROM qa_pairs")?;
        let reviews = ids(
            "SELECT r.id FROM reviews r WHERE r.used_in_run IS NULL \
             AND r.id = (SELECT max(r2.id) FROM reviews r2 WHERE r2.answer_id = r.answer_id) \
             AND (r.verdict = 'approved' OR (r.verdict = 'corrected' AND trim(coalesce(r.correction, '')) <> ''))",
        )?;
        let seen_docs: Vec<i64> =
            snap.train_documents.iter().chain(&snap.heldout_documents).copied().collect();
        let new = |all: &[i64], seen: &[i64]| all.iter().filter(|id| !seen.contains(id)).count();
        Ok(NewMaterial {
            documents: new(&docs, &seen_docs),
            qa_pairs: new(&qa, &snap.qa_pairs),
            reviews: new(&reviews, &snap.reviews),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::reviews::{NewReview, ReviewAction};
    use crate::store::NewAdapter;

    #[test]
    fn new_material_counts_what_the_last_finished_round_did_not_see() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Store::open(&dir.path().join("w.db")).unwrap();
        assert_eq!(s.last_round().unwrap(), None);
        assert!(!s.new_material().unwrap().any(), "an empty store has nothing to learn");
        s.record_answer::<serde_json::Value>("q", "cli", None, "a", &[], 1, 1).unwrap();
        let r = NewReview {
            answer_id: 1,
            action: ReviewAction::Approve,
            note: None,
            reviewer: None,
            reviewer_uid: None,
        };
        let rid = s.record_review(&r).unwrap().review.id;
        assert_eq!(s.new_material().unwrap(), NewMaterial { reviews: 1, ..Default::default() });

        let snap = DataSnapshot { reviews: vec![rid], ..Default::default() };
        let run = s.create_run("m", None, &serde_json::json!({}), &snap, 1).unwrap();
        let last = s.last_round().unwrap().unwrap();
        assert_eq!((last.run_id, last.status.as_str()), (run, "running"));
        assert!(last.active_unix >= last.started_unix && last.started_unix > 1_700_000_000);
        // A round still running has not used it yet.
        assert_eq!(s.new_material().unwrap().reviews, 1);
        let targets = vec!["q_proj".to_string()];
        let aid = s
            .insert_candidate_adapter(&NewAdapter {
                run_id: run,
                path: "adapters/run-1",
                sha256: "00",
                bytes: 1,
                base_sha256: None,
                rank: 1,
                alpha: 1.0,
                targets: &targets,
                data_snapshot: &snap,
            })
            .unwrap();
        s.finish_run(run, None, Some(aid), &snap.reviews).unwrap();
        assert!(!s.new_material().unwrap().any());
        assert_eq!(s.ungated_candidates().unwrap().iter().map(|a| a.id).collect::<Vec<_>>(), [aid]);
        // A correction of the same answer is new material again.
        let c = NewReview { action: ReviewAction::Correct { text: "b".into() }, ..r };
        s.record_review(&c).unwrap();
        assert_eq!(s.new_material().unwrap().reviews, 1);
    }
}
