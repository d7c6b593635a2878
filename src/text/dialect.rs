//! A light dialect guess from marker words: demonstratives, question words,
//! negation, "want", "now", "very" and the like, which differ between MSA and
//! the spoken varieties. Words are compared in search form (no harakat, ة → ه,
//! ى → ي, bare alef), after peeling a leading conjunction و/ف. A strong marker
//! scores 2, a marker shared by two dialects 1; MSA function words score 1 for
//! MSA. The best dialect wins with a score of at least 2 that beats MSA and
//! every other dialect; otherwise the text is MSA. This is a tagger for
//! statistics and eval slicing, not a classifier to trust per sentence.

use super::normalize::search_form;
use super::tags::Dialect;

/// (word in search form, weight) per dialect.
const EGYPTIAN: &[(&str, u8)] = &[
    ("ده", 2),
    ("دي", 2),
    ("دول", 2),
    ("ازاي", 2),
    ("ايه", 2),
    ("عايز", 2),
    ("عايزه", 2),
    ("عاوز", 2),
    ("عاوزه", 2),
    ("عايزين", 2),
    ("كده", 2),
    ("اوي", 2),
    ("دلوقتي", 2),
    ("مفيش", 2),
    ("بتاع", 2),
    ("بتاعه", 2),
    ("بتاعت", 2),
    ("بتوع", 2),
    ("امتي", 2),
    ("ليه", 2),
    ("معلش", 2),
    ("لسه", 2),
    ("خالص", 2),
    ("حاجه", 2),
    ("النهارده", 2),
    ("امبارح", 2),
    ("بردو", 2),
    ("برضه", 2),
    ("علشان", 2),
    ("اهو", 2),
    ("اهي", 2),
    ("مش", 1),
    ("فين", 1),
    ("كمان", 1),
    ("عشان", 1),
    ("بقي", 2),
];
const GULF: &[(&str, u8)] = &[
    ("شلون", 2),
    ("وش", 2),
    ("وايد", 2),
    ("يبي", 2),
    ("ابي", 2),
    ("تبي", 2),
    ("نبي", 2),
    ("يبغي", 2),
    ("ابغي", 2),
    ("ابغا", 2),
    ("تبغي", 2),
    ("نبغي", 2),
    ("الحين", 2),
    ("الحينه", 2),
    ("هالحين", 2),
    ("جذي", 2),
    ("چذي", 2),
    ("هذول", 2),
    ("مب", 2),
    ("ماكو", 2),
    ("اكو", 2),
    ("يسوي", 2),
    ("سوي", 2),
    ("سويت", 2),
    ("تسوي", 2),
    ("نسوي", 2),
    ("سوو", 2),
    ("عقب", 2),
    ("باجر", 2),
    ("ترا", 2),
    ("حيل", 2),
    ("زين", 1),
    ("ايش", 1),
    ("ليش", 1),
    ("وين", 1),
    ("شي", 1),
    ("عشان", 1),
    ("شوي", 1),
    ("كيفك", 1),
    ("ياخي", 1),
    ("اشوف", 1),
    ("شفت", 1),
];
const LEVANTINE: &[(&str, u8)] = &[
    ("هيك", 2),
    ("شو", 2),
    ("هلق", 2),
    ("منيح", 2),
    ("منيحه", 2),
    ("كتير", 2),
    ("بدي", 2),
    ("بدك", 2),
    ("بده", 2),
    ("بدنا", 2),
    ("بدهم", 2),
    ("بدكن", 2),
    ("هاد", 2),
    ("هادا", 2),
    ("هدول", 2),
    ("هديك", 2),
    ("لسا", 2),
    ("عم", 2),
    ("مشان", 2),
    ("منشان", 2),
    ("كرمال", 2),
    ("قديش", 2),
    ("تبع", 2),
    ("تبعه", 2),
    ("تبعي", 2),
    ("تبعنا", 2),
    ("هون", 2),
    ("هنيك", 2),
    ("هيدا", 2),
    ("هيدي", 2),
    ("رح", 2),
    ("مبارح", 2),
    ("ليش", 1),
    ("وين", 1),
    ("شي", 1),
    ("شوي", 1),
    ("كيفك", 1),
    ("مش", 1),
    ("كمان", 1),
    ("هاي", 1),
];
const MAGHREBI: &[(&str, u8)] = &[
    ("بزاف", 2),
    ("واش", 2),
    ("كيفاش", 2),
    ("علاش", 2),
    ("دابا", 2),
    ("ديال", 2),
    ("ديالي", 2),
    ("ديالو", 2),
    ("ديالنا", 2),
    ("ديالها", 2),
    ("مزيان", 2),
    ("مزيانه", 2),
    ("غادي", 2),
    ("راه", 2),
    ("راني", 2),
    ("راهي", 2),
    ("راهو", 2),
    ("كاين", 2),
    ("كاينه", 2),
    ("ماكاينش", 2),
    ("بلاصه", 2),
    ("نتا", 2),
    ("نتوما", 2),
    ("هادشي", 2),
    ("والو", 2),
    ("برشا", 2),
    ("توا", 2),
    ("شنوه", 2),
    ("باهي", 2),
    ("ياسر", 2),
    ("فماش", 2),
    ("فما", 2),
    ("معادش", 2),
    ("نخدم", 2),
    ("تخدم", 2),
    ("يخدم", 2),
    ("خدام", 2),
    ("خدامه", 2),
    ("زعما", 2),
    ("كيما", 2),
    ("بصح", 2),
    ("درك", 2),
    ("هكا", 2),
    ("لاباس", 2),
    ("شحال", 2),
    ("مازال", 1),
    ("شنو", 1),
    ("صافي", 1),
    ("فين", 1),
    ("حتا", 1),
];
const MSA: &[(&str, u8)] = &[
    ("سوف", 1),
    ("ليس", 1),
    ("لماذا", 1),
    ("الذي", 1),
    ("التي", 1),
    ("الذين", 1),
    ("يجب", 1),
    ("لقد", 1),
    ("هذا", 1),
    ("هذه", 1),
    ("ذلك", 1),
    ("تلك", 1),
    ("ايضا", 1),
    ("حيث", 1),
    ("عندما", 1),
    ("ماذا", 1),
    ("كيف", 1),
    ("لدي", 1),
    ("لدينا", 1),
    ("الان", 1),
    ("جدا", 1),
    ("اريد", 1),
    ("نريد", 1),
    ("لم", 1),
    ("لن", 1),
    ("اين", 1),
    ("متي", 1),
];

