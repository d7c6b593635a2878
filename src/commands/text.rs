//! `warsha text normalize --form …`: stdin → one normalization form → stdout,
//! line by line so that large inputs stream in constant memory. UTF-8 input
//! (with or without BOM) streams; input that starts like UTF-16 or an 8-bit
//! code page is read whole and goes through the decoder, which detects the
//! encoding or refuses with a byte offset.

use std::io::{self, BufRead, BufReader, Read, Write};

use anyhow::{bail, Context, Result};

use crate::cli::{TextCommand, TextForm};
use crate::text::decode::decode;
use crate::text::normalize::{normalize, Form};

pub fn run(cmd: TextCommand) -> Result<()> {
    match cmd {
        TextCommand::Normalize { form } => {
            let form = match form {
                TextForm::Search => Form::Search,
                TextForm::Train => Form::Train,
                TextForm::Display => Form::Display,
            };
            let stdin = io::stdin();
            let stdout = io::stdout();
            let mut out = io::BufWriter::with_capacity(1 << 16, stdout.lock());
            normalize_stream(stdin.lock(), &mut out, form)?;
            out.flush().context("writing stdout")?;
            Ok(())
        }
    }
}

/// Normalize `input` line by line into `out`; line endings are kept as read.
pub fn normalize_stream(input: impl Read, out: &mut impl Write, form: Form) -> Result<()> {
    // The first 64 KiB decide (one read from a pipe may return far less).
    let mut input = input;
    let mut head = Vec::with_capacity(HEAD);
    (&mut input).take(HEAD as u64).read_to_end(&mut head).context("reading stdin")?;
    if !streams_as_utf8(&head) {
        let mut all = head;
        input.read_to_end(&mut all).context("reading stdin")?;
        let text = decode(&all).map_err(|e| anyhow::anyhow!("stdin: {e}"))?;
        for line in text.text.split_inclusive('\n') {
            write_line(line, out, form)?;
        }
        return Ok(());
    }
    let mut reader = BufReader::with_capacity(1 << 16, io::Cursor::new(head).chain(input));
    let mut line = Vec::with_capacity(4096);
    let mut offset = 0usize;
    loop {
        line.clear();
        let n = reader.read_until(b'\n', &mut line).context("reading stdin")?;
        if n == 0 {
            return Ok(());
        }
        let bytes = if offset == 0 { line.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(&line) } else { &line };
        let skipped = n - bytes.len();
        match std::str::from_utf8(bytes) {
            Ok(s) => write_line(s, out, form)?,
            Err(e) => bail!("stdin: invalid UTF-8 at byte {}", offset + skipped + e.valid_up_to()),
        }
        offset += n;
    }
}

const HEAD: usize = 1 << 16;

/// UTF-8 (or ASCII) from its first block: anything else needs the decoder.
fn streams_as_utf8(head: &[u8]) -> bool {
    if head.starts_with(b"\xFF\xFE") || head.starts_with(b"\xFE\xFF") || head.contains(&0) {
        return false;
    }
    match std::str::from_utf8(head) {
        Ok(_) => true,
        // A multi-byte char cut by the block boundary is still UTF-8.
        Err(e) => e.error_len().is_none(),
    }
}

fn write_line(line: &str, out: &mut impl Write, form: Form) -> Result<()> {
    let (body, end) = match line.strip_suffix("\r\n") {
        Some(b) => (b, "\r\n"),
        None => match line.strip_suffix('\n') {
            Some(b) => (b, "\n"),
            None => (line, ""),
        },
    };
    out.write_all(normalize(body, form).as_bytes()).context("writing stdout")?;
    out.write_all(end.as_bytes()).context("writing stdout")?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run_on(bytes: &[u8], form: Form) -> Result<String> {
        let mut out = Vec::new();
        normalize_stream(bytes, &mut out, form)?;
        Ok(String::from_utf8(out)?)
    }

    #[test]
    fn lines_are_normalized_separately_and_endings_kept() {
        let got = run_on("\u{FEFF}الصيانةُ  الدورية\r\nPUMP ٣\n".as_bytes(), Form::Search).unwrap();
        assert_eq!(got, "الصيانه الدوريه\r\npump 3\n");
    }

    #[test]
    fn cp1256_input_goes_through_the_decoder() {
        let (bytes, _, _) = encoding_rs::WINDOWS_1256.encode("صيانة المضخة");
        assert_eq!(run_on(&bytes, Form::Train).unwrap(), "صيانة المضخة");
    }

    /// A pipe that hands over one byte per read.
    struct Trickle<'a>(&'a [u8]);

    impl Read for Trickle<'_> {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            match (self.0.split_first(), buf.first_mut()) {
                (Some((&b, rest)), Some(slot)) => {
                    *slot = b;
                    self.0 = rest;
                    Ok(1)
                }
                _ => Ok(0),
            }
        }
    }

    #[test]
    fn short_reads_do_not_hide_a_cp1256_file() {
        let (bytes, _, _) = encoding_rs::WINDOWS_1256.encode("Line 1: ok\nصيانة المضخة\n");
        let mut out = Vec::new();
        normalize_stream(Trickle(&bytes), &mut out, Form::Search).unwrap();
        assert_eq!(String::from_utf8(out).unwrap(), "line 1: ok\nصيانه المضخه\n");
    }

    #[test]
    fn invalid_utf8_later_in_the_stream_names_its_offset() {
        let mut bytes = "سطر أول\n".repeat(20_000).into_bytes();
        let at = bytes.len() + 3;
        bytes.extend_from_slice(b"abc\xFFdef\n");
        let err = run_on(&bytes, Form::Search).unwrap_err().to_string();
        assert!(err.contains(&format!("byte {at}")), "{err}");
    }
}
