//! Typed queries over `reviews`: an operator's verdict on a recorded answer
//! — approved, rejected (with its reason) or corrected (with the right
//! answer) — and the review queue of answers nobody has judged yet.
//!
//! Reviews append: reviewing an answer again adds a row, and the newest
//! review of an answer is the one in force (training and evaluation read
//! only that one; the older rows stay as the record of who said what). An
//! approved answer's text, or a correction, becomes a training target of
//! the next round and, until a round has used it, eval material; a rejected
//! answer is kept with its reason and is neither.
//!
//! This module checks what the store can check (the answer exists, the
//! text is not empty); who may review is the caller's rule.

use rusqlite::{params, OptionalExtension};
use serde::{Deserialize, Serialize};

use super::{Store, StoreError};

/// What the operator said about an answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "verdict", rename_all = "snake_case")]
pub enum ReviewAction {
    /// The answer is right as given: it becomes a training target.
    Approve,
    /// The answer is wrong; `reason` says why. Never a training target.
    Reject { reason: String },
    /// The answer is wrong and `text` is the right one: the correction is the target.
    Correct { text: String },
}

impl ReviewAction {
    /// The `reviews.verdict` value.
    pub fn verdict(&self) -> &'static str {
        match self {
            ReviewAction::Approve => "approved",
            ReviewAction::Reject { .. } => "rejected",
            ReviewAction::Correct { .. } => "corrected",
        }
    }
}

/// One review to record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewReview {
    pub answer_id: i64,
    pub action: ReviewAction,
    /// A remark kept with the review (for a rejection, kept after the reason).
    pub note: Option<String>,
    /// The operator's name as they gave it (floor terminals share a login).
    pub reviewer: Option<String>,
    /// The uid of the client that sent the review (from the socket's peer credentials).
    pub reviewer_uid: Option<u32>,
}

impl NewReview {
    /// A review from what an operator typed: `verb` is `approve`, `reject` or
    /// `correct`; `text` is the correction (correct) or the reason (reject,
    /// which may give it as `note` instead). The CLI and the socket both build
    /// reviews here, so they refuse the same things the same way.
    pub fn from_request(
        answer_id: i64,
        verb: &str,
        text: Option<String>,
        note: Option<String>,
        reviewer: Option<String>,
        reviewer_uid: Option<u32>,
    ) -> Result<Self, ReviewError> {
        let blank = |t: &Option<String>| t.as_deref().is_none_or(|t| t.trim().is_empty());
        let (action, note) = match verb {
            "approve" | "approved" => {
                if !blank(&text) {
                    return Err(ReviewError::UnexpectedText);
                }
                (ReviewAction::Approve, note)
            }
            "correct" | "corrected" => {
                let text = text.filter(|t| !t.trim().is_empty()).ok_or(ReviewError::EmptyCorrection)?;
                (ReviewAction::Correct { text }, note)
            }
            "reject" | "rejected" => match (text.filter(|t| !t.trim().is_empty()), note) {
                (Some(reason), note) => (ReviewAction::Reject { reason }, note),
                (None, Some(reason)) if !reason.trim().is_empty() => (ReviewAction::Reject { reason }, None),
                _ => return Err(ReviewError::EmptyReason),
            },
            other => return Err(ReviewError::UnknownVerdict(other.to_string())),
        };
        Ok(NewReview { answer_id, action, note, reviewer, reviewer_uid })
    }
}

/// A `reviews` row.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReviewRow {
    pub id: i64,
    pub answer_id: i64,
    /// `approved`, `rejected` or `corrected`.
    pub verdict: String,
    pub correction: Option<String>,
    pub note: Option<String>,
    pub reviewer: Option<String>,
    pub reviewer_uid: Option<u32>,
    /// The round that learned from it (None: not used yet).
    pub used_in_run: Option<i64>,
    pub created_at: String,
}

