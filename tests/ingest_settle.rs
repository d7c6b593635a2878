//! Files are taken only once they stopped changing, and a bulk drop of
//! thousands of files leaves every one of them in a recorded state.

mod ingest_support;

use std::io::Write;
use std::time::{Duration, Instant};

use ingest_support::*;
use warsha::ingest::State;

#[test]
fn a_file_written_slowly_in_pieces_is_taken_only_once_complete() {
    let env = Env::new("");
    let path = env.drop.join("slow upload.txt");
    let writer = {
        let path = path.clone();
        std::thread::spawn(move || {
            let mut f = std::fs::File::create(&path).unwrap();
            for i in 0..8 {
                writeln!(f, "part {i}: الفقرة رقم {i} من دليل التشغيل").unwrap();
                f.flush().unwrap();
                std::thread::sleep(Duration::from_millis(250));
            }
        })
    };
    std::thread::sleep(Duration::from_millis(50));
    let mut outs = Vec::new();
    let t = Instant::now();
    // 600 ms stability, much longer than the 250 ms between pieces.
    let left = env
        .worker(Duration::from_millis(600))
        .drain(Duration::from_secs(30), |o| outs.push(o.clone()))
        .unwrap();
    writer.join().unwrap();
    assert!(left.is_empty());
    assert_eq!(outs.len(), 1, "{outs:?}");
    assert_eq!(outs[0].state, State::Ingested);
    assert!(t.elapsed() >= Duration::from_millis(2000), "taken before the writer finished");
    let (_, text) = env.store().document(outs[0].document_id.unwrap()).unwrap().unwrap();
    assert!(text.contains("part 0:") && text.contains("part 7:"), "{text}");
    let moved = std::fs::read_to_string(env.drop.join("processed/slow upload.txt")).unwrap();
    assert_eq!(moved.lines().count(), 8);
}

#[test]
fn a_file_still_changing_at_the_bound_is_left_for_the_next_pass() {
    let env = Env::new("");
    let path = env.drop.join("growing.txt");
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let (path, stop) = (path.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut f = std::fs::File::create(&path).unwrap();
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                writeln!(f, "more data").unwrap();
                std::thread::sleep(Duration::from_millis(100));
            }
        })
    };
    std::thread::sleep(Duration::from_millis(50));
    let mut outs = Vec::new();
    let left = env
        .worker(Duration::from_millis(500))
        .drain(Duration::from_secs(2), |o| outs.push(o.clone()))
        .unwrap();
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    writer.join().unwrap();
    assert!(outs.is_empty(), "{outs:?}");
    assert_eq!(left.len(), 1);
    assert_eq!(left[0].state, State::Waiting);
    assert!(path.exists(), "left in place");
    let n: i64 = env.db().query_row("SELECT count(*) FROM files", [], |r| r.get(0)).unwrap();
    assert_eq!(n, 0, "no row for a file never taken");
}

#[test]
fn two_thousand_files_dropped_at_once_all_end_in_a_recorded_state() {
    let env = Env::new("");
    let n = 2000;
    for i in 0..n {
        let (name, body): (String, Vec<u8>) = match i % 10 {
            0 => (format!("f{i:04}.tmp"), b"temporary".to_vec()),
            1 => (format!("f{i:04}.txt"), vec![]),
            2 => (format!("dup{i:04}.txt"), b"the same words in many files".to_vec()),
            3 => (format!("f{i:04}.bin"), b"unknown kind".to_vec()),
            _ => (
                format!("dir{}/f{i:04}.txt", i % 7),
                format!("مستند رقم {i} عن الصيانة الدورية").into_bytes(),
            ),
        };
        env.put(&name, &body);
    }
    let mut outs = Vec::new();
    let left = env
        .worker(Duration::from_millis(300))
        .drain(Duration::from_secs(600), |o| outs.push(o.clone()))
        .unwrap();
    assert!(left.is_empty());
    assert_eq!(outs.len(), n);
    let count = |s: State| outs.iter().filter(|o| o.state == s).count();
    assert_eq!(count(State::Ignored), 200);
    assert_eq!(count(State::Rejected), 400);
    assert_eq!(count(State::Duplicate), 199);
    assert_eq!(count(State::Ingested), 1201);
    let db = env.db();
    let rows: Vec<(String, i64)> = db
        .prepare(
            "SELECT state, count(*) FROM files WHERE closed_at IS NOT NULL GROUP BY state ORDER BY state",
        )
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(
        rows,
        vec![
            ("duplicate".into(), 199),
            ("ignored".into(), 200),
            ("ingested".into(), 1201),
            ("rejected".into(), 400)
        ]
    );
    // Only the ignored files stay in the drop folder; the rest moved, nothing lost.
    let top: Vec<String> = env
        .files_under("")
        .into_iter()
        .filter(|p| !p.starts_with("processed/") && !p.starts_with("rejected/"))
        .collect();
    assert_eq!(top.len(), 200);
    assert!(top.iter().all(|p| p.ends_with(".tmp")));
    assert_eq!(env.files_under("processed").len(), 1400);
    assert_eq!(env.files_under("rejected").len(), 800, "400 files and 400 .error.txt");
}
