//! The tokenizer rebuilt from a real GGUF file (SmolLM2-135M-Instruct): exact
//! round trips, agreement with the file's own vocabulary, special tokens as
//! single ids, chat masks, and streaming that never splits a character.

use std::path::PathBuf;

use candle_core::quantized::gguf_file::Content;
use warsha::model::tokenizer::{Tok, TokSource};

fn gguf() -> Option<PathBuf> {
    let p = std::env::var_os("WARSHA_TEST_GGUF")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/work/models/SmolLM2-135M-Instruct.Q4_1.gguf"));
    if p.is_file() {
        Some(p)
    } else {
        eprintln!("skip: no model at {} (set WARSHA_TEST_GGUF)", p.display());
        None
    }
}

/// The file's own token strings, read independently of `Tok`.
fn vocab(path: &std::path::Path) -> Vec<String> {
    let mut f = std::fs::File::open(path).unwrap();
    let c = Content::read(&mut f).unwrap();
    c.metadata["tokenizer.ggml.tokens"]
        .to_vec()
        .unwrap()
        .iter()
        .map(|v| v.to_string().unwrap().clone())
        .collect()
}

const TEXTS: &[&str] = &[
    "Replace the hydraulic filter every 500 hours.",
    "يجب استبدال فلتر الزيت الهيدروليكي كل ٥٠٠ ساعة تشغيل.",
    "اضغط على زر STOP ثم افتح الصمام V-12 (الضغط 6 bar).",
    "عايز أعرف إزاي أغيّر السير؟ وَالْمِضَخَّةُ تَعْمَلُ",
    "Serial 2024-11-29, lot #00731, 3.14159 and 1,000,000",
    "Emoji 🔧⚙️👷🏽‍♀️ and CJK 工厂 and tabs\tand\nnewlines\n\n  spaces  ",
    "",
];

#[test]
fn gguf_tokenizer_round_trips_arabic_english_mixed_digits_emoji() {
    let Some(path) = gguf() else { return };
    let tok = Tok::for_model(&path).unwrap();
    assert_eq!(tok.source(), &TokSource::Embedded);
    assert_eq!(tok.vocab_size(), 49152);
    for text in TEXTS {
        let ids = tok.encode(text, false).unwrap();
        assert_eq!(&tok.decode(&ids).unwrap(), text, "ids {ids:?}");
    }
}

#[test]
fn gguf_tokenizer_ids_match_the_embedded_vocabulary() {
    let Some(path) = gguf() else { return };
    let tok = Tok::for_model(&path).unwrap();
    let vocab = vocab(&path);
    let id_of = |s: &str| vocab.iter().position(|t| t == s).unwrap() as u32;
    // Whole words that are single entries of the vocabulary (Ġ is GPT-2's space).
    for (text, token) in
        [(" the", "Ġthe"), ("Hello", "Hello"), (" hydraulic", "Ġhydraulic"), (" filter", "Ġfilter")]
    {
        assert_eq!(tok.encode(text, false).unwrap(), vec![id_of(token)], "{text:?}");
    }
    // SmolLM2 splits digits one by one.
    let ids = tok.encode("2024", false).unwrap();
    assert_eq!(ids, ["2", "0", "2", "4"].map(id_of).to_vec());
    // Every id decodes to text its vocabulary string describes.
    let ids = tok.encode("The pump is running.", false).unwrap();
    let pieces: Vec<&str> = ids.iter().map(|&i| vocab[i as usize].as_str()).collect();
    assert_eq!(pieces, ["The", "Ġpump", "Ġis", "Ġrunning", "."]);
}

#[test]
fn special_tokens_encode_as_single_ids_and_are_stop_tokens() {
    let Some(path) = gguf() else { return };
    let tok = Tok::for_model(&path).unwrap();
    let start = tok.token_id("<|im_start|>").unwrap();
    let end = tok.token_id("<|im_end|>").unwrap();
    assert_eq!((start, end), (1, 2));
    let ids = tok.encode("<|im_start|>user\nhi<|im_end|>", false).unwrap();
    assert_eq!(ids.first(), Some(&start));
    assert_eq!(ids.last(), Some(&end));
    assert_eq!(ids.iter().filter(|&&i| i == start || i == end).count(), 2);
    assert!(tok.eos_ids().contains(&end));
    // The file says add_bos_token = false: no BOS in a raw encoding.
    assert!(!tok.add_bos());
    assert_eq!(tok.bos_id(), Some(1));
    // Control tokens are left out of decoded text.
    assert_eq!(tok.decode(&ids).unwrap(), "user\nhi");
}