fn table(d: Dialect) -> &'static [(&'static str, u8)] {
    match d {
        Dialect::Msa => MSA,
        Dialect::Egyptian => EGYPTIAN,
        Dialect::Gulf => GULF,
        Dialect::Levantine => LEVANTINE,
        Dialect::Maghrebi => MAGHREBI,
    }
}

/// Marker scores per dialect, in `Dialect::ALL` order.
pub fn scores(s: &str) -> [u32; 5] {
    let norm = search_form(s);
    let mut out = [0u32; 5];
    for word in norm.split(|c: char| !c.is_alphabetic()).filter(|w| !w.is_empty()) {
        for (k, d) in Dialect::ALL.into_iter().enumerate() {
            out[k] += weight(table(d), word);
        }
    }
    out
}

/// Weight of `word` in `markers`, trying it without a leading و/ف too.
fn weight(markers: &[(&str, u8)], word: &str) -> u32 {
    let find = |w: &str| markers.iter().find(|(m, _)| *m == w).map(|&(_, x)| u32::from(x));
    find(word)
        .or_else(|| {
            let rest = word.strip_prefix('و').or_else(|| word.strip_prefix('ف'))?;
            (rest.chars().count() >= 2).then(|| find(rest)).flatten()
        })
        .unwrap_or(0)
}

/// The dialect guess for an Arabic text (see the module docs).
pub fn guess(s: &str) -> Dialect {
    let sc = scores(s);
    let msa = sc[0];
    let mut best = (Dialect::Msa, 0u32);
    let mut tied = false;
    for (k, d) in Dialect::ALL.into_iter().enumerate().skip(1) {
        if sc[k] > best.1 {
            best = (d, sc[k]);
            tied = false;
        } else if sc[k] == best.1 {
            tied = true;
        }
    }
    if best.1 >= 2 && best.1 > msa && !tied {
        best.0
    } else {
        Dialect::Msa
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marker_words_pick_their_dialect() {
        assert_eq!(guess("المكنة دي مش شغالة كويس النهارده"), Dialect::Egyptian);
        assert_eq!(guess("شلون نشغل الضاغط الحين؟"), Dialect::Gulf);
        assert_eq!(guess("شو صار بالمضخة؟ بدي افحصها هلق"), Dialect::Levantine);
        assert_eq!(guess("الماكينة ديال الخط الثاني ما خدامة بزاف"), Dialect::Maghrebi);
        assert_eq!(guess("يجب إغلاق الصمام قبل بدء الصيانة"), Dialect::Msa);
    }

    #[test]
    fn conjunction_prefix_is_peeled_and_marks_ignored() {
        assert_eq!(weight(EGYPTIAN, "وكده"), 2);
        assert_eq!(guess("وَدِي مَكِنَة جْدِيدة عايزين نجربها"), Dialect::Egyptian);
    }

    #[test]
    fn one_shared_marker_is_not_enough() {
        // "وين" alone is shared by Gulf and Levantine: stays MSA.
        assert_eq!(guess("وين المفتاح"), Dialect::Msa);
    }
}
