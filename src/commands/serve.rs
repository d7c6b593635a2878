//! `warsha serve`, and the CLI's side of the service socket: when a
//! service answers on the data dir's socket, `ask`, `status`, `train`,
//! `adapters promote|rollback`, `review` and `ingest` (no PATH) go through it instead
//! of opening the data dir themselves.

use std::io::Write;
use std::path::Path;

use anyhow::{bail, Result};
use serde_json::{json, Value};

use super::Ctx;
use crate::service::client::{self, ClientError, Connection};
use crate::service::{serve, ServeArgs};

pub fn run(ctx: &Ctx, config_file: Option<&Path>) -> Result<()> {
    let load = |p: &Path| ctx.load_base(p);
    serve(ServeArgs {
        config: ctx.config.clone(),
        config_file: config_file.map(Path::to_path_buf),
        load: &load,
    })?;
    Ok(())
}

/// The running service's connection, when there is one.
pub fn service(ctx: &Ctx) -> Result<Option<Connection>> {
    Ok(client::connect(&ctx.data)?)
}

/// One state-changing verb; prints its result.
pub fn call(conn: &mut Connection, request: Value, json_out: bool, done: &str) -> Result<()> {
    let v = conn.call(request)?;
    if json_out {
        println!("{v}");
    } else {
        println!("{done} (by the running service)");
        if let Some(id) = v.pointer("/active/id") {
            println!("active adapter  #{id}");
        }
    }
    Ok(())
}

pub fn ask(conn: &mut Connection, question: &str, max_tokens: usize, json_out: bool) -> Result<()> {
    conn.send(json!({"verb": "ask", "question": question, "max_tokens": max_tokens}))?;
    let mut stdout = std::io::stdout();
    let mut sources = Vec::new();
    loop {
        let v = match conn.next_record() {
            Ok(v) => v,
            Err(ClientError::Refused { code, message }) if code == "no-model" => bail!("{message}"),
            Err(e) => return Err(e.into()),
        };
        if json_out {
            println!("{v}");
        }
        if let Some(p) = v.get("piece").and_then(Value::as_str) {
            if !json_out {
                let _ = write!(stdout, "{p}").and_then(|_| stdout.flush());
            }
        } else if let Some(s) = v.get("sources").and_then(Value::as_array) {
            sources = s.clone();
        } else if v.get("done").is_some() {
            if !json_out {
                println!();
                println!(
                    "— {} (answer #{}, {} ms)",
                    match v["adapter_id"].as_i64() {
                        Some(id) => format!("adapter #{id}"),
                        None => "bare base model".into(),
                    },
                    v["answer_id"],
                    v["total_duration"].as_u64().unwrap_or(0) / 1_000_000
                );
                for s in &sources {
                    println!(
                        "  source: {} (document {})",
                        s["document"].as_str().unwrap_or(""),
                        s["document_id"]
                    );
                }
            }
            return Ok(());
        }
    }
}

pub fn status(conn: &mut Connection, json_out: bool) -> Result<()> {
    let v = conn.call(json!({"verb": "status"}))?;
    if json_out {
        println!("{v}");
        return Ok(());
    }
    let s = &v["service"];
    let d = &v["database"];
    println!("service         running (pid {}): {}", s["pid"], s["activity"].as_str().unwrap_or(""));
    match s["model"].as_str() {
        Some(m) => println!("model           {m}"),
        None => println!("model           none: {}", s["model_problem"].as_str().unwrap_or("")),
    }
    println!("data dir        {}", d["data_dir"].as_str().unwrap_or(""));
    println!("database        {} (schema v{})", d["database"].as_str().unwrap_or(""), d["schema_version"]);
    match d.get("active_adapter").filter(|a| !a.is_null()) {
        Some(a) => println!("active adapter  #{} ({})", a["id"], a["path"].as_str().unwrap_or("")),
        None => println!("active adapter  none (the bare base model answers)"),
    }
    if let Some(r) = d.get("last_run").filter(|r| !r.is_null()) {
        println!(
            "last training   run #{} {} at step {}/{}",
            r["id"],
            r["status"].as_str().unwrap_or(""),
            r["steps_done"],
            r["max_steps"]
        );
    }
    if let Some(files) = d["files_by_state"].as_array() {
        println!("drop-folder files");
        for f in files {
            println!("  {:<12} {}", f[0].as_str().unwrap_or(""), f[1]);
        }
    }
    Ok(())
}
