//! Wiring between the command line and the library: each file turns one
//! command's arguments into library calls and prints the result for people
//! (plain) or scripts (`--json`). Exit statuses are decided in `main.rs`.

mod bench_infer;
mod bench_train;
mod model;
mod status;
mod train;

use std::path::Path;

use anyhow::Result;

use crate::cli::{Cli, Command};
use crate::config::Config;
use crate::data_dir::DataDir;
use crate::store::Store;

/// A capability that belongs to a later part of the product. Exits with 2.
#[derive(Debug, thiserror::Error)]
#[error("not available yet: {0}")]
pub struct NotYet(pub &'static str);

/// What every command starts from.
pub struct Ctx {
    pub config: Config,
    pub data: DataDir,
}

impl Ctx {
    pub fn load(config: Option<&Path>, data_dir: Option<&Path>) -> Result<Self> {
        let config = Config::load(config, data_dir)?;
        let data = DataDir::new(config.paths.data_dir.clone());
        Ok(Self { config, data })
    }

    /// Create the data dir if needed and open its database read-write.
    pub fn open_store(&self) -> Result<Store> {
        self.data.create()?;
        Ok(Store::open(&self.data.db())?)
    }
}

pub fn run(cli: Cli) -> Result<()> {
    let ctx = Ctx::load(cli.config.as_deref(), cli.data_dir.as_deref())?;
    match cli.command {
        Command::Status(o) => status::run(&ctx, o),
        Command::Serve => Err(NotYet("the long-running service (warsha serve)").into()),
        Command::Tui => Err(NotYet("the operator terminal UI (warsha tui)").into()),
        Command::Ingest(_) => Err(NotYet("drop-folder ingestion (warsha ingest)").into()),
        Command::Docs(_) => Err(NotYet("the document list (warsha docs)").into()),
        Command::Ask(_) => Err(NotYet("answering questions (warsha ask)").into()),
        Command::Train(a) => train::run(&ctx, a),
        Command::Eval(_) => Err(NotYet("the evaluation suite (warsha eval)").into()),
        Command::Adapters(_) => Err(NotYet("the adapter registry (warsha adapters)").into()),
        Command::Model(c) => model::run(&ctx, c),
        Command::Text(_) => Err(NotYet("Arabic text normalization (warsha text)").into()),
        Command::Bench(crate::cli::BenchCommand::Infer(a)) => bench_infer::run(&a),
        Command::Bench(crate::cli::BenchCommand::Train(a)) => bench_train::run(&ctx, a),
        Command::Bench(_) => Err(NotYet("benchmarks (warsha bench)").into()),
        Command::Demo(_) => Err(NotYet("the demo (warsha demo)").into()),
    }
}
