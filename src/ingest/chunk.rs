//! Splitting a document's text into retrieval chunks: sections start at
//! headings (`# ` lines), paragraphs are packed up to about `target` tokens
//! (whitespace words, a fair proxy for both scripts), a paragraph longer than
//! that is cut by words, and each chunk after the first in a section begins
//! with the last `overlap` words of the previous one so that a fact split at
//! a boundary is still found whole.

/// One chunk, before tagging and the search form.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chunk {
    pub heading: Option<String>,
    pub text: String,
    pub tokens: usize,
}

pub fn chunk(text: &str, target: usize, overlap: usize) -> Vec<Chunk> {
    let target = target.max(1);
    let overlap = overlap.min(target.saturating_sub(1));
    let mut out = Vec::new();
    let mut heading: Option<String> = None;
    let mut paras: Vec<String> = Vec::new();
    let mut para = String::new();
    let flush_para = |para: &mut String, paras: &mut Vec<String>| {
        if !para.trim().is_empty() {
            paras.push(para.trim().to_string());
        }
        para.clear();
    };
    for line in text.lines() {
        if let Some(h) = heading_text(line) {
            flush_para(&mut para, &mut paras);
            pack(&paras, heading.as_deref(), target, overlap, &mut out);
            paras.clear();
            heading = Some(h.to_string());
        } else if line.trim().is_empty() {
            flush_para(&mut para, &mut paras);
        } else {
            if !para.is_empty() {
                para.push('\n');
            }
            para.push_str(line);
        }
    }
    flush_para(&mut para, &mut paras);
    pack(&paras, heading.as_deref(), target, overlap, &mut out);
    out
}

fn heading_text(line: &str) -> Option<&str> {
    let t = line.trim_start();
    let rest = t.trim_start_matches('#');
    let level = t.len() - rest.len();
    ((1..=6).contains(&level) && rest.starts_with(' ') && !rest.trim().is_empty()).then(|| rest.trim())
}

/// Pack one section's paragraphs into chunks.
fn pack(paras: &[String], heading: Option<&str>, target: usize, overlap: usize, out: &mut Vec<Chunk>) {
    let mut cur: Vec<&str> = Vec::new();
    let mut cur_words = 0usize;
    let mut carry = String::new();
    let emit = |cur: &mut Vec<&str>, cur_words: &mut usize, carry: &mut String, out: &mut Vec<Chunk>| {
        if cur.is_empty() {
            return;
        }
        let mut text = String::new();
        if !carry.is_empty() {
            text.push_str(carry);
            text.push_str("\n\n");
        }
        text.push_str(&cur.join("\n\n"));
        let words: Vec<&str> = text.split_whitespace().collect();
        *carry = words[words.len().saturating_sub(overlap)..].join(" ");
        if overlap == 0 {
            carry.clear();
        }
        out.push(Chunk { heading: heading.map(str::to_string), tokens: words.len(), text });
        cur.clear();
        *cur_words = 0;
    };
    for p in paras {
        let n = p.split_whitespace().count();
        if n > target {
            emit(&mut cur, &mut cur_words, &mut carry, out);
            let words: Vec<&str> = p.split_whitespace().collect();
            let step = target - overlap.min(target - 1);
            let mut start = 0;
            // The carry from the previous chunk already overlaps the first window.
            let first_len = target.saturating_sub(carry.split_whitespace().count()).max(1);
            let mut len = first_len;
            while start < words.len() {
                let end = (start + len).min(words.len());
                let window = words[start..end].join(" ");
                let mut text = String::new();
                if start == 0 && !carry.is_empty() {
                    text.push_str(&carry);
                    text.push_str("\n\n");
                }
                text.push_str(&window);
                let tokens = text.split_whitespace().count();
                out.push(Chunk { heading: heading.map(str::to_string), text, tokens });
                if end == words.len() {
                    carry = if overlap == 0 {
                        String::new()
                    } else {
                        words[end.saturating_sub(overlap)..end].join(" ")
                    };
                    break;
                }
                start = if start == 0 { end.saturating_sub(overlap).max(start + 1) } else { start + step };
                len = target;
            }
            continue;
        }
        let carried = carry.split_whitespace().count();
        if carried + cur_words + n > target && !cur.is_empty() {
            emit(&mut cur, &mut cur_words, &mut carry, out);
        }
        cur.push(p);
        cur_words += n;
    }
    emit(&mut cur, &mut cur_words, &mut carry, out);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(n: usize, tag: &str) -> String {
        (0..n).map(|i| format!("{tag}{i}")).collect::<Vec<_>>().join(" ")
    }

    #[test]
    fn headings_start_sections_and_short_paragraphs_pack_together() {
        let text = format!("# أ\n\n{}\n\n{}\n\n## B\n{}\n", words(5, "a"), words(5, "b"), words(3, "c"));
        let c = chunk(&text, 20, 4);
        assert_eq!(c.len(), 2);
        assert_eq!(c[0].heading.as_deref(), Some("أ"));
        assert_eq!(c[0].tokens, 10);
        assert_eq!(c[1].heading.as_deref(), Some("B"));
        assert_eq!(c[1].text, words(3, "c"));
    }

    #[test]
    fn long_paragraph_is_cut_with_overlap_and_every_word_is_covered() {
        let text = words(1000, "w");
        let c = chunk(&text, 100, 10);
        assert!(c.iter().all(|x| x.tokens <= 100), "{:?}", c.iter().map(|x| x.tokens).collect::<Vec<_>>());
        for w in text.split_whitespace() {
            assert!(c.iter().any(|x| x.text.split_whitespace().any(|y| y == w)), "{w} lost");
        }
        // Consecutive chunks share exactly the overlap.
        let a: Vec<&str> = c[0].text.split_whitespace().collect();
        let b: Vec<&str> = c[1].text.split_whitespace().collect();
        assert_eq!(&a[a.len() - 10..], &b[..10]);
    }

    #[test]
    fn packed_chunks_carry_overlap_into_the_next() {
        let paras: Vec<String> = (0..10).map(|i| words(30, &format!("p{i}_"))).collect();
        let c = chunk(&paras.join("\n\n"), 64, 8);
        assert!(c.len() >= 4);
        let a: Vec<&str> = c[0].text.split_whitespace().collect();
        let b: Vec<&str> = c[1].text.split_whitespace().collect();
        assert_eq!(&a[a.len() - 8..], &b[..8]);
        assert!(c.iter().all(|x| x.tokens <= 64 + 8));
    }
}
