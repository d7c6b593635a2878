//! Training data as token rows: document chunks become causal-LM samples,
//! Q&A pairs and reviewed answers become chat samples with loss on the answer
//! only; samples are packed into rows of exactly `seq_len` positions with a
//! segment id per sample (the model restarts positions per segment and never
//! attends across one), and the rows are served in a seeded order that a
//! checkpoint can resume exactly (epoch and index are the whole state).
//!
//! Q&A samples are what teach answering, and a plant's documents outweigh its
//! Q&A sets by far: every epoch holds every Q&A row, repeated until they make
//! up about a third of the epoch (at most [`MAX_QA_REPEAT`] times).

use serde::{Deserialize, Serialize};

/// Q&A rows are repeated until they are at least this share of an epoch ...
pub const QA_SHARE: f64 = 1.0 / 3.0;
/// ... but never more often than this, so a small Q&A set is not memorized verbatim.
pub const MAX_QA_REPEAT: usize = 8;

/// One training sequence before shifting and packing.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub ids: Vec<u32>,
    /// Per id: whether predicting this id counts in the loss. The first id is
    /// never a target.
    pub loss_on: Vec<bool>,
}

impl Sample {
    /// Plain text: every token after the first is a target.
    pub fn causal(ids: Vec<u32>) -> Self {
        let loss_on = vec![true; ids.len()];
        Self { ids, loss_on }
    }

    /// Target positions that count.
    pub fn target_count(&self) -> usize {
        self.loss_on.iter().skip(1).filter(|&&b| b).count()
    }
}

/// One packed row of `seq_len` positions (inputs already shifted against targets).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row {
    pub input: Vec<u32>,
    pub target: Vec<u32>,
    pub mask: Vec<u8>,
    pub segment: Vec<u32>,
}

impl Row {
    pub fn target_count(&self) -> usize {
        self.mask.iter().filter(|&&m| m != 0).count()
    }
}

/// Split causal samples longer than `seq_len + 1` into windows that predict
/// every token once (window i starts where window i-1's targets ended).
pub fn split_long(sample: Sample, seq_len: usize) -> Vec<Sample> {
    if sample.ids.len() <= seq_len + 1 {
        return vec![sample];
    }
    let mut out = Vec::new();
    let mut start = 0;
    while start + 1 < sample.ids.len() {
        let end = (start + seq_len + 1).min(sample.ids.len());
        let mut loss_on = sample.loss_on[start..end].to_vec();
        loss_on[0] = false;
        out.push(Sample { ids: sample.ids[start..end].to_vec(), loss_on });
        start += seq_len;
    }
    out
}

/// Cut a chat sample to `seq_len + 1` ids; `None` when no answer token survives.
pub fn truncate_chat(mut sample: Sample, seq_len: usize) -> Option<Sample> {
    sample.ids.truncate(seq_len + 1);
    sample.loss_on.truncate(seq_len + 1);
    (sample.target_count() > 0).then_some(sample)
}

/// Pack samples (each at most `seq_len + 1` ids) into rows of exactly
/// `seq_len` positions: first-fit over samples sorted longest first (ties in
/// input order), so the result depends on the samples alone. Padding
/// positions carry no loss and a segment of their own.
pub fn pack(samples: &[Sample], seq_len: usize) -> Vec<Row> {
    let mut order: Vec<usize> = (0..samples.len()).filter(|&i| samples[i].ids.len() >= 2).collect();
    order.sort_by_key(|&i| std::cmp::Reverse(samples[i].ids.len()));
    let mut rows: Vec<Row> = Vec::new();
    let mut used: Vec<usize> = Vec::new();
    let mut segs: Vec<u32> = Vec::new();
    for i in order {
        let s = &samples[i];
        let n = (s.ids.len() - 1).min(seq_len);
        let slot = used.iter().position(|&u| u + n <= seq_len);
        let r = match slot {
            Some(r) => r,
            None => {
                rows.push(Row {
                    input: Vec::with_capacity(seq_len),
                    target: Vec::with_capacity(seq_len),
                    mask: Vec::with_capacity(seq_len),
                    segment: Vec::with_capacity(seq_len),
                });
                used.push(0);
                segs.push(0);
                rows.len() - 1
            }
        };
        let row = &mut rows[r];
        row.input.extend_from_slice(&s.ids[..n]);
        row.target.extend_from_slice(&s.ids[1..=n]);
        row.mask.extend(s.loss_on[1..=n].iter().map(|&b| u8::from(b)));
        row.segment.extend(std::iter::repeat_n(segs[r], n));
        segs[r] += 1;
        used[r] += n;
    }
    for (row, seg) in rows.iter_mut().zip(segs) {
        let pad = seq_len - row.input.len();
        row.input.extend(std::iter::repeat_n(0, pad));
        row.target.extend(std::iter::repeat_n(0, pad));
        row.mask.extend(std::iter::repeat_n(0, pad));
        row.segment.extend(std::iter::repeat_n(seg, pad));
    }
    rows
}

