//! `warsha serve` with the real model: a question over the socket is
//! answered (pieces, sources, final record) while a round trains; the round
//! is gated; kill -9 during ingest or training, then a restart, finishes the
//! work with nothing lost or doubled.

mod service_support;

use std::time::{Duration, Instant};

use serde_json::json;
use service_support::{model, wait, Service};

const DOC: &str = "# صمام الأمان\n\nيفتح صمام الأمان V-12 عند ضغط 32 بار. The safety valve V-12 opens at 32 bar; check it weekly.\n\n## Pump\n\nThe pump P-3 runs at 1450 rpm. Replace its filter every 500 hours.\n";

fn ingested(svc: &Service, n: i64) -> bool {
    svc.sql("SELECT count(*) FROM files WHERE state = 'ingested'")[0][0] == json!(n)
}

#[test]
fn ask_streams_pieces_and_sources_while_a_round_trains_and_the_round_is_gated() {
    let Some(m) = model() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let svc = Service::start(tmp.path(), Some(&m), "", &[]);
    assert!(svc.wait_note("READY=1", Duration::from_secs(120)), "{}", svc.log());
    std::fs::write(svc.drop.join("valve.md"), DOC).unwrap();
    assert!(wait(Duration::from_secs(60), || ingested(&svc, 1)), "{}", svc.log());

    let mut c = svc.client();
    let r = c.call(json!({"v": 1, "id": 1, "verb": "train-now", "steps": 12}));
    assert_eq!(r[0]["ok"], json!(true), "{r:?}");
    let training = || svc.sql("SELECT count(*) FROM run_steps")[0][0].as_i64().unwrap_or(0) >= 1;
    assert!(wait(Duration::from_secs(120), training), "no step\n{}", svc.log());

    let asked = Instant::now();
    let mut q = svc.client();
    q.send(json!({"v": 1, "id": "q1", "verb": "ask", "question": "At what pressure does valve V-12 open?", "max_tokens": 12}));
    let first = q.next().unwrap();
    let ttft = asked.elapsed();
    assert!(first.get("piece").is_some(), "{first}");
    let mut rest = vec![first];
    while let Some(r) = q.next() {
        let done = r.get("done").is_some() || r.get("error").is_some();
        rest.push(r);
        if done {
            break;
        }
    }
    let sources = rest.iter().find_map(|r| r.get("sources")).expect("a sources record");
    assert_eq!(sources[0]["document"], json!("valve.md"), "{sources}");
    assert!(sources[0]["passage"].as_str().is_some_and(|p| !p.is_empty()));
    let fin = rest.last().unwrap();
    assert!(fin["answer_id"].as_i64().is_some() && fin["total_duration"].as_u64().is_some(), "{fin}");
    let steps_then = svc.sql("SELECT max(step) FROM run_steps")[0][0].as_i64().unwrap_or(0);
    eprintln!(
        "time to first token while training: {:.2} s (server: {:?} ns)",
        ttft.as_secs_f64(),
        fin["first_piece_duration"]
    );
    assert!(steps_then < 12, "the question was answered while the round trained (at step {steps_then})");

    // The round finishes and the gate decides by itself.
    let gated = || !svc.sql("SELECT id FROM adapters WHERE state IN ('active', 'rejected')").is_empty();
    assert!(wait(Duration::from_secs(600), gated), "not gated\n{}", svc.log());
    let ev = svc.sql("SELECT message FROM events WHERE component = 'gate'");
    assert!(!ev.is_empty(), "the gate's decision is an event");
    assert_eq!(svc.sql("SELECT count(*) FROM answers")[0][0], json!(1));
}

#[test]
fn kill9_during_ingest_and_during_training_then_restart_finishes_both() {
    let Some(m) = model() else { return };
    let tmp = tempfile::tempdir().unwrap();
    // Dies like a power cut right after the first file's spool copy.
    let mut svc = Service::start(tmp.path(), Some(&m), "", &[("WARSHA_FAULT", "crash-after-spool")]);
    assert!(svc.wait_note("READY=1", Duration::from_secs(120)), "{}", svc.log());
    std::fs::write(svc.drop.join("valve.md"), DOC).unwrap();
    assert!(wait(Duration::from_secs(60), || svc.child.try_wait().ok().flatten().is_some()), "no crash");
    let mut svc = svc.restart(&["WARSHA_FAULT"]);
    assert!(svc.wait_note("READY=1", Duration::from_secs(120)), "{}", svc.log());
    assert!(wait(Duration::from_secs(60), || ingested(&svc, 1)), "{}", svc.log());
    assert_eq!(svc.sql("SELECT count(*) FROM documents")[0][0], json!(1), "nothing doubled");

    let mut c = svc.client();
    assert_eq!(c.call(json!({"v": 1, "id": 1, "verb": "train-now", "steps": 8}))[0]["ok"], json!(true));
    let stepped = || svc.sql("SELECT count(*) FROM run_steps")[0][0].as_i64().unwrap_or(0) >= 3;
    assert!(wait(Duration::from_secs(180), stepped), "{}", svc.log());
    svc.kill9();
    assert_eq!(svc.sql("PRAGMA quick_check")[0][0], json!("ok"));

    let svc = svc.restart(&[]);
    assert!(svc.wait_note("READY=1", Duration::from_secs(120)), "{}", svc.log());
    let done = || svc.sql("SELECT status FROM runs WHERE id = 1")[0][0] == json!("done");
    assert!(wait(Duration::from_secs(600), done), "the run did not finish\n{}", svc.log());
    let steps = svc
        .sql("SELECT count(*), count(DISTINCT step), min(step), max(step) FROM run_steps WHERE run_id = 1");
    assert_eq!(steps[0], vec![json!(8), json!(8), json!(1), json!(8)], "each step once");
    assert_eq!(svc.sql("SELECT count(*) FROM runs")[0][0], json!(1), "resumed, not restarted");
    let gated = || !svc.sql("SELECT id FROM adapters WHERE state IN ('active', 'rejected')").is_empty();
    assert!(wait(Duration::from_secs(600), gated), "not gated\n{}", svc.log());
    assert_eq!(svc.sql("PRAGMA quick_check")[0][0], json!("ok"));
}
