//! Question–answer sets: CSV (any of `,` `;` tab `|`, BOM, quoted multi-line
//! fields) with question/answer or Alpaca instruction/input/output columns,
//! and JSONL in the Alpaca, ShareGPT, OpenAI-messages or question/answer
//! shapes. Bad lines are reported with their line numbers; good lines are
//! kept. The pairs also become the set's document text.

use serde_json::Value;

use super::plain::{decode_reject, looks_binary};
use super::{train_text, Extracted, QaPair};
use crate::ingest::reason::Reject;
use crate::text::decode::decode;

/// Warnings kept per file; past this only a count is added.
const MAX_WARNINGS: usize = 100;

const QUESTION: &[&str] = &["question", "q", "prompt", "query", "instruction", "سؤال", "السؤال", "الاستفسار"];
const INPUT: &[&str] = &["input", "context", "المدخل"];
const ANSWER: &[&str] = &[
    "answer",
    "a",
    "response",
    "output",
    "completion",
    "reply",
    "جواب",
    "الجواب",
    "إجابة",
    "الإجابة",
    "اجابة",
    "الاجابة",
];
const SYSTEM: &[&str] = &["system", "system_prompt"];

struct Sink {
    pairs: Vec<QaPair>,
    warnings: Vec<String>,
    bad: usize,
}

impl Sink {
    fn new() -> Self {
        Self { pairs: Vec::new(), warnings: Vec::new(), bad: 0 }
    }
    fn bad(&mut self, line: u64, what: impl std::fmt::Display) {
        self.bad += 1;
        if self.warnings.len() < MAX_WARNINGS {
            self.warnings.push(format!("line {line}: {what}"));
        }
    }
    fn pair(&mut self, line: u64, system: Option<&str>, q: &str, a: &str) {
        let (q, a) = (q.trim(), a.trim());
        if q.is_empty() || a.is_empty() {
            self.bad(line, "empty question or answer");
            return;
        }
        self.pairs.push(QaPair {
            system: system.map(str::trim).filter(|s| !s.is_empty()).map(train_text),
            question: train_text(q),
            answer: train_text(a),
        });
    }
    fn finish(mut self, encoding: &str) -> Result<Extracted, Reject> {
        if self.bad > self.warnings.len() {
            self.warnings.push(format!("… {} more bad lines", self.bad - self.warnings.len()));
        }
        if self.pairs.is_empty() {
            let detail = if self.warnings.is_empty() {
                "the file has no rows".to_string()
            } else {
                self.warnings.iter().take(3).cloned().collect::<Vec<_>>().join("; ")
            };
            return Err(Reject::NoQa { detail });
        }
        let mut text = String::new();
        for p in &self.pairs {
            text.push_str(&p.question);
            text.push('\n');
            text.push_str(&p.answer);
            text.push_str("\n\n");
        }
        Ok(Extracted { text, encoding: Some(encoding.to_string()), warnings: self.warnings, qa: self.pairs })
    }
}

fn decoded(bytes: &[u8]) -> Result<(String, &'static str), Reject> {
    let d = decode(bytes).map_err(decode_reject)?;
    if looks_binary(&d.text) {
        return Err(Reject::Binary);
    }
    let t = d.text.strip_prefix('\u{feff}').map(str::to_string).unwrap_or(d.text);
    Ok((t, d.encoding))
}

/// The delimiter that splits the header line (outside quotes) most often.
fn sniff_delimiter(text: &str, tsv: bool) -> u8 {
    let mut counts = [0usize; 4];
    let cands = [b',', b';', b'\t', b'|'];
    let mut quoted = false;
    for &b in text.as_bytes() {
        match b {
            b'"' => quoted = !quoted,
            b'\n' if !quoted => break,
            _ if !quoted => {
                if let Some(i) = cands.iter().position(|&c| c == b) {
                    counts[i] += 1;
                }
            }
            _ => {}
        }
    }
    let best = (0..4).max_by_key(|&i| (counts[i], usize::from(i == 2 && tsv))).unwrap_or(0);
    if counts[best] == 0 {
        if tsv {
            b'\t'
        } else {
            b','
        }
    } else {
        cands[best]
    }
}