/// What [`Store::record_review`] returns: the new row and the review it replaced in force.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Recorded {
    pub review: ReviewRow,
    /// The id of the answer's earlier review in force, if there was one.
    pub supersedes: Option<i64>,
}

#[derive(Debug, thiserror::Error)]
pub enum ReviewError {
    #[error("no answer with id {0}")]
    UnknownAnswer(i64),
    #[error("a correction needs the right answer's text")]
    EmptyCorrection,
    #[error("a rejection needs a reason")]
    EmptyReason,
    #[error("an approval takes no text (a remark goes in the note)")]
    UnexpectedText,
    #[error("unknown verdict {0:?}: approve, reject or correct")]
    UnknownVerdict(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Which answers the review queue shows.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueFilter {
    pub adapter: AdapterFilter,
    /// Only answers given without any retrieved source (the riskiest ones).
    pub no_source: bool,
    /// At most this many (0: no limit).
    pub limit: usize,
}

/// The adapter an answer was given with.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AdapterFilter {
    #[default]
    Any,
    /// The bare base model answered.
    Base,
    Id(i64),
}

/// An answer waiting for a review.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QueueItem {
    pub answer_id: i64,
    pub question_id: i64,
    pub question: String,
    pub answer: String,
    pub adapter_id: Option<i64>,
    /// The sources as recorded with the answer (a JSON list).
    pub sources: serde_json::Value,
    pub origin: String,
    pub created_at: String,
}

const COLUMNS: &str =
    "id, answer_id, verdict, correction, note, reviewer, reviewer_uid, used_in_run, created_at";

fn from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<ReviewRow> {
    Ok(ReviewRow {
        id: r.get(0)?,
        answer_id: r.get(1)?,
        verdict: r.get(2)?,
        correction: r.get(3)?,
        note: r.get(4)?,
        reviewer: r.get(5)?,
        reviewer_uid: r.get(6)?,
        used_in_run: r.get(7)?,
        created_at: r.get(8)?,
    })
}

fn non_empty(s: Option<&str>) -> Option<String> {
    s.map(str::trim).filter(|s| !s.is_empty()).map(str::to_string)
}

impl Store {
    /// Record a review of an answer (appended; it is the answer's review in
    /// force from now on). Checks that the answer exists and that a
    /// correction or a rejection's reason is not blank; text is kept as the
    /// operator typed it, trimmed at the ends.
    pub fn record_review(&mut self, r: &NewReview) -> Result<Recorded, ReviewError> {
        let note = non_empty(r.note.as_deref());
        let (correction, note) = match &r.action {
            ReviewAction::Approve => (None, note),
            ReviewAction::Correct { text } => {
                (Some(non_empty(Some(text)).ok_or(ReviewError::EmptyCorrection)?), note)
            }
            ReviewAction::Reject { reason } => {
                let reason = non_empty(Some(reason)).ok_or(ReviewError::EmptyReason)?;
                (
                    None,
                    Some(match note {
                        Some(n) => format!("{reason}\n{n}"),
                        None => reason,
                    }),
                )
            }
        };
        let reviewer = non_empty(r.reviewer.as_deref());
        let err = self.sql_err();
        let id = self.write(|tx| {
            let exists: bool = tx
                .query_row("SELECT EXISTS (SELECT 1 FROM answers WHERE id = ?1)", [r.answer_id], |row| {
                    row.get(0)
                })
                .map_err(&err)?;
            if !exists {
                return Err(ReviewError::UnknownAnswer(r.answer_id));
            }
            let before: Option<i64> = tx
                .query_row("SELECT max(id) FROM reviews WHERE answer_id = ?1", [r.answer_id], |row| {
                    row.get(0)
                })
                .map_err(&err)?;
            tx.execute(
                "INSERT INTO reviews (answer_id, verdict, correction, note, reviewer, reviewer_uid) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                params![r.answer_id, r.action.verdict(), correction, note, reviewer, r.reviewer_uid],
            )
            .map_err(&err)?;
            Ok((tx.last_insert_rowid(), before))
        })?;
        let review = self.review(id.0)?.ok_or(ReviewError::UnknownAnswer(r.answer_id))?;
        Ok(Recorded { review, supersedes: id.1 })
    }

