//! `warsha review ANSWER_ID approve|reject|correct [TEXT]`: record an
//! operator's verdict on a recorded answer, directly on the data dir.

use std::os::unix::fs::MetadataExt;

use anyhow::Result;
use serde_json::json;

use super::Ctx;
use crate::cli::{ReviewArgs, ReviewVerdict};
use crate::store::reviews::NewReview;

pub fn run(ctx: &Ctx, a: ReviewArgs) -> Result<()> {
    let verb = match a.verdict {
        ReviewVerdict::Approve => "approve",
        ReviewVerdict::Reject => "reject",
        ReviewVerdict::Correct => "correct",
    };
    // The uid this process runs as: on a shared floor login, the name is what tells operators apart.
    let uid = std::fs::metadata("/proc/self").ok().map(|m| m.uid());
    if let Some(mut conn) = super::serve::service(ctx)? {
        // The service records the uid from the socket's peer credentials.
        let v = conn.call(json!({"verb": "review", "answer": a.answer_id, "verdict": verb,
            "text": a.text, "note": a.note, "reviewer": a.reviewer}))?;
        if a.out.json {
            println!("{v}");
        } else {
            println!(
                "review #{} of answer {} recorded by the running service",
                v["review"]["id"], a.answer_id
            );
        }
        return Ok(());
    }
    let review = NewReview::from_request(a.answer_id, verb, a.text, a.note, a.reviewer, uid)?;
    let _lock = ctx.data.lock()?;
    let mut store = ctx.open_store()?;
    let rec = store.record_review(&review)?;
    if a.out.json {
        println!("{}", json!({"review": rec.review, "supersedes": rec.supersedes}));
        return Ok(());
    }
    let r = &rec.review;
    let what = match r.verdict.as_str() {
        "approved" => "approved: it becomes a training example of the next round".to_string(),
        "corrected" => "corrected: the correction becomes a training example of the next round".to_string(),
        _ => format!(
            "rejected ({}): kept with the reason, never a training example",
            r.note.as_deref().unwrap_or("")
        ),
    };
    println!("review #{} of answer {}: {what}", r.id, r.answer_id);
    if let Some(old) = rec.supersedes {
        println!("it replaces review #{old} of the same answer (kept in the record)");
    }
    Ok(())
}