fn column(header: &[String], names: &[&str]) -> Option<usize> {
    header.iter().position(|h| names.contains(&h.as_str()))
}

pub fn extract_csv(bytes: &[u8], tsv: bool) -> Result<Extracted, Reject> {
    let (text, encoding) = decoded(bytes)?;
    let delim = sniff_delimiter(&text, tsv);
    let mut rdr = csv::ReaderBuilder::new()
        .delimiter(delim)
        .has_headers(false)
        .flexible(true)
        .from_reader(text.as_bytes());
    let mut records = rdr.records();
    let header: Vec<String> = match records.next() {
        Some(Ok(h)) => h.iter().map(|c| c.trim().trim_start_matches('\u{feff}').to_lowercase()).collect(),
        Some(Err(e)) => return Err(Reject::NoQa { detail: format!("line 1: {e}") }),
        None => return Err(Reject::NoQa { detail: "the file has no rows".into() }),
    };
    let (Some(qi), Some(ai)) = (column(&header, QUESTION), column(&header, ANSWER)) else {
        return Err(Reject::NoQa {
            detail: format!(
                "no question and answer columns in the header ({}); expected e.g. question,answer or instruction,input,output",
                header.join(", ")
            ),
        });
    };
    let ii = column(&header, INPUT).filter(|&i| i != qi && i != ai);
    let si = column(&header, SYSTEM);
    let mut sink = Sink::new();
    for rec in records {
        let rec = match rec {
            Ok(r) => r,
            Err(e) => {
                let line = e.position().map(|p| p.line()).unwrap_or(0);
                sink.bad(line, e);
                continue;
            }
        };
        let line = rec.position().map(|p| p.line()).unwrap_or(0);
        if rec.iter().all(|f| f.trim().is_empty()) {
            continue;
        }
        if rec.len() != header.len() {
            sink.bad(line, format!("expected {} fields, found {}", header.len(), rec.len()));
            continue;
        }
        let field = |i: usize| rec.get(i).unwrap_or("");
        let mut q = field(qi).trim().to_string();
        if let Some(ii) = ii {
            let input = field(ii).trim();
            if !input.is_empty() {
                q = format!("{q}\n\n{input}");
            }
        }
        sink.pair(line, si.map(field), &q, field(ai));
    }
    sink.finish(encoding)
}

pub fn extract_jsonl(bytes: &[u8]) -> Result<Extracted, Reject> {
    let (text, encoding) = decoded(bytes)?;
    let mut sink = Sink::new();
    for (i, line) in text.lines().enumerate() {
        let n = i as u64 + 1;
        if line.trim().is_empty() {
            continue;
        }
        let v: Value = match serde_json::from_str(line) {
            Ok(v) => v,
            Err(e) => {
                sink.bad(n, format!("not JSON: {e}"));
                continue;
            }
        };
        let before = (sink.pairs.len(), sink.bad);
        read_object(&v, n, &mut sink);
        if (sink.pairs.len(), sink.bad) == before {
            sink.bad(n, "no question/answer (expected Alpaca, ShareGPT, OpenAI messages or question/answer)");
        }
    }
    sink.finish(encoding)
}

fn str_field<'a>(v: &'a Value, keys: &[&str]) -> Option<&'a str> {
    keys.iter().find_map(|k| v.get(*k).and_then(Value::as_str))
}

/// OpenAI content is a string or a list of `{type: "text", text}` parts.
fn content_text(v: &Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s.clone()),
        Value::Array(parts) => {
            let t: Vec<&str> = parts.iter().filter_map(|p| p.get("text").and_then(Value::as_str)).collect();
            (!t.is_empty()).then(|| t.join("\n"))
        }
        _ => None,
    }
}

