//! Chat templates: how a system prompt, a user message and an answer are laid
//! out as text for a given model family. The Jinja source shipped with a model
//! (`tokenizer.chat_template` in GGUF, `chat_template` in tokenizer_config.json)
//! is only read to recognise the family and its default system prompt; the
//! layouts themselves are written out here, so no template engine runs.

use crate::model::tokenizer::{Result, TokError};

/// The layouts we render.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChatTemplate {
    /// `<|im_start|>role\n…<|im_end|>\n` (Qwen2, SmolLM2-Instruct). Some templates
    /// insert a system turn when the conversation has none: that text is kept here.
    ChatMl { default_system: Option<String> },
    /// `<|start_header_id|>role<|end_header_id|>\n\n…<|eot_id|>` (Llama 3).
    Llama3,
    /// `<|user|>\n…</s>\n<|assistant|>\n` (Zephyr, TinyLlama-Chat).
    Zephyr,
    /// No chat layout known: prompts are rendered as plain text.
    None,
}

impl ChatTemplate {
    /// Recognise a template from its Jinja source (preferred) or the architecture.
    pub fn detect(source: Option<&str>, arch: Option<&str>) -> Self {
        match source {
            Some(src) if src.contains("<|im_start|>") => {
                ChatTemplate::ChatMl { default_system: chatml_default_system(src) }
            }
            Some(src) if src.contains("<|start_header_id|>") => ChatTemplate::Llama3,
            Some(src) if src.contains("<|user|>") && src.contains("<|assistant|>") => ChatTemplate::Zephyr,
            // Qwen2 checkpoints without a template still speak ChatML.
            _ if arch == Some("qwen2") => {
                ChatTemplate::ChatMl { default_system: Some("You are a helpful assistant.".to_string()) }
            }
            _ => ChatTemplate::None,
        }
    }

    pub fn kind(&self) -> &'static str {
        match self {
            ChatTemplate::ChatMl { .. } => "chatml",
            ChatTemplate::Llama3 => "llama3",
            ChatTemplate::Zephyr => "zephyr",
            ChatTemplate::None => "none",
        }
    }

    /// The token that closes a turn (one id in the vocabulary), if the layout has one.
    pub fn end_of_turn(&self) -> Option<&'static str> {
        match self {
            ChatTemplate::ChatMl { .. } => Some("<|im_end|>"),
            ChatTemplate::Llama3 => Some("<|eot_id|>"),
            ChatTemplate::Zephyr => Some("</s>"),
            ChatTemplate::None => None,
        }
    }

    /// Text of a one-question conversation up to where the answer begins.
    pub fn render(&self, system: Option<&str>, user: &str) -> Result<String> {
        if user.trim().is_empty() {
            return Err(TokError::EmptyMessage);
        }
        let mut out = String::new();
        match self {
            ChatTemplate::ChatMl { default_system } => {
                if let Some(sys) = system.or(default_system.as_deref()) {
                    out.push_str(&format!("<|im_start|>system\n{sys}<|im_end|>\n"));
                }
                out.push_str(&format!("<|im_start|>user\n{user}<|im_end|>\n<|im_start|>assistant\n"));
            }
            ChatTemplate::Llama3 => {
                if let Some(sys) = system {
                    out.push_str(&format!("<|start_header_id|>system<|end_header_id|>\n\n{sys}<|eot_id|>"));
                }
                out.push_str(&format!(
                    "<|start_header_id|>user<|end_header_id|>\n\n{user}<|eot_id|>\
                     <|start_header_id|>assistant<|end_header_id|>\n\n"
                ));
            }
            ChatTemplate::Zephyr => {
                if let Some(sys) = system {
                    out.push_str(&format!("<|system|>\n{sys}</s>\n"));
                }
                out.push_str(&format!("<|user|>\n{user}</s>\n<|assistant|>\n"));
            }
            ChatTemplate::None => {
                if let Some(sys) = system {
                    out.push_str(sys);
                    out.push_str("\n\n");
                }
                out.push_str(&format!("Question: {user}\nAnswer:"));
            }
        }
        Ok(out)
    }
}

/// The literal system text a ChatML template inserts when none is given:
/// the first `<|im_start|>system\n…<|im_end|>` whose body is plain text rather
/// than an expression.
fn chatml_default_system(src: &str) -> Option<String> {
    // Templates write the newline either as itself or as a Jinja `\n` escape.
    let src = src.replace("\\n", "\n");
    let head = "<|im_start|>system\n";
    let mut rest = src.as_str();
    while let Some(at) = rest.find(head) {
        rest = &rest[at + head.len()..];
        let Some(end) = rest.find("<|im_end|>") else { break };
        let body = &rest[..end];
        if !body.is_empty() && !body.contains(['\'', '"', '{', '}', '+']) {
            return Some(body.to_string());
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    const SMOLLM2: &str = "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

    #[test]
    fn smollm2_template_keeps_its_default_system_prompt() {
        let t = ChatTemplate::detect(Some(SMOLLM2), Some("llama"));
        assert_eq!(
            t,
            ChatTemplate::ChatMl {
                default_system: Some(
                    "You are a helpful AI assistant named SmolLM, trained by Hugging Face".into()
                )
            }
        );
        let text = t.render(None, "hi").unwrap();
        assert_eq!(
            text,
            "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n\
             <|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"
        );
        let text = t.render(Some("Be brief."), "hi").unwrap();
        assert!(text.starts_with("<|im_start|>system\nBe brief.<|im_end|>\n"));
    }

    #[test]
    fn qwen25_template_default_system_skips_the_tools_branch() {
        // The shape of Qwen2.5's template: a system expression first, the literal default later.
        let src = "{%- if messages[0]['role'] == 'system' %}{{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}{%- else %}{{- '<|im_start|>system\\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\\n' }}{%- endif %}";
        let t = ChatTemplate::detect(Some(src), Some("qwen2"));
        assert_eq!(
            t,
            ChatTemplate::ChatMl {
                default_system: Some(
                    "You are Qwen, created by Alibaba Cloud. You are a helpful assistant.".into()
                )
            }
        );
    }

    #[test]
    fn llama3_and_zephyr_templates_are_recognised() {
        let l3 = "{{ bos_token }}{% for m in messages %}{{ '<|start_header_id|>' + m['role'] + '<|end_header_id|>\n\n' + m['content'] + '<|eot_id|>' }}{% endfor %}";
        let t = ChatTemplate::detect(Some(l3), Some("llama"));
        assert_eq!(t, ChatTemplate::Llama3);
        assert_eq!(
            t.render(None, "q").unwrap(),
            "<|start_header_id|>user<|end_header_id|>\n\nq<|eot_id|><|start_header_id|>assistant<|end_header_id|>\n\n"
        );
        let z = "{% for m in messages %}{% if m['role'] == 'user' %}{{ '<|user|>\n' + m['content'] + eos_token }}{% elif m['role'] == 'assistant' %}{{ '<|assistant|>\n' }}{% endif %}{% endfor %}";
        assert_eq!(ChatTemplate::detect(Some(z), Some("llama")), ChatTemplate::Zephyr);
        assert_eq!(ChatTemplate::detect(None, Some("llama")), ChatTemplate::None);
    }
}
