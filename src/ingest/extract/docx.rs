//! DOCX: `word/document.xml` read from the zip with a streaming XML parser.
//! Paragraphs become blocks, heading styles `# ` lines, tables rows of cells
//! joined by " | ". Text is already in logical order; `w:bidi` only marks
//! direction. Unpacked size is bounded twice: by the entry's declared size,
//! and by counting the bytes actually inflated (headers can lie).

use std::fs::File;
use std::io::{BufReader, Read};
use std::path::Path;

use quick_xml::events::{BytesStart, Event};
use quick_xml::Reader;

use super::{train_text, Extracted};
use crate::ingest::reason::Reject;

const MIB: u64 = 1 << 20;

pub fn extract(path: &Path, max_unpacked: u64) -> Result<Extracted, Reject> {
    let damaged = |detail: String| Reject::DocxDamaged { detail };
    let f = File::open(path).map_err(|e| Reject::Unreadable { detail: e.to_string() })?;
    let mut zip = zip::ZipArchive::new(BufReader::new(f)).map_err(|e| damaged(e.to_string()))?;
    let entry = zip.by_name("word/document.xml").map_err(|e| damaged(format!("word/document.xml: {e}")))?;
    let too_large = Reject::DocxTooLarge { limit_mib: max_unpacked.div_ceil(MIB) };
    if entry.size() > max_unpacked {
        return Err(too_large);
    }
    let mut counted = Counted { inner: entry, left: max_unpacked, over: false };
    let mut out = Walk::default();
    let res = out.run(&mut counted);
    if counted.over {
        return Err(too_large);
    }
    res.map_err(damaged)?;
    let mut warnings = Vec::new();
    if out.rtl_paragraphs > 0 {
        warnings.push(format!("{} right-to-left paragraphs (w:bidi)", out.rtl_paragraphs));
    }
    Ok(Extracted { text: train_text(&out.text), encoding: None, warnings, qa: Vec::new() })
}

/// A reader that refuses to yield more than `left` bytes.
struct Counted<R> {
    inner: R,
    left: u64,
    over: bool,
}

impl<R: Read> Read for Counted<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        if n as u64 > self.left {
            self.over = true;
            return Err(std::io::Error::other("unpacked size limit"));
        }
        self.left -= n as u64;
        Ok(n)
    }
}

#[derive(Default)]
struct Walk {
    text: String,
    para: String,
    heading: bool,
    in_text: bool,
    rtl_paragraphs: usize,
    /// Open tables, innermost last: finished rows, the current row's cells, the current cell.
    tables: Vec<(Vec<String>, Vec<String>, String)>,
}

impl Walk {
    fn run(&mut self, r: &mut impl Read) -> Result<(), String> {
        let mut reader = Reader::from_reader(BufReader::new(r));
        let mut buf = Vec::new();
        loop {
            let ev = reader.read_event_into(&mut buf).map_err(|e| format!("word/document.xml: {e}"))?;
            match ev {
                Event::Start(e) => self.open(&e),
                Event::Empty(e) => {
                    self.open(&e);
                    self.close(e.local_name().as_ref());
                }
                Event::End(e) => self.close(e.local_name().as_ref()),
                Event::Text(t) if self.in_text => {
                    self.para.push_str(&t.decode().map_err(|e| e.to_string())?);
                }
                Event::GeneralRef(r) if self.in_text => {
                    if let Ok(Some(c)) = r.resolve_char_ref() {
                        self.para.push(c);
                    } else {
                        let name = r.decode().map_err(|e| e.to_string())?;
                        self.para.push_str(match name.as_ref() {
                            "amp" => "&",
                            "lt" => "<",
                            "gt" => ">",
                            "quot" => "\"",
                            "apos" => "'",
                            _ => "",
                        });
                    }
                }
                Event::Eof => break,
                _ => {}
            }
            buf.clear();
        }
        if !self.para.is_empty() {
            self.end_paragraph();
        }
        Ok(())
    }

    fn open(&mut self, e: &BytesStart<'_>) {
        match e.local_name().as_ref() {
            b"p" => {
                self.para.clear();
                self.heading = false;
            }
            b"t" => self.in_text = true,
            b"tab" => self.para.push('\t'),
            b"br" | b"cr" => self.para.push('\n'),
            b"bidi" => self.rtl_paragraphs += 1,
            b"outlineLvl" => self.heading = true,
            b"pStyle" => {
                let style = e
                    .attributes()
                    .flatten()
                    .find(|a| a.key.local_name().as_ref() == b"val")
                    .map(|a| String::from_utf8_lossy(&a.value).to_ascii_lowercase())
                    .unwrap_or_default();
                if style.starts_with("heading") || style == "title" {
                    self.heading = true;
                }
            }
            b"tbl" => self.tables.push(Default::default()),
            b"tr" => {
                if let Some(t) = self.tables.last_mut() {
                    t.1.clear();
                }
            }
            b"tc" => {
                if let Some(t) = self.tables.last_mut() {
                    t.2.clear();
                }
            }
            _ => {}
        }
    }