#[test]
fn chat_sample_mask_covers_exactly_the_answer_and_end_of_turn() {
    let Some(path) = gguf() else { return };
    let tok = Tok::for_model(&path).unwrap();
    assert_eq!(tok.template().kind(), "chatml");
    // Prompts are laid out by the model's own Jinja template, and give the
    // same ids as the ChatML layout for this model.
    assert!(tok.uses_own_template());
    for (system, user) in
        [(None, "كم ضغط الصمام V-12؟"), (Some("Answer from the sources."), "What is IM-07?")]
    {
        let layout = tok.template().render(system, user).unwrap();
        assert_eq!(tok.chat_prompt(system, user).unwrap(), tok.encode(&layout, tok.add_bos()).unwrap());
    }
    let answer = "Close valve V-12, then open the bleed screw.";
    let (ids, mask) = tok.chat_sample(None, "How do I bleed the pump?", answer).unwrap();
    assert_eq!(ids.len(), mask.len());
    let prompt = tok.chat_prompt(None, "How do I bleed the pump?").unwrap();
    assert_eq!(&ids[..prompt.len()], &prompt[..]);
    assert!(mask[..prompt.len()].iter().all(|m| !m));
    assert!(mask[prompt.len()..].iter().all(|m| *m));
    let answer_ids: Vec<u32> = ids[prompt.len()..ids.len() - 1].to_vec();
    assert_eq!(tok.decode(&answer_ids).unwrap(), answer);
    assert_eq!(*ids.last().unwrap(), tok.token_id("<|im_end|>").unwrap());
    // The template's own default system prompt appears when none is given.
    let text = tok.decode(&prompt).unwrap();
    assert!(text.starts_with("system\nYou are a helpful AI assistant named SmolLM"), "{text:?}");
    let with_sys = tok.decode(&tok.chat_prompt(Some("Answer briefly."), "q").unwrap()).unwrap();
    assert_eq!(with_sys, "system\nAnswer briefly.\nuser\nq\nassistant\n");
}

#[test]
fn arabic_streaming_emits_only_whole_characters() {
    let Some(path) = gguf() else { return };
    let tok = Tok::for_model(&path).unwrap();
    for text in TEXTS {
        let ids = tok.encode(text, false).unwrap();
        let mut stream = tok.stream();
        let mut pieces = Vec::new();
        for &id in &ids {
            if let Some(p) = stream.push(id).unwrap() {
                assert!(!p.contains('\u{FFFD}'), "split character in {p:?}");
                pieces.push(p);
            }
        }
        pieces.extend(stream.finish());
        assert_eq!(pieces.concat(), tok.decode(&ids).unwrap());
    }
    // SmolLM2's English vocabulary spells Arabic byte by byte: most ids are half a character.
    let ids = tok.encode("مضخة", false).unwrap();
    assert!(ids.len() > 4, "{ids:?}");
}

#[test]
fn streaming_a_truncated_character_ends_in_a_replacement_like_decode() {
    let Some(path) = gguf() else { return };
    let tok = Tok::for_model(&path).unwrap();
    let ids = tok.encode("ساعة", false).unwrap();
    let cut = &ids[..ids.len() - 1];
    let mut stream = tok.stream();
    let mut out = String::new();
    for &id in cut {
        out.extend(stream.push(id).unwrap());
    }
    out.extend(stream.finish());
    assert_eq!(out, tok.decode(cut).unwrap());
}

/// Ids from llama.cpp's `llama-tokenize --ids` (0c1e57098) on the same files.
const LLAMA_CPP_TEXTS: [&str; 4] = [
    "يجب استبدال فلتر الزيت الهيدروليكي كل ٥٠٠ ساعة تشغيل.",
    "اضغط على زر STOP ثم افتح الصمام V-12 (الضغط 6 bar).",
    "Serial 2024-11-29, lot #00731, 3.14159",
    "Emoji 🔧⚙️ and   spaces  \n newline",
];

