//! Wiring between the command line and the library: each file turns one
//! command's arguments into library calls and prints the result for people
//! (plain) or scripts (`--json`). Exit statuses are decided in `main.rs`.

mod adapters;
mod ask;
mod bench_infer;
mod bench_train;
mod demo;
mod docs;
mod eval;
mod ingest;
mod model;
mod review;
mod serve;
mod status;
mod text;
mod train;

use std::path::Path;

use anyhow::Result;

use crate::cli::{BenchCommand, Cli, Command};
use crate::config::Config;
use crate::data_dir::DataDir;
use crate::store::Store;
use crate::train::device::Placement;

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

    /// Where models run: `[model] device` and `[model] quant` (see [`Placement`]).
    pub fn placement(&self) -> Result<Placement> {
        Ok(Placement::from_config(&self.config.model)?)
    }

    /// Load the frozen base model and its tokenizer on the configured
    /// placement, once per process.
    pub fn load_base(&self, path: &Path) -> Result<(crate::model::Base, crate::model::tokenizer::Tok)> {
        self.load_base_on(path, &self.placement()?)
    }

    /// [`Ctx::load_base`] on a placement the caller resolved (the benchmarks'
    /// `--device`/`--dtype`, through [`Placement::resolve`]).
    pub fn load_base_on(
        &self,
        path: &Path,
        placement: &Placement,
    ) -> Result<(crate::model::Base, crate::model::tokenizer::Tok)> {
        use anyhow::Context as _;
        crate::train::device::tame_cpu_threads();
        let base = crate::model::Base::load(path, &placement.load_options())
            .with_context(|| format!("loading {}", path.display()))?;
        let tok = crate::model::tokenizer::Tok::for_model(path)
            .with_context(|| format!("tokenizer of {}", path.display()))?;
        Ok((base, tok))
    }

    /// Create the data dir if needed and open its database read-write.
    pub fn open_store(&self) -> Result<Store> {
        self.data.create()?;
        Ok(Store::open(&self.data.db())?)
    }
}

pub fn run(cli: Cli) -> Result<()> {
    if let Command::Extract(a) = &cli.command {
        // The isolated extraction child: no config, no data dir.
        return ingest::extract_child(a);
    }
    let explicit_data_dir = cli.data_dir.is_some();
    let ctx = Ctx::load(cli.config.as_deref(), cli.data_dir.as_deref())?;
    match cli.command {
        Command::Status(o) => status::run(&ctx, o),
        Command::Serve => serve::run(&ctx, cli.config.as_deref()),
        Command::Tui => Err(NotYet("the operator terminal UI (warsha tui)").into()),
        Command::Ingest(a) => ingest::run(&ctx, &a),
        Command::Docs(c) => docs::run(&ctx, &c),
        Command::Ask(a) => ask::run(&ctx, &a),
        Command::Train(a) => train::run(&ctx, a),
        Command::Review(a) => review::run(&ctx, a),
        Command::Eval(a) => eval::run(&ctx, a),
        Command::Adapters(c) => adapters::run(&ctx, c),
        Command::Model(c) => model::run(&ctx, c),
        Command::Text(c) => text::run(c),
        Command::Bench(BenchCommand::Infer(a)) => bench_infer::run(&ctx, &a),
        Command::Bench(BenchCommand::Ingest(a)) => ingest::bench(&ctx, &a),
        Command::Bench(BenchCommand::Train(a)) => bench_train::run(&ctx, a),
        Command::Demo(a) => demo::run(&ctx, &a, explicit_data_dir),
        Command::Extract(a) => ingest::extract_child(&a),
    }
}
