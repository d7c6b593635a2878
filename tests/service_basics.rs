//! `warsha serve` without a model: it starts, tells systemd, ingests, says
//! "no model", refuses bad requests and strangers, reloads, stops cleanly.

mod service_support;

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::time::{Duration, Instant};

use serde_json::json;
use service_support::{wait, Service};

#[test]
fn no_model_service_is_ready_pings_watchdog_ingests_and_stops_clean() {
    let tmp = tempfile::tempdir().unwrap();
    let mut svc = Service::start(tmp.path(), None, "", &[]);
    assert!(svc.wait_note("READY=1", Duration::from_secs(60)), "no READY=1\n{}", svc.log());
    assert!(svc.wait_note("WATCHDOG=1", Duration::from_secs(10)), "no WATCHDOG=1\n{}", svc.log());
    let notes = svc.notes.lock().unwrap().join("\n");
    let ready_at = notes.find("READY=1").unwrap();
    assert!(notes.find("WATCHDOG=1").unwrap() > ready_at, "READY before WATCHDOG: {notes}");
    assert!(notes.contains("STATUS=no model"), "{notes}");

    // A complete file, and one still being written when first seen.
    std::fs::write(svc.drop.join("valve.md"), "# Valve\n\nV-12 opens at 32 bar.\n").unwrap();
    let slow = svc.drop.join("slow.txt");
    let mut f = std::fs::File::create(&slow).unwrap();
    for i in 0..8 {
        writeln!(f, "line {i} of a file still being copied").unwrap();
        f.flush().unwrap();
        std::thread::sleep(Duration::from_millis(300));
    }
    writeln!(f, "THE LAST LINE").unwrap();
    drop(f);
    let done = || svc.sql("SELECT count(*) FROM files WHERE state = 'ingested'")[0][0] == json!(2);
    assert!(wait(Duration::from_secs(30), done), "not ingested\n{}", svc.log());
    let rows = svc.sql("SELECT count(*) FROM files WHERE path = 'slow.txt'");
    assert_eq!(rows[0][0], json!(1), "the growing file was taken once");
    let text = svc.sql("SELECT group_concat(chunks.text, ' ') FROM chunks JOIN documents d ON d.id = chunks.document_id WHERE d.name = 'slow.txt'");
    assert!(
        text[0][0].as_str().unwrap_or("").contains("THE LAST LINE"),
        "taken before it was complete: {text:?}"
    );

    // Answers say "no model"; status says why.
    let mut c = svc.client();
    let r = c.call(json!({"v": 1, "id": 1, "verb": "ask", "question": "What opens at 32 bar?"}));
    assert_eq!(r.last().unwrap()["error"]["code"], json!("no-model"), "{r:?}");
    let r = c.call(json!({"v": 1, "id": 2, "verb": "status"}));
    let s = &r[0]["result"]["service"];
    assert!(s["model"].is_null() && s["model_problem"].as_str().is_some(), "{r:?}");

    let (secs, st) = svc.term();
    assert!(secs < 30.0 && st.success(), "SIGTERM: {secs:.1} s, {st:?}\n{}", svc.log());
    assert!(svc.notes.lock().unwrap().iter().any(|n| n.contains("STOPPING=1")));
    assert_eq!(svc.sql("PRAGMA quick_check")[0][0], json!("ok"));
    assert!(!svc.socket().exists(), "socket removed at exit");
}

#[test]
fn bad_requests_get_errors_and_never_stall_other_clients() {
    let tmp = tempfile::tempdir().unwrap();
    let svc = Service::start(tmp.path(), None, "[service]\nmax_line_bytes = 2048\n", &[]);
    assert!(svc.wait_note("READY=1", Duration::from_secs(60)), "{}", svc.log());

    let mut a = svc.client();
    let mut b = svc.client();
    a.send_raw(b"{not json\n");
    assert_eq!(a.next().unwrap()["error"]["code"], json!("bad-json"));
    a.send_raw(&[0xff, 0xfe, b'\n']);
    assert_eq!(a.next().unwrap()["error"]["code"], json!("bad-utf8"));
    let r = a.call(json!({"v": 1, "id": "x", "verb": "fly"}));
    assert_eq!((r[0]["id"].clone(), r[0]["error"]["code"].clone()), (json!("x"), json!("unknown-verb")));
    let r = a.call(json!({"v": 9, "id": 3, "verb": "status"}));
    assert_eq!(r[0]["error"]["code"], json!("bad-version"));

    // A client that vanished mid-stream and one that sends half a line.
    {
        let mut gone = svc.client();
        gone.send(json!({"v": 1, "id": 1, "verb": "events"}));
        assert!(gone.next().unwrap().get("streaming").is_some());
    }
    let mut half = svc.client();
    half.send_raw(b"{\"v\":1,");

    // Two clients at once, while the others misbehave.
    let (ra, rb) = std::thread::scope(|s| {
        let ha = s.spawn(|| a.call(json!({"v": 1, "id": 10, "verb": "status"})));
        let hb = s.spawn(|| b.call(json!({"v": 1, "id": 11, "verb": "docs", "action": "list"})));
        (ha.join().unwrap(), hb.join().unwrap())
    });
    assert_eq!(ra[0]["ok"], json!(true), "{ra:?}");
    assert_eq!(rb[0]["ok"], json!(true), "{rb:?}");

    // An oversized line ends only that connection.
    let mut big = svc.client();
    big.send_raw(&vec![b'x'; 5000]);
    big.send_raw(b"\n");
    assert_eq!(big.next().unwrap()["error"]["code"], json!("too-long"));
    assert!(big.next().is_none(), "connection closed after an oversized line");

    // A malformed config on reload keeps the running one.
    let cfg = std::fs::read_to_string(&svc.config).unwrap();
    std::fs::write(&svc.config, cfg.replace("[train]", "[train]\nno_such_key = 1")).unwrap();
    let r = a.call(json!({"v": 1, "id": 12, "verb": "reload"}));
    let msg = r[0]["error"]["message"].as_str().unwrap_or("").to_string();
    assert!(msg.contains("kept") && msg.contains("no_such_key"), "{r:?}");
    std::fs::write(&svc.config, cfg).unwrap();
    let r = a.call(json!({"v": 1, "id": 13, "verb": "reload"}));
    assert_eq!(r[0]["ok"], json!(true), "{r:?}");
    let r = a.call(json!({"v": 1, "id": 14, "verb": "status"}));
    assert_eq!(r[0]["ok"], json!(true));
}

#[test]
fn client_outside_the_group_is_refused_by_peer_credentials() {
    let tmp = tempfile::tempdir().unwrap();
    let svc = Service::start(tmp.path(), None, "", &[]);
    assert!(svc.wait_note("READY=1", Duration::from_secs(60)), "{}", svc.log());
    // Let `nobody` reach and open the socket: only SO_PEERCRED stands in its way.
    for d in [tmp.path(), &svc.data, &svc.data.join("run")] {
        std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    std::fs::set_permissions(svc.socket(), std::fs::Permissions::from_mode(0o666)).unwrap();
    let t = Instant::now();
    let out = std::process::Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups"])
        .arg(env!("CARGO_BIN_EXE_warsha"))
        .arg("--data-dir")
        .arg(&svc.data)
        .arg("status")
        .env_remove("WARSHA_CONFIG")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("forbidden") && err.contains("65534"), "{err}");
    assert!(t.elapsed() < Duration::from_secs(30));
    // The service is unaffected.
    let mut c = svc.client();
    assert_eq!(c.call(json!({"v": 1, "id": 1, "verb": "status"}))[0]["ok"], json!(true));
}
