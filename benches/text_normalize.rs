//! Throughput of the search and train forms on ~50 MB of Arabic plant text
//! (override with TEXT_BENCH_MB), against NFKC over the same text as the
//! naive baseline. Run: `cargo bench --bench text_normalize`. One core.
//!
//! The corpus is built from the labeled sentences in assets/text, varied by
//! the seeded perturbations (a tenth of the lines diacritized, some with
//! tatweel, some with presentation forms as PDF extraction leaves them), so
//! both the clean fast path and the general path are exercised in the mix
//! real documents have.

use std::hint::black_box;
use std::time::Instant;

use unicode_normalization::UnicodeNormalization;
use warsha::text::normalize::{search_form, train_form};
use warsha::text::perturb::{perturb, Perturbation};

fn corpus(target: usize) -> Vec<String> {
    let raw = include_str!("../assets/text/dialects.jsonl");
    let sentences: Vec<String> = raw
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|v| v["text"].as_str().map(str::to_string))
        .collect();
    let mut lines = Vec::new();
    let mut size = 0;
    let mut k = 0u64;
    while size < target {
        // A paragraph of four sentences with a line number, like extracted text.
        let mut p = format!("{} ", k % 997);
        for j in 0..4 {
            p.push_str(&sentences[((k * 7 + j * 13) % sentences.len() as u64) as usize]);
            p.push(' ');
        }
        let p = match k % 40 {
            0..=3 => perturb(&p, Perturbation::AddDiacritics, k),
            4 => perturb(&p, Perturbation::InsertTatweel, k),
            5 => p.replace("السلام", "ﺍﻟﺴﻼﻡ").replace("لا", "\u{FEFB}"),
            _ => p,
        };
        size += p.len();
        lines.push(p);
        k += 1;
    }
    lines
}

/// CPU time of this thread: on a shared machine wall time measures the
/// neighbours, this measures the code.
fn thread_cpu_secs() -> f64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes one timespec through a valid pointer.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    if rc != 0 {
        return f64::NAN;
    }
    ts.tv_sec as f64 + ts.tv_nsec as f64 * 1e-9
}

/// MB/s of `f` over `lines`, by thread CPU time (wall time printed beside).
fn measure(name: &str, lines: &[String], bytes: usize, f: impl Fn(&str) -> String) -> f64 {
    // Warm-up pass over a slice, then the timed pass over everything.
    for l in lines.iter().take(1000) {
        black_box(f(l));
    }
    let (wall, cpu) = (Instant::now(), thread_cpu_secs());
    let mut out = 0usize;
    for l in lines {
        out += black_box(f(l)).len();
    }
    let (wall, cpu) = (wall.elapsed().as_secs_f64(), thread_cpu_secs() - cpu);
    let mbs = bytes as f64 / 1e6 / cpu;
    println!(
        "{name:<28} {mbs:>8.1} MB/s of CPU time  ({cpu:.2} s CPU, {:.1} MB/s wall, {} MB out)",
        bytes as f64 / 1e6 / wall,
        out / 1_000_000
    );
    mbs
}

fn main() {
    let mb: usize = std::env::var("TEXT_BENCH_MB").ok().and_then(|v| v.parse().ok()).unwrap_or(50);
    let lines = corpus(mb * 1_000_000);
    let bytes: usize = lines.iter().map(String::len).sum();
    println!("corpus: {} lines, {:.1} MB of UTF-8", lines.len(), bytes as f64 / 1e6);
    let search = measure("search_form", &lines, bytes, search_form);
    // Lines already in train form (no tatweel, no presentation forms): the
    // fast path alone.
    let clean: Vec<String> = lines.iter().filter(|l| train_form(l) == **l).cloned().collect();
    let clean_bytes: usize = clean.iter().map(String::len).sum();
    println!("  ({:.1}% of the bytes are already in train form)", 100.0 * clean_bytes as f64 / bytes as f64);
    measure("search_form, clean lines", &clean, clean_bytes, search_form);
    let train = measure("train_form", &lines, bytes, train_form);
    let nfkc = measure("baseline: NFKC", &lines, bytes, |s| s.nfkc().collect());
    let naive = measure("baseline: naive search", &lines, bytes, naive_search);
    println!("search / NFKC = {:.2}x, search / naive search = {:.2}x", search / nfkc, search / naive);
    println!("train / NFKC = {:.2}x", train / nfkc);
}

/// The search rules written the obvious way: NFKC over everything, then one
/// pass per rule. Not exactly the search form (NFKC touches more than the
/// Arabic presentation forms) but the cost a straightforward version pays.
fn naive_search(s: &str) -> String {
    let t: String = s.nfkc().collect();
    let t: String = t
        .chars()
        .filter(|c| !matches!(c, '\u{0640}' | '\u{200B}'..='\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}' | '\u{FEFF}'))
        .collect();
    let t: String = t.chars().filter(|c| !matches!(c, '\u{064B}'..='\u{0652}' | '\u{0670}')).collect();
    let t: String = t
        .chars()
        .map(|c| match c {
            'أ' | 'إ' | 'آ' | 'ٱ' => 'ا',
            'ى' => 'ي',
            'ة' => 'ه',
            '٠'..='٩' => char::from(b'0' + (c as u32 - 0x660) as u8),
            '۰'..='۹' => char::from(b'0' + (c as u32 - 0x6F0) as u8),
            _ => c,
        })
        .collect();
    t.to_lowercase().split_whitespace().collect::<Vec<_>>().join(" ")
}
