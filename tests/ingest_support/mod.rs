//! Shared set-up for the ingest tests: a temporary data dir and drop folder,
//! a config file pointing at them, the real binary for extraction and CLI
//! runs, and generators for real files (DOCX, PDF, CSV, …).
#![allow(dead_code)]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use warsha::config::Config;
use warsha::data_dir::DataDir;
use warsha::ingest::extract::Extractor;
use warsha::ingest::worker::Worker;
use warsha::ingest::Pipeline;
use warsha::store::Store;

pub const BIN: &str = env!("CARGO_BIN_EXE_warsha");

pub struct Env {
    pub dir: tempfile::TempDir,
    pub drop: PathBuf,
    pub data: PathBuf,
    pub config_file: PathBuf,
    pub cfg: Config,
}

impl Env {
    /// `extra` is appended to the `[ingest]` section.
    pub fn new(extra: &str) -> Env {
        let dir = tempfile::tempdir().unwrap();
        let drop = dir.path().join("drop");
        let data = dir.path().join("data");
        std::fs::create_dir_all(&drop).unwrap();
        let mut text = format!(
            "[paths]\ndata_dir = {:?}\n[ingest]\ndrop_folder = {:?}\n",
            data.display().to_string(),
            drop.display().to_string()
        );
        for (key, value) in [("stability_secs", "1"), ("extract_timeout_secs", "20")] {
            if !extra.contains(key) {
                text.push_str(&format!("{key} = {value}\n"));
            }
        }
        text.push_str(extra);
        text.push('\n');
        let config_file = dir.path().join("warsha.toml");
        std::fs::write(&config_file, &text).unwrap();
        let cfg = Config::from_layers(Some(("test.toml", &text))).unwrap();
        Env { dir, drop, data, config_file, cfg }
    }

    pub fn extractor(&self) -> Extractor {
        Extractor::new(PathBuf::from(BIN), &self.cfg.ingest)
    }

    pub fn pipeline(&self) -> Pipeline {
        let dd = DataDir::new(&self.data);
        dd.create().unwrap();
        let store = Store::open(&dd.db()).unwrap();
        Pipeline::new(store, dd, self.cfg.ingest.clone(), self.extractor()).unwrap()
    }

    pub fn worker(&self, delay: Duration) -> Worker {
        Worker::with_delay(self.pipeline(), None, Arc::new(AtomicBool::new(false)), delay)
    }

    pub fn store(&self) -> Store {
        Store::open(&DataDir::new(&self.data).db()).unwrap()
    }

    /// A plain connection to the same database, for the tests' own SQL
    /// (the store keeps its connection to itself). The store opens first so
    /// that the schema exists.
    pub fn db(&self) -> rusqlite::Connection {
        drop(self.store());
        rusqlite::Connection::open(DataDir::new(&self.data).db()).unwrap()
    }

    /// The real binary with this config.
    pub fn cli(&self) -> Command {
        let mut c = Command::new(BIN);
        c.arg("--config").arg(&self.config_file).env_remove("WARSHA_DATA_DIR").env_remove("WARSHA_FAULT");
        c
    }

    pub fn put(&self, rel: &str, bytes: &[u8]) -> PathBuf {
        let p = self.drop.join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, bytes).unwrap();
        p
    }

    /// Every file under `sub` of the drop folder, relative to it, sorted.
    pub fn files_under(&self, sub: &str) -> Vec<String> {
        let mut out = Vec::new();
        let root = self.drop.join(sub);
        collect(&root, &root, &mut out);
        out.sort();
        out
    }
}

fn collect(root: &Path, dir: &Path, out: &mut Vec<String>) {
    let Ok(rd) = std::fs::read_dir(dir) else { return };
    for e in rd.flatten() {
        let p = e.path();
        if e.file_type().unwrap().is_dir() {
            collect(root, &p, out);
        } else {
            out.push(p.strip_prefix(root).unwrap().to_string_lossy().into_owned());
        }
    }
}

/// A minimal DOCX whose `word/document.xml` body is `body`.
pub fn docx(body: &str) -> Vec<u8> {
    let xml = format!(
        r#"<?xml version="1.0" encoding="UTF-8"?><w:document xmlns:w="http://schemas.openxmlformats.org/wordprocessingml/2006/main"><w:body>{body}</w:body></w:document>"#
    );
    zip_with(&[
        ("[Content_Types].xml", br#"<?xml version="1.0"?><Types/>"#.to_vec()),
        ("word/document.xml", xml.into_bytes()),
    ])
}

pub fn zip_with(entries: &[(&str, Vec<u8>)]) -> Vec<u8> {
    let mut buf = std::io::Cursor::new(Vec::new());
    let mut z = zip::ZipWriter::new(&mut buf);
    let o = zip::write::SimpleFileOptions::default().compression_method(zip::CompressionMethod::Deflated);
    for (name, bytes) in entries {
        z.start_file(*name, o).unwrap();
        z.write_all(bytes).unwrap();
    }
    z.finish().unwrap();
    buf.into_inner()
}

/// A DOCX paragraph.
pub fn para(text: &str) -> String {
    format!("<w:p><w:r><w:t xml:space=\"preserve\">{text}</w:t></w:r></w:p>")
}

/// A one-page PDF built by hand: `content` is the page's content stream,
/// `extra` more objects (numbered from 6), `resources` the page's resources.
pub fn pdf(content: &str, resources: &str, extra: &[String]) -> Vec<u8> {
    let mut objs = vec![
        "<< /Type /Catalog /Pages 2 0 R >>".to_string(),
        "<< /Type /Pages /Kids [3 0 R] /Count 1 >>".to_string(),
        format!(
            "<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R /Resources {resources} >>"
        ),
        format!("<< /Length {} >>\nstream\n{content}\nendstream", content.len()),
        "<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>".to_string(),
    ];
    objs.extend(extra.iter().cloned());
    let mut out = b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n".to_vec();
    let mut offsets = Vec::new();
    for (i, o) in objs.iter().enumerate() {
        offsets.push(out.len());
        out.extend_from_slice(format!("{} 0 obj\n{o}\nendobj\n", i + 1).as_bytes());
    }
    let xref = out.len();
    out.extend_from_slice(format!("xref\n0 {}\n0000000000 65535 f \n", objs.len() + 1).as_bytes());
    for off in offsets {
        out.extend_from_slice(format!("{off:010} 00000 n \n").as_bytes());
    }
    out.extend_from_slice(
        format!("trailer\n<< /Size {} /Root 1 0 R >>\nstartxref\n{xref}\n%%EOF\n", objs.len() + 1).as_bytes(),
    );
    out
}

/// A PDF with a line of Helvetica text.
pub fn text_pdf(line: &str) -> Vec<u8> {
    pdf(&format!("BT /F1 18 Tf 72 700 Td ({line}) Tj ET"), "<< /Font << /F1 5 0 R >> >>", &[])
}

/// A "scanned" PDF: one image, no text.
pub fn image_pdf() -> Vec<u8> {
    let img = "<< /Type /XObject /Subtype /Image /Width 2 /Height 2 /ColorSpace /DeviceGray /BitsPerComponent 8 /Length 4 >>\nstream\n\u{10}\u{20}\u{30}\u{40}\nendstream".to_string();
    pdf("q 200 0 0 200 100 400 cm /Im1 Do Q", "<< /XObject << /Im1 6 0 R >> >>", &[img])
}

pub fn has_tool(name: &str) -> bool {
    Command::new(name).arg("--version").output().is_ok()
}
