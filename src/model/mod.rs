//! Base models: reading their files, tokenizing for them, chat templates,
//! text generation, and installing them into the data dir.

pub mod chat;
pub mod fetch;
pub mod generate;
pub mod info;
pub mod sampling;
pub mod tokenizer;