/// Which rows an epoch holds and in what order, plus the read position.
#[derive(Debug)]
pub struct RowStream {
    doc_rows: Vec<Row>,
    qa_rows: Vec<Row>,
    qa_repeat: usize,
    seed: u64,
    pos: Position,
    order: Vec<u32>,
    order_epoch: Option<u64>,
}

/// The resumable read position: everything the data order depends on besides the seed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Position {
    pub epoch: u64,
    pub index: u64,
}

/// A micro-batch as flat row-major arrays (b rows of t positions).
#[derive(Debug, Clone, PartialEq)]
pub struct BatchData {
    pub rows: usize,
    pub seq_len: usize,
    pub input: Vec<u32>,
    pub target: Vec<u32>,
    pub mask: Vec<f32>,
    pub segment: Vec<u32>,
    pub target_tokens: usize,
}

impl BatchData {
    pub fn from_rows(rows: &[&Row]) -> Self {
        let t = rows.first().map(|r| r.input.len()).unwrap_or(0);
        let mut b = BatchData {
            rows: rows.len(),
            seq_len: t,
            input: Vec::with_capacity(rows.len() * t),
            target: Vec::with_capacity(rows.len() * t),
            mask: Vec::with_capacity(rows.len() * t),
            segment: Vec::with_capacity(rows.len() * t),
            target_tokens: 0,
        };
        for r in rows {
            b.input.extend_from_slice(&r.input);
            b.target.extend_from_slice(&r.target);
            b.mask.extend(r.mask.iter().map(|&m| f32::from(m)));
            b.segment.extend_from_slice(&r.segment);
            b.target_tokens += r.target_count();
        }
        b
    }
}

impl RowStream {
    pub fn new(doc_rows: Vec<Row>, qa_rows: Vec<Row>, seed: u64) -> Self {
        let qa_repeat = qa_repeat(doc_rows.len(), qa_rows.len());
        Self {
            doc_rows,
            qa_rows,
            qa_repeat,
            seed,
            pos: Position::default(),
            order: Vec::new(),
            order_epoch: None,
        }
    }

    pub fn qa_repeat(&self) -> usize {
        self.qa_repeat
    }

    pub fn is_empty(&self) -> bool {
        self.doc_rows.is_empty() && self.qa_rows.is_empty()
    }

    /// Rows in one epoch (Q&A rows counted with their repeats).
    pub fn epoch_len(&self) -> usize {
        self.doc_rows.len() + self.qa_rows.len() * self.qa_repeat
    }

    pub fn counts(&self) -> (usize, usize) {
        (self.doc_rows.len(), self.qa_rows.len())
    }

    pub fn position(&self) -> Position {
        self.pos
    }

    pub fn seek(&mut self, pos: Position) {
        self.pos = pos;
    }

    fn ensure_order(&mut self) {
        if self.order_epoch == Some(self.pos.epoch) {
            return;
        }
        let n_doc = self.doc_rows.len() as u32;
        let mut order: Vec<u32> = (0..n_doc).collect();
        for _ in 0..self.qa_repeat {
            order.extend((0..self.qa_rows.len() as u32).map(|i| n_doc + i));
        }
        let mut rng = SplitMix64::new(mix(self.seed, 0x5eed_0000 + self.pos.epoch));
        for i in (1..order.len()).rev() {
            let j = rng.below(i as u64 + 1) as usize;
            order.swap(i, j);
        }
        self.order = order;
        self.order_epoch = Some(self.pos.epoch);
    }

