//! `warsha adapters list | promote ID | gate ID | rollback | export ID --format F --out DIR | import DIR`.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde_json::json;

use super::Ctx;
use crate::adapters::registry::{self, ExportFormat};
use crate::adapters::{BaseShapes, Switch};
use crate::cli::{AdaptersCommand, ExportFormat as CliFormat};
use crate::model::ModelConfig;
use crate::store::adapters::AdapterRow;
use crate::store::Store;

pub fn run(ctx: &Ctx, cmd: AdaptersCommand) -> Result<()> {
    match cmd {
        AdaptersCommand::List(o) => list(ctx, o.json),
        AdaptersCommand::Promote { id, out } => {
            if let Some(mut conn) = super::serve::service(ctx)? {
                return super::serve::call(
                    &mut conn,
                    json!({"verb": "promote", "adapter": id}),
                    out.json,
                    "promoted",
                );
            }
            let _lock = ctx.data.lock()?;
            let mut store = ctx.open_store()?;
            let reasons = json!({"promote": true, "reasons": ["promoted by the operator"]});
            let s = registry::promote(
                &mut store,
                &ctx.data,
                id,
                Some(&reasons),
                ctx.config.retention.keep_adapters,
            )?;
            print_switch(&s, out.json, "promoted")
        }
        AdaptersCommand::Gate { id, out } => gate(ctx, id, out.json),
        AdaptersCommand::Rollback(o) => {
            if let Some(mut conn) = super::serve::service(ctx)? {
                return super::serve::call(&mut conn, json!({"verb": "rollback"}), o.json, "rolled back");
            }
            let _lock = ctx.data.lock()?;
            let mut store = ctx.open_store()?;
            let s = registry::rollback(&mut store, &ctx.data, ctx.config.retention.keep_adapters)?;
            print_switch(&s, o.json, "rolled back")
        }
        AdaptersCommand::Export { id, format, out } => {
            let store = ctx.open_store()?;
            let (model, shapes) = base_shapes(ctx)?;
            let format = match format {
                CliFormat::Peft => ExportFormat::Peft,
                CliFormat::Gguf => ExportFormat::Gguf,
            };
            let name = model.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
            let files = registry::export(&store, &ctx.data, id, format, &out, &shapes, &name)?;
            for f in files {
                println!("{}", f.display());
            }
            Ok(())
        }
        AdaptersCommand::Import { dir, out } => {
            let _lock = ctx.data.lock()?;
            let mut store = ctx.open_store()?;
            let (model, shapes) = base_shapes(ctx)?;
            let sha = sha256_of(&model)?;
            let row = registry::import_peft(&mut store, &ctx.data, &dir, &shapes, Some(&sha))?;
            if out.json {
                println!("{}", serde_json::to_string(&row)?);
            } else {
                println!(
                    "imported {} as adapter {} (state imported; `warsha adapters promote {}` to use it)",
                    dir.display(),
                    row.id,
                    row.id
                );
            }
            Ok(())
        }
    }
}

/// Score a candidate (or imported) adapter against the active one, then
/// promote or reject it: the same gate a training round ends with.
fn gate(ctx: &Ctx, id: i64, json_out: bool) -> Result<()> {
    let Some(model) = ctx.config.model_path() else {
        bail!("no base model configured: set [model] path (a .gguf file or safetensors directory)");
    };
    let _lock = ctx.data.lock()?;
    let mut store = ctx.open_store()?;
    if store.adapter(id)?.is_none() {
        bail!("no adapter with id {id}");
    }
    let (base, tok) = ctx.load_base(&model)?;
    let g =
        crate::cycle::gate_with(&mut store, &ctx.config, &ctx.data, &base, &tok, id, &Default::default())?;
    if json_out {
        println!(
            "{}",
            json!({
                "adapter": g.candidate_id,
                "promoted": g.decision.promote,
                "reasons": g.decision.reasons,
                "incumbent": g.incumbent_id,
                "score": {"candidate": g.candidate.metrics.score, "incumbent": g.incumbent.score},
                "switch": g.switch,
            })
        );
        return Ok(());
    }
    println!(
        "adapter {id}: {}",
        if g.decision.promote {
            "promoted; it answers questions now"
        } else {
            "rejected; the active model stays"
        }
    );
    for r in &g.decision.reasons {
        println!("  {r}");
    }
    Ok(())
}