#[test]
fn smollm2_ids_match_llama_cpp_on_arabic_digits_and_spaces() {
    let Some(path) = gguf() else { return };
    let tok = Tok::for_model(&path).unwrap();
    let expected: [&[u32]; 4] = [
        &[
            23339, 163, 122, 31462, 47141, 30914, 27438, 31462, 27749, 22208, 16936, 219, 12667, 27438,
            20602, 27819, 163, 127, 23339, 27438, 27819, 22682, 23339, 27749, 20602, 23939, 12667, 23339,
            48934, 23339, 16936, 221, 12667, 216, 164, 115, 164, 250, 164, 250, 14787, 128, 10805, 34966,
            43463, 14787, 120, 163, 129, 163, 135, 23339, 12667, 30,
        ],
        &[
            10805, 163, 131, 163, 135, 163, 132, 45704, 12667, 164, 227, 14787, 127, 20602, 5022, 7627,
            14787, 121, 21706, 47141, 43315, 27438, 44626, 27819, 163, 130, 21706, 10805, 21706, 717, 29, 33,
            34, 365, 22208, 163, 131, 163, 135, 163, 132, 216, 38, 2753, 595,
        ],
        &[
            18162, 216, 34, 32, 34, 36, 29, 33, 33, 29, 34, 41, 28, 2341, 907, 32, 32, 39, 35, 33, 28, 216,
            35, 30, 33, 36, 33, 37, 41,
        ],
        &[10809, 33777, 15107, 238, 117, 173, 244, 243, 31752, 284, 256, 5600, 32057, 725, 1311],
    ];
    for (text, ids) in LLAMA_CPP_TEXTS.iter().zip(expected) {
        assert_eq!(tok.encode(text, false).unwrap(), ids, "{text:?}");
    }
}

/// Qwen2.5 (Arabic-capable vocabulary, `qwen2` pre-tokenizer); measurement-only
/// file, so the test runs only where it is present.
#[test]
fn qwen2_gguf_tokenizer_matches_llama_cpp_and_speaks_chatml() {
    let p = std::env::var_os("WARSHA_TEST_QWEN_GGUF")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/work/models/qwen2.5-coder-0.5b-instruct-q4_k_m.gguf"));
    if !p.is_file() {
        eprintln!("skip: no Qwen2.5 GGUF at {} (set WARSHA_TEST_QWEN_GGUF)", p.display());
        return;
    }
    let tok = Tok::for_model(&p).unwrap();
    let expected: [&[u32]; 4] = [
        &[
            14558, 124887, 93153, 124187, 31382, 45577, 8532, 124015, 17166, 125089, 14293, 125100, 123980,
            11071, 129657, 124811, 128288, 220, 149, 98, 149, 254, 149, 254, 135512, 143700, 81778, 95198,
            13,
        ],
        &[
            124420, 81778, 43635, 128248, 125555, 11071, 45537, 128637, 12961, 129803, 124265, 125225, 647,
            12, 16, 17, 320, 31382, 132337, 220, 21, 3619, 568,
        ],
        &[
            5915, 220, 17, 15, 17, 19, 12, 16, 16, 12, 17, 24, 11, 2696, 671, 15, 15, 22, 18, 16, 11, 220,
            18, 13, 16, 19, 16, 20, 24,
        ],
        &[92731, 95069, 100, 146635, 30543, 323, 256, 12621, 2303, 39027],
    ];
    for (text, ids) in LLAMA_CPP_TEXTS.iter().zip(expected) {
        assert_eq!(tok.encode(text, false).unwrap(), ids, "{text:?}");
        assert_eq!(&tok.decode(ids).unwrap(), text);
    }
    for text in TEXTS {
        assert_eq!(&tok.decode(&tok.encode(text, false).unwrap()).unwrap(), text);
    }
    assert_eq!(tok.token_id("<|im_end|>"), Some(151645));
    assert!(tok.eos_ids().contains(&151645));
    let prompt = tok.decode(&tok.chat_prompt(None, "مرحبا").unwrap()).unwrap();
    assert_eq!(
        prompt,
        "system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.\nuser\nمرحبا\nassistant\n"
    );
}