    fn close(&mut self, name: &[u8]) {
        match name {
            b"t" => self.in_text = false,
            b"p" => self.end_paragraph(),
            b"tc" => {
                if let Some(t) = self.tables.last_mut() {
                    let cell = std::mem::take(&mut t.2);
                    t.1.push(cell.split_whitespace().collect::<Vec<_>>().join(" "));
                }
            }
            b"tr" => {
                if let Some(t) = self.tables.last_mut() {
                    let row = std::mem::take(&mut t.1);
                    t.0.push(row.join(" | "));
                }
            }
            b"tbl" => {
                if let Some((rows, _, _)) = self.tables.pop() {
                    let block = rows.join("\n");
                    match self.tables.last_mut() {
                        Some(outer) => {
                            outer.2.push(' ');
                            outer.2.push_str(&block);
                        }
                        None => self.push_block(&block),
                    }
                }
            }
            _ => {}
        }
    }

    fn end_paragraph(&mut self) {
        let p = std::mem::take(&mut self.para);
        if let Some(t) = self.tables.last_mut() {
            if !t.2.is_empty() {
                t.2.push(' ');
            }
            t.2.push_str(&p);
            return;
        }
        if p.trim().is_empty() {
            return;
        }
        if self.heading {
            let line = format!("# {}", p.trim());
            self.push_block(&line);
        } else {
            self.push_block(&p);
        }
    }

    fn push_block(&mut self, block: &str) {
        if block.trim().is_empty() {
            return;
        }
        if !self.text.is_empty() {
            self.text.push_str("\n\n");
        }
        self.text.push_str(block.trim_end());
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::io::Write;

    /// A minimal DOCX holding `body` as the inside of `<w:body>`.
    pub fn docx_bytes(body: &str) -> Vec<u8> {
        let mut buf = std::io::Cursor::new(Vec::new());
        let mut z = zip::ZipWriter::new(&mut buf);
        let o = zip::write::SimpleFileOptions::default();
        z.start_file("[Content_Types].xml", o).unwrap();
        z.write_all(br#"<?xml version="1.0"?><Types xmlns="http://schemas.openxmlformats.org/package/2006/content-types"/>"#).unwrap();
        z.start_file("word/document.xml", o).unwrap();
        write!(z, r#"<?xml version="1.0" encoding="UTF-8"?><w:document xmlns:w="http://schemas.openxmlformats.org/wordprocessingml/2006/main"><w:body>{body}</w:body></w:document>"#).unwrap();
        z.finish().unwrap();
        buf.into_inner()
    }

    #[test]
    fn inflated_bytes_are_counted_whatever_the_header_declares() {
        let data = vec![b' '; 10_000];
        let mut c = Counted { inner: &data[..], left: 4096, over: false };
        let mut sink = Vec::new();
        assert!(c.read_to_end(&mut sink).is_err());
        assert!(c.over);
        assert!(sink.len() <= 4096);
    }

    #[test]
    fn a_docx_whose_xml_unpacks_past_the_cap_is_a_bomb() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("bomb.docx");
        std::fs::write(&p, docx_bytes(&format!("<w:p><w:r><w:t>{}</w:t></w:r></w:p>", " ".repeat(3 << 20))))
            .unwrap();
        assert_eq!(extract(&p, 1 << 20), Err(Reject::DocxTooLarge { limit_mib: 1 }));
    }

    #[test]
    fn paragraphs_headings_tables_breaks_and_bidi() {
        let body = r#"<w:p><w:pPr><w:pStyle w:val="Heading1"/><w:bidi/></w:pPr><w:r><w:t>دليل الصيانة</w:t></w:r></w:p>
<w:p><w:pPr><w:bidi/></w:pPr><w:r><w:t xml:space="preserve">افحص الصمام </w:t></w:r><w:r><w:t>كل أسبوع</w:t><w:br/><w:t>Check &amp; log</w:t></w:r></w:p>
<w:tbl><w:tr><w:tc><w:p><w:r><w:t>القطعة</w:t></w:r></w:p></w:tc><w:tc><w:p><w:r><w:t>الضغط</w:t></w:r></w:p></w:tc></w:tr>
<w:tr><w:tc><w:p><w:r><w:t>P-101</w:t></w:r></w:p></w:tc><w:tc><w:p><w:r><w:t>6 bar</w:t></w:r></w:p></w:tc></w:tr></w:tbl>"#;
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("a.docx");
        std::fs::write(&p, docx_bytes(body)).unwrap();
        let e = extract(&p, 1 << 20).unwrap();
        assert_eq!(
            e.text,
            "# دليل الصيانة\n\nافحص الصمام كل أسبوع\nCheck & log\n\nالقطعة | الضغط\nP-101 | 6 bar"
        );
        assert_eq!(e.warnings, vec!["2 right-to-left paragraphs (w:bidi)".to_string()]);
    }
}
