//! Tags on real sentences: the dialect guess measured on the labeled set in
//! assets/text/dialects.jsonl (accuracy printed with `--nocapture` and
//! recorded in docs/TEXT.md), language and diacritization on mixed text.

use std::collections::BTreeMap;

use warsha::text::tags::{tags, Dialect, Lang};

fn labeled() -> Vec<(String, Dialect)> {
    read_set("dialects.jsonl")
}

fn read_set(name: &str) -> Vec<(String, Dialect)> {
    let path = format!("{}/assets/text/{name}", env!("CARGO_MANIFEST_DIR"));
    let raw = std::fs::read_to_string(path).unwrap();
    raw.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            let d = Dialect::parse(v["dialect"].as_str().unwrap()).unwrap();
            (v["text"].as_str().unwrap().to_string(), d)
        })
        .collect()
}

#[test]
fn dialect_set_is_balanced_and_large_enough() {
    let set = labeled();
    assert!(set.len() >= 60);
    let mut per: BTreeMap<&str, usize> = BTreeMap::new();
    for (_, d) in &set {
        *per.entry(d.as_str()).or_default() += 1;
    }
    assert_eq!(per.len(), 5);
    assert!(per.values().all(|&n| n == set.len() / 5), "{per:?}");
}

/// Accuracy of the guess over `set`, printing misses and the confusion matrix.
fn accuracy(name: &str, set: &[(String, Dialect)]) -> f64 {
    let mut confusion: BTreeMap<(&str, &str), usize> = BTreeMap::new();
    let mut correct = 0;
    for (text, want) in set {
        let t = tags(text);
        assert_eq!(t.lang, Lang::Ar, "{text}");
        let got = t.dialect.unwrap();
        correct += usize::from(got == *want);
        *confusion.entry((want.as_str(), got.as_str())).or_default() += 1;
        if got != *want {
            println!("miss: {} → {}: {text}", want.as_str(), got.as_str());
        }
    }
    let acc = correct as f64 / set.len() as f64;
    println!(
        "{name}: dialect accuracy {correct}/{} = {acc:.3} (rows: truth; columns: msa egy gulf lev magh)",
        set.len()
    );
    for d in Dialect::ALL {
        let row: Vec<String> = Dialect::ALL
            .iter()
            .map(|g| format!("{}", confusion.get(&(d.as_str(), g.as_str())).copied().unwrap_or(0)))
            .collect();
        println!("{:>10}: {}", d.as_str(), row.join(" "));
    }
    acc
}

#[test]
fn dialect_guess_accuracy_on_the_labeled_set() {
    let acc = accuracy("dialects.jsonl", &labeled());
    // A floor, not the figure: a marker-list change that loses ground fails here.
    assert!(acc >= 0.8, "dialect accuracy fell to {acc:.3}");
}

/// Sentences written after the marker lists were frozen: the honest figure.
#[test]
fn dialect_guess_accuracy_on_held_out_sentences() {
    let set = read_set("dialects_heldout.jsonl");
    assert_eq!(set.len(), 25);
    let acc = accuracy("dialects_heldout.jsonl", &set);
    // Chance is 0.2; a marker tagger that stops generalizing fails here.
    assert!(acc >= 0.4, "held-out dialect accuracy fell to {acc:.3}");
}

#[test]
fn mixed_plant_text_is_tagged_mixed_with_its_share() {
    let t = tags("استبدل bearing رقم 6204 في pump P-101");
    assert_eq!(t.lang, Lang::Mixed);
    assert!(t.dialect.is_some());
    assert!(!t.diacritized);
}

#[test]
fn diacritized_text_is_tagged_even_in_presentation_forms() {
    assert!(tags("تَأَكَّدْ مِنْ إِغْلَاقِ الصِّمَامِ").diacritized);
    let pres = tags("ﺍﻟﺴﻼﻡ ﻋﻠﻴﻜﻢ");
    assert_eq!((pres.lang, pres.diacritized), (Lang::Ar, false));
}