    /// The next `n` rows, wrapping into the next epoch (which is ordered afresh).
    pub fn next_rows(&mut self, n: usize) -> Vec<&Row> {
        let mut picked = Vec::with_capacity(n);
        if self.is_empty() {
            return Vec::new();
        }
        for _ in 0..n {
            self.ensure_order();
            let k = self.order[self.pos.index as usize] as usize;
            picked.push(k);
            self.pos.index += 1;
            if self.pos.index as usize >= self.order.len() {
                self.pos = Position { epoch: self.pos.epoch + 1, index: 0 };
            }
        }
        let n_doc = self.doc_rows.len();
        picked
            .into_iter()
            .map(|k| if k < n_doc { &self.doc_rows[k] } else { &self.qa_rows[k - n_doc] })
            .collect()
    }
}

fn qa_repeat(doc_rows: usize, qa_rows: usize) -> usize {
    if qa_rows == 0 || doc_rows == 0 {
        return 1;
    }
    let want = QA_SHARE / (1.0 - QA_SHARE) * doc_rows as f64 / qa_rows as f64;
    (want.ceil() as usize).clamp(1, MAX_QA_REPEAT)
}

/// Deterministic document split: documents ranked by a seeded hash of their
/// content hash; the first `round(fraction * n)` are held out (at least one
/// when the fraction is positive and there are two or more documents, never all).
/// Returns (train, held_out), each in the input order.
pub fn split_documents(docs: &[(i64, String)], fraction: f64, seed: u64) -> (Vec<i64>, Vec<i64>) {
    let n = docs.len();
    let mut held = ((fraction * n as f64).round() as usize).min(n.saturating_sub(1));
    if fraction > 0.0 && n >= 2 {
        held = held.max(1);
    }
    let mut ranked: Vec<(u64, usize)> =
        docs.iter().enumerate().map(|(i, (_, sha))| (mix(seed, fnv1a(sha.as_bytes())), i)).collect();
    ranked.sort_unstable();
    let held_idx: std::collections::HashSet<usize> = ranked.iter().take(held).map(|&(_, i)| i).collect();
    let mut train = Vec::new();
    let mut out = Vec::new();
    for (i, (id, _)) in docs.iter().enumerate() {
        if held_idx.contains(&i) {
            out.push(*id);
        } else {
            train.push(*id);
        }
    }
    (train, out)
}

fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// Combine two 64-bit values into a well-mixed seed.
pub fn mix(a: u64, b: u64) -> u64 {
    SplitMix64::new(a ^ b.rotate_left(32).wrapping_mul(0x9e37_79b9_7f4a_7c15)).next_u64()
}

/// SplitMix64: tiny, seedable, and its whole state is one u64 (checkpointable).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SplitMix64 {
    pub state: u64,
}

