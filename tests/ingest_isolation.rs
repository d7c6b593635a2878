//! A parser that panics, hangs or eats memory rejects only that file: the
//! extraction runs in a child process with a timeout and an address-space limit.

mod ingest_support;

use std::time::{Duration, Instant};

use ingest_support::*;
use warsha::ingest::names::Kind;
use warsha::ingest::Reject;

fn sample(env: &Env) -> std::path::PathBuf {
    let p = env.dir.path().join("sample.txt");
    std::fs::write(&p, "نص قصير للاختبار").unwrap();
    p
}

#[test]
fn a_panicking_parser_rejects_the_file_with_what_happened() {
    let env = Env::new("");
    let r = env.extractor().with_fault("extract-panic").run(&sample(&env), Kind::Txt).unwrap_err();
    assert!(
        matches!(&r, Reject::Crashed { detail } if detail.contains("fault point extract-panic")),
        "{r:?}"
    );
}

#[test]
fn a_hanging_parser_is_killed_at_the_timeout() {
    let env = Env::new("extract_timeout_secs = 2");
    let t = Instant::now();
    let r = env.extractor().with_fault("extract-hang").run(&sample(&env), Kind::Txt).unwrap_err();
    assert_eq!(r, Reject::Timeout { secs: 2 });
    assert!(t.elapsed() < Duration::from_secs(6), "{:?}", t.elapsed());
}

#[test]
fn a_parser_that_eats_memory_hits_the_limit_not_the_machine() {
    let env = Env::new("");
    let ex = env.extractor().with_fault("extract-oom").with_memory_limit(768 << 20);
    let r = ex.run(&sample(&env), Kind::Txt).unwrap_err();
    assert_eq!(r, Reject::OutOfMemory { limit_mib: 768 });
}

#[test]
fn the_same_extractor_without_faults_reads_the_file() {
    let env = Env::new("");
    let e = env.extractor().run(&sample(&env), Kind::Txt).unwrap();
    assert_eq!(e.text, "نص قصير للاختبار");
}
