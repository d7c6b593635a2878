//! `warsha docs list|show`: what was ingested or rejected and why, and a
//! document's extracted text (train form).

use anyhow::{bail, Result};

use super::Ctx;
use crate::cli::{DocsCommand, JsonFlag};
use crate::store::Store;

/// Files listed at most (newest first).
const FILES_SHOWN: usize = 100_000;

pub fn run(ctx: &Ctx, cmd: &DocsCommand) -> Result<()> {
    let db = ctx.data.db();
    if !db.is_file() {
        bail!("no database at {} yet: nothing was ingested", db.display());
    }
    let store = Store::open_read_only(&db)?;
    match cmd {
        DocsCommand::List(out) => list(&store, *out),
        DocsCommand::Show { id, out } => show(&store, *id, *out),
    }
}

fn list(store: &Store, out: JsonFlag) -> Result<()> {
    let docs = store.documents_list()?;
    let files = store.files_list(FILES_SHOWN)?;
    if out.json {
        println!("{}", serde_json::json!({ "documents": docs, "files": files }));
        return Ok(());
    }
    println!("documents ({})", docs.len());
    for d in &docs {
        println!(
            "  #{:<5} {:<5} {:<6} {:>6} chunks {:>5} Q&A  {}",
            d.id,
            d.kind,
            d.lang.as_deref().unwrap_or("-"),
            d.chunks,
            d.qa_pairs,
            d.name.escape_debug()
        );
    }
    let not_taken: Vec<_> = files.iter().filter(|f| f.state != "ingested").collect();
    println!("files not ingested ({})", not_taken.len());
    for f in not_taken {
        println!(
            "  {:<9} {}  {}",
            f.state,
            f.path.escape_debug(),
            f.reason.as_deref().unwrap_or(if f.closed { "" } else { "in progress" })
        );
    }
    Ok(())
}

fn show(store: &Store, id: i64, out: JsonFlag) -> Result<()> {
    let Some((doc, text)) = store.document(id)? else { bail!("no document {id} (see `warsha docs list`)") };
    if out.json {
        let mut v = serde_json::to_value(&doc)?;
        if let Some(o) = v.as_object_mut() {
            o.insert("text".into(), text.into());
        }
        println!("{v}");
        return Ok(());
    }
    println!("document   #{}  {}", doc.id, doc.name);
    println!(
        "kind       {}  ({} bytes, encoding {})",
        doc.kind,
        doc.bytes,
        doc.encoding.as_deref().unwrap_or("-")
    );
    println!(
        "language   {}{}  (Arabic share {:.2}{})",
        doc.lang.as_deref().unwrap_or("-"),
        doc.dialect.as_deref().map(|d| format!(", {d}")).unwrap_or_default(),
        doc.arabic_share.unwrap_or(0.0),
        if doc.diacritized { ", diacritized" } else { "" }
    );
    println!("chunks     {}   Q&A pairs {}", doc.chunks, doc.qa_pairs);
    println!("sha256     {}", doc.sha256);
    println!("spool      {}", doc.spool_path);
    if let Some(serde_json::Value::Array(w)) = &doc.warnings {
        println!("warnings");
        for x in w {
            println!("  {}", x.as_str().unwrap_or_default());
        }
    }
    println!();
    println!("{text}");
    Ok(())
}