impl SplitMix64 {
    pub fn new(seed: u64) -> Self {
        Self { state: seed }
    }

    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in 0..n (n > 0), by rejection so no value is favoured.
    pub fn below(&mut self, n: u64) -> u64 {
        let zone = u64::MAX - u64::MAX % n;
        loop {
            let x = self.next_u64();
            if x < zone {
                return x % n;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(range: std::ops::Range<u32>) -> Sample {
        Sample::causal(range.collect())
    }

    #[test]
    fn packed_rows_keep_every_target_once_and_segments_apart() {
        let samples = vec![ids(0..10), ids(100..105), ids(200..208), ids(300..302)];
        let rows = pack(&samples, 12);
        // 9 + 4 + 7 + 1 targets; first-fit decreasing: [9+1? no: 9, then 7+4, then 1 fits row 0].
        let total: usize = rows.iter().map(Row::target_count).sum();
        assert_eq!(total, 9 + 4 + 7 + 1);
        for row in &rows {
            assert_eq!(row.input.len(), 12);
            for p in 0..12 {
                if row.mask[p] == 1 && p + 1 < 12 && row.segment[p + 1] == row.segment[p] {
                    // Within a segment the target at p is the input at p+1.
                    assert_eq!(row.target[p], row.input[p + 1]);
                }
            }
            // A segment's ids never mix two samples: every id in a segment shares its hundreds.
            for p in 1..12 {
                if row.segment[p] == row.segment[p - 1] && row.mask[p] == 1 {
                    assert_eq!(row.input[p] / 100, row.input[p - 1] / 100);
                }
            }
        }
    }

    #[test]
    fn chat_prompt_tokens_carry_no_loss_after_packing() {
        let s = Sample {
            ids: vec![1, 2, 3, 4, 50, 51, 52],
            loss_on: vec![false, false, false, false, true, true, true],
        };
        let rows = pack(&[s], 8);
        assert_eq!(rows.len(), 1);
        let r = &rows[0];
        assert_eq!(&r.target[..6], &[2, 3, 4, 50, 51, 52]);
        assert_eq!(&r.mask[..], &[0, 0, 0, 1, 1, 1, 0, 0]);
    }

    #[test]
    fn long_text_windows_predict_each_token_once() {
        let s = ids(0..25);
        let parts = split_long(s, 8);
        let targets: Vec<u32> = parts
            .iter()
            .flat_map(|p| p.ids.iter().zip(&p.loss_on).skip(1).filter(|(_, &l)| l).map(|(&i, _)| i))
            .collect();
        assert_eq!(targets, (1..25).collect::<Vec<_>>());
        assert!(parts.iter().all(|p| p.ids.len() <= 9));
    }

    #[test]
    fn truncated_chat_without_answer_is_dropped() {
        let s = Sample { ids: (0..20).collect(), loss_on: (0..20).map(|i| i >= 15).collect() };
        assert!(truncate_chat(s.clone(), 10).is_none());
        assert_eq!(truncate_chat(s, 16).unwrap().target_count(), 2);
    }

    #[test]
    fn stream_order_is_seeded_and_resumable() {
        let doc: Vec<Row> = pack(&(0..7).map(|k| ids(k * 10..k * 10 + 6)).collect::<Vec<_>>(), 5);
        let qa: Vec<Row> = pack(&[ids(900..906)], 5);
        let mut a = RowStream::new(doc.clone(), qa.clone(), 7);
        assert_eq!(a.qa_repeat(), 4);
        assert_eq!(a.epoch_len(), 11);
        let first: Vec<Row> = a.next_rows(15).into_iter().cloned().collect();
        assert_eq!(a.position(), Position { epoch: 1, index: 4 });
        // Every epoch holds every row (Q&A with its repeats).
        let mut b = RowStream::new(doc.clone(), qa.clone(), 7);
        let epoch0: Vec<Row> = b.next_rows(11).into_iter().cloned().collect();
        assert_eq!(epoch0.iter().filter(|r| r.input[0] == 900).count(), 4);
        // Seeking to a saved position continues identically.
        let mut c = RowStream::new(doc.clone(), qa.clone(), 7);
        c.seek(Position { epoch: 0, index: 9 });
        let resumed: Vec<Row> = c.next_rows(6).into_iter().cloned().collect();
        assert_eq!(resumed, first[9..15]);
        // A different seed gives a different order.
        let mut d = RowStream::new(doc, qa, 8);
        let other: Vec<Row> = d.next_rows(11).into_iter().cloned().collect();
        assert_ne!(other, epoch0);
    }

    #[test]
    fn split_is_deterministic_proportional_and_never_empty() {
        let docs: Vec<(i64, String)> = (0..20).map(|i| (i, format!("{i:064x}"))).collect();
        let (train, held) = split_documents(&docs, 0.1, 42);
        assert_eq!(held.len(), 2);
        assert_eq!(train.len(), 18);
        assert_eq!(split_documents(&docs, 0.1, 42), (train.clone(), held.clone()));
        let (_, held2) = split_documents(&docs, 0.1, 43);
        assert_ne!(held, held2);
        let two = &docs[..2];
        assert_eq!(split_documents(two, 0.1, 1).1.len(), 1);
        assert_eq!(split_documents(&docs[..1], 0.5, 1).1.len(), 0);
        assert_eq!(split_documents(&docs, 0.0, 1).1.len(), 0);
    }

    #[test]
    fn batch_flattens_rows_and_counts_targets() {
        let rows = pack(&[ids(0..5), ids(10..14)], 4);
        let refs: Vec<&Row> = rows.iter().collect();
        let b = BatchData::from_rows(&refs);
        assert_eq!((b.rows, b.seq_len), (2, 4));
        assert_eq!(b.input.len(), 8);
        assert_eq!(b.target_tokens, 4 + 3);
    }
}