/// The configured base model's path and the shapes an adapter must match.
pub fn base_shapes(ctx: &Ctx) -> Result<(PathBuf, BaseShapes)> {
    let Some(path) = ctx.config.model_path() else {
        bail!("no base model configured: set [model] path (a .gguf file or safetensors directory)");
    };
    let cfg =
        read_model_config(&path).with_context(|| format!("reading the base model {}", path.display()))?;
    Ok((path, BaseShapes::from(&cfg)))
}

/// A model's configuration from its GGUF header or `config.json`, without loading weights.
fn read_model_config(path: &Path) -> Result<ModelConfig> {
    if path.is_dir() {
        let p = path.join("config.json");
        let text = std::fs::read_to_string(&p).with_context(|| format!("reading {}", p.display()))?;
        return Ok(ModelConfig::from_config_json(&text, &p)?);
    }
    let mut f = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let content = candle_core::quantized::gguf_file::Content::read(&mut f)
        .with_context(|| format!("{} is not a GGUF file", path.display()))?;
    let rows = content.tensor_infos.get("token_embd.weight").map(|i| i.shape.dims()[0]).unwrap_or(0);
    Ok(ModelConfig::from_gguf(&content, path, rows)?)
}

/// sha256 of a model file (or of a directory's config.json, for safetensors dirs).
fn sha256_of(path: &Path) -> Result<String> {
    let file = if path.is_dir() { path.join("config.json") } else { path.to_path_buf() };
    Ok(crate::model::sha256_file(&file)?)
}

fn list(ctx: &Ctx, json_out: bool) -> Result<()> {
    let db = ctx.data.db();
    if !db.exists() {
        if json_out {
            println!("{}", json!({"adapters": []}));
        } else {
            println!("no adapters yet (no database at {})", db.display());
        }
        return Ok(());
    }
    let store = Store::open_read_only(&db)?;
    let rows = store.adapters()?;
    if json_out {
        println!("{}", json!({"adapters": rows}));
        return Ok(());
    }
    if rows.is_empty() {
        println!("no adapters yet: the bare base model answers");
        return Ok(());
    }
    println!(
        "{:>4}  {:<9} {:>6} {:>6} {:>5} {:>6} {:>9}  {:<12} {:<20} path",
        "id", "state", "parent", "run", "rank", "score", "size", "sha256", "created"
    );
    for r in &rows {
        let score = r
            .metrics
            .as_ref()
            .and_then(|m| m.pointer("/candidate/score"))
            .and_then(|v| v.as_f64())
            .map(|s| format!("{s:.3}"))
            .unwrap_or_else(|| "-".into());
        let opt = |v: Option<i64>| v.map(|x| x.to_string()).unwrap_or_else(|| "-".into());
        println!(
            "{:>4}  {:<9} {:>6} {:>6} {:>5} {:>6} {:>9}  {:<12} {:<20} {}",
            r.id,
            r.state,
            opt(r.parent_id),
            opt(r.run_id),
            r.rank,
            score,
            human_bytes(r.bytes),
            &r.sha256[..r.sha256.len().min(12)],
            &r.created_at[..r.created_at.len().min(19)],
            r.path
        );
        if let Some(first) = reason_lines(r).first() {
            println!("        {first}");
        }
    }
    Ok(())
}

fn reason_lines(r: &AdapterRow) -> Vec<String> {
    r.reasons
        .as_ref()
        .and_then(|v| v.get("reasons").or(Some(v)))
        .and_then(|v| v.as_array())
        .map(|a| a.iter().filter_map(|x| x.as_str().map(str::to_string)).collect())
        .unwrap_or_default()
}

fn human_bytes(b: i64) -> String {
    let b = b as f64;
    if b >= 1024.0 * 1024.0 {
        format!("{:.1} MiB", b / 1024.0 / 1024.0)
    } else {
        format!("{:.1} KiB", b / 1024.0)
    }
}

fn print_switch(s: &Switch, json_out: bool, what: &str) -> Result<()> {
    if json_out {
        println!("{}", serde_json::to_string(s)?);
        return Ok(());
    }
    match &s.active {
        Some(a) => println!("{what}: adapter {} ({}) is active", a.id, a.path),
        None => println!("{what}: no adapter is active; the bare base model answers"),
    }
    if let Some(r) = &s.replaced {
        println!("adapter {} is now {}", r.id, r.state);
    }
    for r in &s.retired {
        println!("retired adapter {} ({} deleted)", r.id, r.path);
    }
    for d in &s.leftover_dirs {
        println!("warning: could not delete {}", d.display());
    }
    Ok(())
}
