//! The socket's JSON-lines protocol, version 1 (docs/PROTOCOL.md): one
//! request object per line, one or more record objects per line back, each
//! carrying the request's `id`. Parsing only; what a verb does is in
//! `socket.rs`, `query.rs` and the loop.

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

pub const VERSION: u64 = 1;

/// A request's verb and arguments.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(tag = "verb", rename_all = "kebab-case", deny_unknown_fields)]
pub enum Verb {
    Ask {
        question: String,
        #[serde(default)]
        max_tokens: Option<usize>,
    },
    Status,
    IngestNow,
    TrainNow {
        #[serde(default)]
        steps: Option<usize>,
    },
    Pause,
    Resume,
    Promote {
        adapter: i64,
    },
    Rollback,
    Review {
        answer: i64,
        verdict: Verdict,
        #[serde(default)]
        text: Option<String>,
        #[serde(default)]
        note: Option<String>,
        /// The operator's name (floor terminals share a login).
        #[serde(default)]
        reviewer: Option<String>,
    },
    Docs {
        action: DocsAction,
        #[serde(default)]
        document: Option<i64>,
    },
    Events {
        /// The least severe level shown: error, warn, info or debug.
        #[serde(default)]
        level: Option<String>,
        #[serde(default)]
        component: Option<String>,
    },
    Reload,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    Approve,
    Reject,
    Correct,
}

impl Verdict {
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Approve => "approve",
            Verdict::Reject => "reject",
            Verdict::Correct => "correct",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DocsAction {
    List,
    Show,
}

/// Why a request line was refused, with the code clients match on.
#[derive(Debug, Clone, PartialEq)]
pub struct Refusal {
    pub id: Value,
    pub code: &'static str,
    pub message: String,
}

/// Parse one request line (without its newline).
pub fn parse(line: &[u8]) -> Result<(Value, Verb), Refusal> {
    let refuse = |id: &Value, code, message: String| Refusal { id: id.clone(), code, message };
    let text = std::str::from_utf8(line)
        .map_err(|e| refuse(&Value::Null, "bad-utf8", format!("the request is not UTF-8: {e}")))?;
    let v: Value = serde_json::from_str(text)
        .map_err(|e| refuse(&Value::Null, "bad-json", format!("the request is not JSON: {e}")))?;
    let Value::Object(mut obj) = v else {
        return Err(refuse(&Value::Null, "bad-request", "a request is one JSON object".into()));
    };
    let id = obj.remove("id").unwrap_or(Value::Null);
    match obj.remove("v") {
        Some(Value::Number(n)) if n.as_u64() == Some(VERSION) => {}
        Some(other) => {
            return Err(refuse(
                &id,
                "bad-version",
                format!("protocol version {other} is not served (this is v{VERSION})"),
            ))
        }
        None => return Err(refuse(&id, "bad-version", format!("\"v\" is missing (this is v{VERSION})"))),
    }
    let verb = match obj.get("verb") {
        Some(Value::String(s)) => s.clone(),
        _ => return Err(refuse(&id, "bad-request", "\"verb\" is missing or not a string".into())),
    };
    serde_json::from_value::<Verb>(Value::Object(obj)).map(|verb| (id.clone(), verb)).map_err(|e| {
        let msg = e.to_string();
        if msg.contains("unknown variant") {
            refuse(&id, "unknown-verb", format!("unknown verb {verb:?}"))
        } else {
            refuse(&id, "bad-arguments", format!("{verb}: {msg}"))
        }
    })
}

pub fn error(id: &Value, code: &str, message: &str) -> Value {
    json!({"id": id, "error": {"code": code, "message": message}})
}

pub fn ok(id: &Value, result: Value) -> Value {
    json!({"id": id, "ok": true, "result": result})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ask_parses_with_its_id() {
        let (id, v) = parse(r#"{"v":1,"id":7,"verb":"ask","question":"ما هو E-17؟"}"#.as_bytes()).unwrap();
        assert_eq!(id, json!(7));
        assert_eq!(v, Verb::Ask { question: "ما هو E-17؟".into(), max_tokens: None });
    }

    #[test]
    fn bad_lines_get_their_codes() {
        assert_eq!(parse(b"{nope").unwrap_err().code, "bad-json");
        assert_eq!(parse(&[0xff, 0xfe]).unwrap_err().code, "bad-utf8");
        assert_eq!(parse(br#"{"v":2,"verb":"status"}"#).unwrap_err().code, "bad-version");
        let e = parse(br#"{"v":1,"id":"x","verb":"fly"}"#).unwrap_err();
        assert_eq!((e.code, e.id), ("unknown-verb", json!("x")));
        assert_eq!(parse(br#"{"v":1,"verb":"promote"}"#).unwrap_err().code, "bad-arguments");
        assert_eq!(parse(br#"[1]"#).unwrap_err().code, "bad-request");
    }

    #[test]
    fn review_and_docs_parse() {
        let (_, v) =
            parse(br#"{"v":1,"verb":"review","answer":3,"verdict":"correct","text":"32 bar"}"#).unwrap();
        assert!(matches!(v, Verb::Review { answer: 3, verdict: Verdict::Correct, .. }));
        let (_, v) = parse(br#"{"v":1,"verb":"docs","action":"show","document":2}"#).unwrap();
        assert_eq!(v, Verb::Docs { action: DocsAction::Show, document: Some(2) });
    }
}
