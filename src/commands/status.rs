//! `warsha status`: database, model, adapter and training state.

use anyhow::{bail, Result};

use super::Ctx;
use crate::cli::JsonFlag;
use crate::store::{schema_version_latest, Store};

/// Through the running service when there is one; else the database opened
/// read-only: `status` never creates, migrates or writes it.
pub fn run(ctx: &Ctx, out: JsonFlag) -> Result<()> {
    if let Some(mut conn) = super::serve::service(ctx)? {
        return super::serve::status(&mut conn, out.json);
    }
    let db = ctx.data.db();
    if !db.exists() {
        // A fresh box: nothing recorded yet is a state to report, not an error.
        let model = ctx.config.model_path().map(|p| p.display().to_string());
        if out.json {
            let v = serde_json::json!({
                "data_dir": ctx.data.root().display().to_string(),
                "database": null,
                "schema_version": null,
                "model": model,
                "active_adapter": null,
                "counts": {},
            });
            println!("{v}");
        } else {
            println!("data dir        {}", ctx.data.root().display());
            println!("database        none yet (the service or `warsha ingest` creates it)");
            println!("model           {}", model.as_deref().unwrap_or("none configured ([model] path)"));
        }
        return Ok(());
    }
    let store = Store::open_read_only(&db)?;
    let found = store.schema_version()?;
    let known = schema_version_latest();
    if found > known {
        bail!("the database at {} has schema v{found}, newer than this warsha knows (v{known}): use the newer binary", db.display());
    }
    if found < known {
        bail!(
            "the database at {} has schema v{found}; this warsha uses v{known} and migrates it on its next write (the service at start, or any write command); status does not",
            db.display()
        );
    }
    let report = store.status_report(10)?;
    let model = ctx.config.model_path().map(|p| p.display().to_string());
    if out.json {
        let mut v = serde_json::to_value(&report)?;
        if let Some(obj) = v.as_object_mut() {
            obj.insert("data_dir".into(), ctx.data.root().display().to_string().into());
            obj.insert("model".into(), model.into());
            let counts: serde_json::Map<String, serde_json::Value> =
                report.counts.iter().map(|c| (c.table.to_string(), c.rows.into())).collect();
            obj.insert("counts".into(), counts.into());
        }
        println!("{v}");
        return Ok(());
    }
    println!("data dir        {}", ctx.data.root().display());
    println!(
        "database        {} (schema v{}, SQLite {})",
        report.database, report.schema_version, report.sqlite_version
    );
    println!("model           {}", model.as_deref().unwrap_or("none configured ([model] path)"));
    match &report.active_adapter {
        Some(a) => println!("active adapter  #{} ({})", a.id, a.path),
        None => println!("active adapter  none (the bare base model answers)"),
    }
    match &report.last_run {
        Some(r) => println!(
            "last training   run #{} {} at step {}/{} (started {})",
            r.id, r.status, r.steps_done, r.max_steps, r.started_at
        ),
        None => println!("last training   none"),
    }
    println!("rows");
    for c in &report.counts {
        println!("  {:<12} {}", c.table, c.rows);
    }
    if !report.files_by_state.is_empty() {
        println!("drop-folder files");
        for (state, n) in &report.files_by_state {
            println!("  {state:<12} {n}");
        }
    }
    if !report.last_events.is_empty() {
        println!("last events");
        for e in &report.last_events {
            println!("  {} {:<5} {:<8} {}", e.at, e.level, e.component, e.message);
        }
    }
    Ok(())
}