    pub fn review(&self, id: i64) -> Result<Option<ReviewRow>, StoreError> {
        self.conn()
            .query_row(&format!("SELECT {COLUMNS} FROM reviews WHERE id = ?1"), [id], from_row)
            .optional()
            .map_err(|e| self.err(e))
    }

    /// Every review of an answer, oldest first (the last is in force).
    pub fn reviews_of(&self, answer_id: i64) -> Result<Vec<ReviewRow>, StoreError> {
        let mut stmt = self
            .conn()
            .prepare(&format!("SELECT {COLUMNS} FROM reviews WHERE answer_id = ?1 ORDER BY id"))
            .map_err(|e| self.err(e))?;
        let rows =
            stmt.query_map([answer_id], from_row).and_then(|it| it.collect()).map_err(|e| self.err(e))?;
        Ok(rows)
    }

    /// The review queue: answers with no review yet, newest first.
    pub fn review_queue(&self, f: &QueueFilter) -> Result<Vec<QueueItem>, StoreError> {
        // (mode, id): 0 any adapter, 1 the bare base, 2 adapter `id`.
        let (mode, adapter_id) = match f.adapter {
            AdapterFilter::Any => (0, 0),
            AdapterFilter::Base => (1, 0),
            AdapterFilter::Id(id) => (2, id),
        };
        let limit = if f.limit == 0 { -1 } else { f.limit as i64 };
        let sql = "SELECT a.id, q.id, q.text, a.text, a.adapter_id, a.sources, q.origin, a.created_at \
             FROM answers a JOIN questions q ON q.id = a.question_id \
             WHERE NOT EXISTS (SELECT 1 FROM reviews r WHERE r.answer_id = a.id) \
             AND (?1 = 0 OR (?1 = 1 AND a.adapter_id IS NULL) OR (?1 = 2 AND a.adapter_id = ?2)) \
             AND (NOT ?3 OR json_array_length(a.sources) = 0) \
             ORDER BY a.id DESC LIMIT ?4";
        let mut stmt = self.conn().prepare(sql).map_err(|e| self.err(e))?;
        let rows = stmt
            .query_map(params![mode, adapter_id, f.no_source, limit], |r| {
                let sources: String = r.get(5)?;
                Ok(QueueItem {
                    answer_id: r.get(0)?,
                    question_id: r.get(1)?,
                    question: r.get(2)?,
                    answer: r.get(3)?,
                    adapter_id: r.get(4)?,
                    sources: serde_json::from_str(&sources).unwrap_or(serde_json::Value::Null),
                    origin: r.get(6)?,
                    created_at: r.get(7)?,
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

    fn store_with_answers() -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Store::open(&dir.path().join("w.db")).unwrap();
        s.record_answer::<serde_json::Value>("q1", "cli", None, "a1", &[], 1, 1).unwrap();
        s.record_answer("q2", "tui", None, "a2", &[serde_json::json!({"chunk_id": 1})], 1, 1).unwrap();
        s.record_answer::<serde_json::Value>("q3", "tui", None, "a3", &[], 1, 1).unwrap();
        (dir, s)
    }

    fn review(answer_id: i64, action: ReviewAction) -> NewReview {
        NewReview {
            answer_id,
            action,
            note: None,
            reviewer: Some("  Samira ".into()),
            reviewer_uid: Some(1001),
        }
    }

    #[test]
    fn review_validation_names_the_fault() {
        let (_d, mut s) = store_with_answers();
        assert!(matches!(
            s.record_review(&review(99, ReviewAction::Approve)),
            Err(ReviewError::UnknownAnswer(99))
        ));
        let blank = ReviewAction::Correct { text: " \n ".into() };
        assert!(matches!(s.record_review(&review(1, blank)), Err(ReviewError::EmptyCorrection)));
        let blank = ReviewAction::Reject { reason: "".into() };
        assert!(matches!(s.record_review(&review(1, blank)), Err(ReviewError::EmptyReason)));
        assert!(s.reviews_of(1).unwrap().is_empty(), "nothing recorded by a refused review");
    }

    #[test]
    fn requests_are_checked_before_the_store_is_touched() {
        let r = |verb: &str, text: Option<&str>, note: Option<&str>| {
            NewReview::from_request(4, verb, text.map(Into::into), note.map(Into::into), None, None)
        };
        assert_eq!(r("approve", None, Some("ok")).unwrap().action, ReviewAction::Approve);
        assert!(matches!(r("approve", Some("x"), None), Err(ReviewError::UnexpectedText)));
        assert_eq!(
            r("correct", Some("60 l"), None).unwrap().action,
            ReviewAction::Correct { text: "60 l".into() }
        );
        assert!(matches!(r("correct", Some(" "), None), Err(ReviewError::EmptyCorrection)));
        let by_note = r("reject", None, Some("wrong unit")).unwrap();
        assert_eq!(
            (by_note.action, by_note.note),
            (ReviewAction::Reject { reason: "wrong unit".into() }, None)
        );
        assert!(matches!(r("reject", None, None), Err(ReviewError::EmptyReason)));
        assert!(matches!(r("maybe", None, None), Err(ReviewError::UnknownVerdict(_))));
    }

    #[test]
    fn re_review_appends_and_the_newest_is_in_force() {
        let (_d, mut s) = store_with_answers();
        let first = s.record_review(&review(1, ReviewAction::Approve)).unwrap();
        assert_eq!(first.supersedes, None);
        assert_eq!(first.review.reviewer.as_deref(), Some("Samira"));
        assert_eq!(first.review.reviewer_uid, Some(1001));
        let mut r = review(1, ReviewAction::Reject { reason: "wrong unit".into() });
        r.note = Some("see manual p. 4".into());
        let second = s.record_review(&r).unwrap();
        assert_eq!(second.supersedes, Some(first.review.id));
        assert_eq!(second.review.verdict, "rejected");
        assert_eq!(second.review.note.as_deref(), Some("wrong unit\nsee manual p. 4"));
        assert_eq!(s.reviews_of(1).unwrap().len(), 2);
        // The rejection is in force: answer 1 is no training target any more.
        assert!(s.training_sources().unwrap().reviews.is_empty());
        assert!(s.unused_reviews().unwrap().is_empty());
        let third =
            s.record_review(&review(1, ReviewAction::Correct { text: " 60 litres. ".into() })).unwrap();
        assert_eq!(third.review.correction.as_deref(), Some("60 litres."));
        let src = s.training_sources().unwrap();
        assert_eq!(src.reviews.len(), 1);
        assert_eq!((src.reviews[0].question.as_str(), src.reviews[0].answer.as_str()), ("q1", "60 litres."));
    }

    #[test]
    fn queue_is_newest_first_with_filters() {
        let (_d, mut s) = store_with_answers();
        let ids = |q: Vec<QueueItem>| q.iter().map(|i| i.answer_id).collect::<Vec<_>>();
        assert_eq!(ids(s.review_queue(&QueueFilter::default()).unwrap()), [3, 2, 1]);
        s.record_review(&review(3, ReviewAction::Approve)).unwrap();
        assert_eq!(ids(s.review_queue(&QueueFilter::default()).unwrap()), [2, 1]);
        let no_source = QueueFilter { no_source: true, ..Default::default() };
        assert_eq!(ids(s.review_queue(&no_source).unwrap()), [1]);
        let base = QueueFilter { adapter: AdapterFilter::Base, limit: 1, ..Default::default() };
        assert_eq!(ids(s.review_queue(&base).unwrap()), [2]);
        let other = QueueFilter { adapter: AdapterFilter::Id(7), ..Default::default() };
        assert!(s.review_queue(&other).unwrap().is_empty());
    }
}
