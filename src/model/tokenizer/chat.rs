//! Chat templates: how a system prompt, a user message and an answer are laid
//! out as text for a model. The model's own Jinja source (`tokenizer.chat_template`
//! in GGUF, `chat_template` in tokenizer_config.json) is rendered with
//! minijinja ([`ModelTemplate`]), so training and serving lay prompts out
//! exactly as the model was tuned. The family layouts written out here
//! ([`ChatTemplate`]) name the end-of-turn token, and lay the prompt out when a
//! model ships no template or one that does not render; the tests hold the two
//! to the same text for the families we know.

use minijinja::{context, Environment, Error as JinjaError, ErrorKind};

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

/// A model's own chat template, compiled once.
pub struct ModelTemplate {
    env: Environment<'static>,
    bos: String,
    eos: String,
}

/// The template's name inside its environment.
const NAME: &str = "chat";

impl ModelTemplate {
    /// Compile `source` and render one probe conversation, so a template that
    /// cannot lay out a plain question is refused here, at load, not at the
    /// first question.
    pub fn compile(source: &str, bos: Option<&str>, eos: Option<&str>) -> Result<Self> {
        let mut env = Environment::new();
        // The settings templates are written for (Hugging Face's renderer).
        env.set_trim_blocks(true);
        env.set_lstrip_blocks(true);
        // Python string methods (`.strip()`, `.startswith()`) that templates call.
        env.set_unknown_method_callback(minijinja_contrib::pycompat::unknown_method_callback);
        env.add_function("raise_exception", |msg: String| -> Result<String, JinjaError> {
            Err(JinjaError::new(ErrorKind::InvalidOperation, msg))
        });
        env.add_template_owned(NAME, source.to_string()).map_err(template_error)?;
        let t =
            Self { env, bos: bos.unwrap_or_default().to_string(), eos: eos.unwrap_or_default().to_string() };
        let probe = "\u{2063}probe\u{2063}";
        let text = t.render(None, probe)?;
        if !text.contains(probe) {
            return Err(TokError::Template {
                reason: "the rendered prompt leaves out the user's message".into(),
            });
        }
        Ok(t)
    }

    /// Text of a one-question conversation up to where the answer begins.
    pub fn render(&self, system: Option<&str>, user: &str) -> Result<String> {
        if user.trim().is_empty() {
            return Err(TokError::EmptyMessage);
        }
        let mut messages = Vec::with_capacity(2);
        if let Some(sys) = system {
            messages.push(context! { role => "system", content => sys });
        }
        messages.push(context! { role => "user", content => user });
        let tpl = self.env.get_template(NAME).map_err(template_error)?;
        tpl.render(context! {
            messages => messages,
            add_generation_prompt => true,
            bos_token => self.bos.as_str(),
            eos_token => self.eos.as_str(),
        })
        .map_err(template_error)
    }

    /// The text of the BOS token the template may write itself.
    pub fn bos_text(&self) -> &str {
        &self.bos
    }
}

fn template_error(e: JinjaError) -> TokError {
    TokError::Template { reason: e.to_string() }
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

    /// The model's template and the family layout give the same text.
    fn same_as_layout(src: &str, arch: &str, bos: Option<&str>, eos: Option<&str>) {
        let layout = ChatTemplate::detect(Some(src), Some(arch));
        let jinja = ModelTemplate::compile(src, bos, eos).unwrap();
        for system in [None, Some("Answer from the sources.")] {
            for user in ["hi", "كم ضغط الصمام V-12؟"] {
                let mut text = jinja.render(system, user).unwrap();
                if let Some(b) = bos {
                    text = text.strip_prefix(b).unwrap_or(&text).to_string();
                }
                assert_eq!(text, layout.render(system, user).unwrap(), "{arch} {system:?} {user}");
            }
        }
    }

    #[test]
    fn model_templates_render_as_their_family_layouts() {
        same_as_layout(SMOLLM2, "llama", None, Some("<|im_end|>"));
        let qwen = "{%- if messages[0]['role'] == 'system' %}{{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}{%- else %}{{- '<|im_start|>system\\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\\n' }}{%- endif %}{%- for message in messages %}{%- if message.role != 'system' %}{{- '<|im_start|>' + message.role + '\\n' + message.content.strip() + '<|im_end|>\\n' }}{%- endif %}{%- endfor %}{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}";
        same_as_layout(qwen, "qwen2", None, Some("<|im_end|>"));
        let l3 = "{{- bos_token }}{%- for m in messages %}{{- '<|start_header_id|>' + m['role'] + '<|end_header_id|>\n\n' + m['content'] | trim + '<|eot_id|>' }}{%- endfor %}{%- if add_generation_prompt %}{{- '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{%- endif %}";
        same_as_layout(l3, "llama", Some("<|begin_of_text|>"), Some("<|eot_id|>"));
        let z = "{% for m in messages %}{% if m['role'] == 'user' %}{{ '<|user|>\n' + m['content'] + eos_token + '\n' }}{% elif m['role'] == 'system' %}{{ '<|system|>\n' + m['content'] + eos_token + '\n' }}{% endif %}{% if loop.last and add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}{% endfor %}";
        same_as_layout(z, "llama", Some("<s>"), Some("</s>"));
    }

    #[test]
    fn templates_that_cannot_lay_out_a_question_are_refused() {
        let raises = "{{ raise_exception('Conversation roles must alternate') }}";
        let e = ModelTemplate::compile(raises, None, None).err().unwrap();
        assert!(e.to_string().contains("roles must alternate"), "{e}");
        let drops_user = "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}";
        assert!(ModelTemplate::compile(drops_user, None, None).is_err());
        assert!(ModelTemplate::compile("{% for %}", None, None).is_err());
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
