//! What a file's name says: whether it is a temporary or system file that is
//! never taken (`[ingest] ignore`, simple globs), and which extractor reads it.

use serde::{Deserialize, Serialize};

/// The document kinds the extractors handle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    Txt,
    Md,
    Csv,
    Jsonl,
    Docx,
    Pdf,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Txt => "txt",
            Kind::Md => "md",
            Kind::Csv => "csv",
            Kind::Jsonl => "jsonl",
            Kind::Docx => "docx",
            Kind::Pdf => "pdf",
        }
    }

    pub fn parse(s: &str) -> Option<Kind> {
        Some(match s {
            "txt" => Kind::Txt,
            "md" => Kind::Md,
            "csv" => Kind::Csv,
            "jsonl" => Kind::Jsonl,
            "docx" => Kind::Docx,
            "pdf" => Kind::Pdf,
            _ => return None,
        })
    }

    /// The kind for a file name's extension (case-insensitive).
    pub fn from_name(name: &str) -> Option<Kind> {
        let ext = extension(name)?.to_ascii_lowercase();
        Some(match ext.as_str() {
            "txt" | "text" => Kind::Txt,
            "md" | "markdown" => Kind::Md,
            "csv" | "tsv" => Kind::Csv,
            "jsonl" | "ndjson" => Kind::Jsonl,
            "docx" => Kind::Docx,
            "pdf" => Kind::Pdf,
            _ => return None,
        })
    }
}

/// The extension after the last dot ("" names and dot-files have none).
pub fn extension(name: &str) -> Option<&str> {
    let (stem, ext) = name.rsplit_once('.')?;
    (!stem.is_empty() && !ext.is_empty()).then_some(ext)
}

/// The `[ingest] ignore` patterns: `*` and `?` globs on a name; a trailing `/`
/// makes a pattern match folders (whose whole subtree is then skipped).
#[derive(Debug, Clone)]
pub struct IgnoreSet {
    files: Vec<Vec<char>>,
    dirs: Vec<Vec<char>>,
}

impl IgnoreSet {
    pub fn new(patterns: &[String]) -> Self {
        let mut files = Vec::new();
        let mut dirs = Vec::new();
        for p in patterns {
            match p.strip_suffix('/') {
                Some(d) => dirs.push(d.chars().collect()),
                None => files.push(p.chars().collect()),
            }
        }
        Self { files, dirs }
    }

    /// The pattern a file name matches, if any.
    pub fn file_match(&self, name: &str) -> Option<String> {
        let n: Vec<char> = name.chars().collect();
        self.files.iter().find(|p| glob(p, &n)).map(|p| p.iter().collect())
    }

    pub fn dir_matches(&self, name: &str) -> bool {
        let n: Vec<char> = name.chars().collect();
        self.dirs.iter().any(|p| glob(p, &n))
    }
}

/// `*` matches any run (also empty), `?` one character; everything else literally.
fn glob(p: &[char], s: &[char]) -> bool {
    let (mut pi, mut si) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while si < s.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == s[si]) {
            pi += 1;
            si += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some((pi, si));
            pi += 1;
        } else if let Some((sp, ss)) = star {
            pi = sp + 1;
            si = ss + 1;
            star = Some((sp, ss + 1));
        } else {
            return false;
        }
    }
    p[pi..].iter().all(|&c| c == '*')
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    #[test]
    fn default_ignore_list_catches_temporary_and_system_names() {
        let set = IgnoreSet::new(&Config::defaults().ingest.ignore);
        for n in [
            "~$report.docx",
            "big.iso.filepart",
            "x.part",
            "a.tmp",
            ".~lock.plan.odt#",
            "._manual.pdf",
            ".DS_Store",
            "Thumbs.db",
            "desktop.ini",
            ".syncthing.manual.pdf.tmp",
        ] {
            assert!(set.file_match(n).is_some(), "{n} should be ignored");
        }
        for n in ["report.docx", "partial.txt", "tmp.csv", "دليل.pdf", "lock.txt"] {
            assert!(set.file_match(n).is_none(), "{n} should be taken");
        }
        assert!(set.dir_matches("$RECYCLE.BIN"));
        assert!(!set.dir_matches("manuals"));
    }

    #[test]
    fn kinds_by_extension() {
        assert_eq!(Kind::from_name("A.PDF"), Some(Kind::Pdf));
        assert_eq!(Kind::from_name("set.tsv"), Some(Kind::Csv));
        assert_eq!(Kind::from_name("notes"), None);
        assert_eq!(Kind::from_name(".bashrc"), None);
        assert_eq!(Kind::from_name("x.exe"), None);
    }
}
