//! The `warsha` binary: parse, run, and map the outcome to an exit status.

use std::process::ExitCode;

use clap::Parser;
use tracing_subscriber::EnvFilter;

fn main() -> ExitCode {
    // candle looks up its CPU thread count on every matrix product, and without this
    // variable that means parsing /proc/cpuinfo each time (~3% of generation time).
    // Set before any thread exists.
    if std::env::var_os("RAYON_NUM_THREADS").is_none() {
        std::env::set_var("RAYON_NUM_THREADS", candle_core::utils::get_num_threads().to_string());
    }
    let cli = warsha::cli::Cli::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(EnvFilter::try_from_env("WARSHA_LOG").unwrap_or_else(|_| EnvFilter::new("warn")))
        .with_target(false)
        .init();
    match warsha::commands::run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // One line on stderr: the error and its causes, outermost first.
            let chain: Vec<String> = e.chain().map(|c| c.to_string()).collect();
            eprintln!("warsha: {}", chain.join(": "));
            if e.downcast_ref::<warsha::commands::NotYet>().is_some() {
                ExitCode::from(2)
            } else {
                ExitCode::FAILURE
            }
        }
    }
}
