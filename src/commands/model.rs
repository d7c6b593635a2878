//! `warsha model …`: fetch, import, list, inspect a base model, and generate
//! text from it.

use std::io::{IsTerminal, Write};
use std::path::Path;

use anyhow::{Context, Result};

use super::Ctx;
use crate::cli::{GenerateArgs, JsonFlag, ModelCommand};
use crate::install::{self as fetch, Installed};
use crate::model::generate::{generate, Sampling};
use crate::model::info::{inspect, ModelInfo};
use crate::store::Level;

pub fn run(ctx: &Ctx, cmd: ModelCommand) -> Result<()> {
    match cmd {
        ModelCommand::Fetch { name, out } => fetch_cmd(ctx, &name, out),
        ModelCommand::Import { path, out } => import_cmd(ctx, &path, out),
        ModelCommand::Info { path, out } => info_cmd(&path, out),
        ModelCommand::List(out) => list_cmd(ctx, out),
        ModelCommand::Generate(args) => generate_cmd(ctx, &args),
    }
}

fn fetch_cmd(ctx: &Ctx, name: &str, out: JsonFlag) -> Result<()> {
    // Taken before the download, so a running service refuses at once.
    let _lock = ctx.data.lock()?;
    let mut store = ctx.open_store()?;
    if !out.json {
        eprintln!("fetching {name} into {}", ctx.data.models().display());
    }
    let inst = fetch::fetch(name, &ctx.data.models())?;
    record(&mut store, &inst, "fetched")?;
    report_installed(&inst, out)
}

fn import_cmd(ctx: &Ctx, path: &Path, out: JsonFlag) -> Result<()> {
    let _lock = ctx.data.lock()?;
    let mut store = ctx.open_store()?;
    let inst = fetch::import(path, &ctx.data.models())?;
    record(&mut store, &inst, "imported")?;
    report_installed(&inst, out)
}

fn record(store: &mut crate::store::Store, inst: &Installed, verb: &str) -> Result<()> {
    let path = inst.path.display().to_string();
    store.record_model(&inst.name, &path, &inst.sha256, inst.bytes, inst.arch.as_deref())?;
    if !inst.already_present {
        store.event(
            Level::Info,
            "model",
            &format!("{verb} model {}", inst.name),
            Some(serde_json::json!({ "path": path, "sha256": inst.sha256, "bytes": inst.bytes })),
        )?;
    }
    Ok(())
}

fn report_installed(inst: &Installed, out: JsonFlag) -> Result<()> {
    if out.json {
        println!("{}", serde_json::to_string(inst)?);
    } else if inst.already_present {
        println!("{} already present: {} (sha256 {})", inst.name, inst.path.display(), inst.sha256);
    } else {
        println!(
            "{} installed: {} ({} bytes, sha256 {})",
            inst.name,
            inst.path.display(),
            inst.bytes,
            inst.sha256
        );
    }
    Ok(())
}

fn list_cmd(ctx: &Ctx, out: JsonFlag) -> Result<()> {
    let store = ctx.open_store()?;
    let rows = store.models()?;
    if out.json {
        println!("{}", serde_json::to_string(&rows)?);
        return Ok(());
    }
    if rows.is_empty() {
        println!("no models; `warsha model fetch smollm2-135m` or `warsha model import FILE`");
    }
    for r in rows {
        let present = if Path::new(&r.path).exists() { "" } else { "  (missing on disk)" };
        println!(
            "#{:<3} {:<32} {:<8} {:>12} B  {}  {}{present}",
            r.id,
            r.name,
            r.arch.as_deref().unwrap_or("?"),
            r.bytes,
            &r.sha256[..r.sha256.len().min(12)],
            r.path
        );
    }
    Ok(())
}

fn info_cmd(path: &Path, out: JsonFlag) -> Result<()> {
    let info = inspect(path, true).with_context(|| format!("inspecting {}", path.display()))?;
    if out.json {
        println!("{}", serde_json::to_string(&info)?);
        return Ok(());
    }
    print_info(&info);
    Ok(())
}

fn print_info(i: &ModelInfo) {
    let opt = |v: Option<usize>| v.map_or("?".to_string(), |v| v.to_string());
    println!("path            {} ({})", i.path.display(), i.format);
    println!(
        "architecture    {}{}",
        i.architecture,
        i.name.as_ref().map(|n| format!(" ({n})")).unwrap_or_default()
    );
    println!("layers          {}", opt(i.layers));
    println!("hidden size     {}", opt(i.hidden_size));
    println!("ffn size        {}", opt(i.intermediate_size));
    println!("heads           {} (kv heads {})", opt(i.heads), opt(i.kv_heads));
    println!("vocab           {}", opt(i.vocab_size));
    println!("context length  {}", opt(i.context_length));
    println!("rope theta      {}", i.rope_theta.map_or("?".to_string(), |v| v.to_string()));
    let quant: Vec<String> = i.quant_types.iter().map(|q| format!("{} ×{}", q.dtype, q.tensors)).collect();
    println!("tensor types    {}", quant.join(", "));
    println!("parameters      {} ({:.1} M)", i.parameters, i.parameters as f64 / 1e6);
    println!("size            {} bytes", i.bytes);
    for f in &i.files {
        println!(
            "sha256          {}  {}",
            f.sha256,
            f.path.file_name().unwrap_or_default().to_string_lossy()
        );
    }
    println!("tokenizer       {}", i.tokenizer);
    println!("chat template   {}", i.chat_template);
}

fn generate_cmd(ctx: &Ctx, args: &GenerateArgs) -> Result<()> {
    let (base, tok) = ctx.load_base(&args.path)?;
    let adapter = args.adapter.as_deref().map(|d| crate::adapters::load_adapter(d, &base)).transpose()?;
    let prompt = if args.raw {
        tok.encode(&args.prompt, tok.add_bos())?
    } else {
        tok.chat_prompt(None, &args.prompt)?
    };
    let sampling = Sampling {
        greedy: args.greedy,
        temperature: args.temperature,
        top_p: args.top_p,
        top_k: args.top_k,
        repeat_penalty: args.repeat_penalty,
        seed: args.seed,
    };
    let stream = !args.out.json;
    let mut stdout = std::io::stdout().lock();
    let mut on_token = |piece: &str| {
        if stream {
            // A closed pipe (e.g. `| head`) stops generation instead of failing it.
            return stdout.write_all(piece.as_bytes()).and_then(|()| stdout.flush()).is_ok();
        }
        true
    };
    let g = generate(&base, adapter.as_ref(), &tok, &prompt, &sampling, args.max_tokens, &mut on_token)?;
    if args.out.json {
        let v = serde_json::json!({
            "text": g.text,
            "tokens": g.tokens,
            "prompt_tokens": g.prompt_tokens,
            "generated_tokens": g.tokens.len(),
            "prefill_secs": g.prefill_secs,
            "decode_secs": g.decode_secs,
            "prefill_tokens_per_sec": g.prefill_tokens_per_sec(),
            "decode_tokens_per_sec": g.decode_tokens_per_sec(),
            "stop": g.stop,
            "adapter": args.adapter,
        });
        println!("{v}");
    } else if std::io::stdout().is_terminal() {
        println!();
    }
    Ok(())
}