fn read_object(v: &Value, line: u64, sink: &mut Sink) {
    let turns = v
        .get("messages")
        .and_then(Value::as_array)
        .map(|m| (m, "role", "content"))
        .or_else(|| v.get("conversations").and_then(Value::as_array).map(|m| (m, "from", "value")));
    if let Some((msgs, role_key, text_key)) = turns {
        read_turns(msgs, role_key, text_key, line, sink);
        return;
    }
    let system = str_field(v, SYSTEM);
    if let (Some(q), Some(a)) = (str_field(v, &["instruction"]), str_field(v, &["output"])) {
        let q = match str_field(v, &["input"]).map(str::trim).filter(|s| !s.is_empty()) {
            Some(input) => format!("{}\n\n{input}", q.trim()),
            None => q.to_string(),
        };
        sink.pair(line, system, &q, a);
    } else if let (Some(q), Some(a)) = (str_field(v, QUESTION), str_field(v, ANSWER)) {
        sink.pair(line, system, q, a);
    }
}

/// Every user turn followed by an assistant turn is one pair.
fn read_turns(msgs: &[Value], role_key: &str, text_key: &str, line: u64, sink: &mut Sink) {
    let mut system: Option<String> = None;
    let mut question: Option<String> = None;
    for m in msgs {
        let role = m.get(role_key).and_then(Value::as_str).unwrap_or("");
        let Some(text) = m.get(text_key).and_then(content_text) else { continue };
        match role {
            "system" => system = Some(text),
            "user" | "human" => question = Some(text),
            "assistant" | "gpt" | "model" | "bot" => {
                if let Some(q) = question.take() {
                    sink.pair(line, system.as_deref(), &q, &text);
                }
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn semicolon_csv_with_bom_and_multiline_fields() {
        let csv =
            "\u{feff}السؤال;الجواب\n\"ما هو ضغط التشغيل؟\";\"6 بار\nعلى الأكثر\"\nسؤال بلا جواب;\nq;a;extra\n";
        let e = extract_csv(csv.as_bytes(), false).unwrap();
        assert_eq!(e.qa.len(), 1);
        assert_eq!(e.qa[0].answer, "6 بار\nعلى الأكثر");
        assert_eq!(e.warnings.len(), 2, "{:?}", e.warnings);
        assert!(
            e.warnings[0].starts_with("line 4:") && e.warnings[1].starts_with("line 5:"),
            "{:?}",
            e.warnings
        );
    }

    #[test]
    fn alpaca_columns_and_pipe_delimiter() {
        let csv = "instruction|input|output\nTranslate|valve|صمام\nName the unit||bar\n";
        let e = extract_csv(csv.as_bytes(), false).unwrap();
        assert_eq!(e.qa.len(), 2);
        assert_eq!(e.qa[0].question, "Translate\n\nvalve");
    }

    #[test]
    fn jsonl_shapes_and_bad_lines() {
        let j = [
            r#"{"instruction":"What is PPE?","input":"","output":"Protective equipment."}"#,
            r#"{"conversations":[{"from":"human","value":"س1"},{"from":"gpt","value":"ج1"},{"from":"human","value":"س2"},{"from":"gpt","value":"ج2"}]}"#,
            r#"{"messages":[{"role":"system","content":"Be brief."},{"role":"user","content":"Q"},{"role":"assistant","content":[{"type":"text","text":"A"}]}]}"#,
            "{not json",
            r#"{"question":"ما الضغط؟","answer":"6 بار"}"#,
            r#"{"title":"no pair here"}"#,
        ]
        .join("\n");
        let e = extract_jsonl(j.as_bytes()).unwrap();
        assert_eq!(e.qa.len(), 5);
        assert_eq!(e.qa[3].system.as_deref(), Some("Be brief."));
        assert_eq!(e.warnings.len(), 2);
        assert!(e.warnings[0].starts_with("line 4:") && e.warnings[1].starts_with("line 6:"));
    }

    #[test]
    fn csv_without_qa_columns_is_refused_naming_the_header() {
        let r = extract_csv(b"name,age\nx,1\n", false).unwrap_err();
        assert!(matches!(&r, Reject::NoQa { detail } if detail.contains("name, age")), "{r}");
    }
}
