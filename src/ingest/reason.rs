//! Why a file was not taken, in words an operator understands, in English
//! (recorded in the database, printed by the CLI) and Arabic (written beside
//! the file in `rejected/`). The variants carry their figures as data so the
//! two languages always say the same thing.

use serde::{Deserialize, Serialize};

/// The extensions the extractors handle, as named in the "unsupported" reason.
pub const SUPPORTED: &str = ".txt .md .csv .tsv .jsonl .docx .pdf";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Reject {
    #[error("empty file")]
    Empty,
    #[error("file too large: {mib} MiB (limit {limit_mib} MiB, [ingest] max_file_mib)")]
    TooLarge { mib: u64, limit_mib: u64 },
    #[error("unsupported file type {ext:?}; supported: {SUPPORTED}")]
    Unsupported { ext: String },
    #[error("symbolic link (not followed out of the drop folder); copy the file itself")]
    Symlink,
    #[error("binary data, not text")]
    Binary,
    #[error("text is not valid {encoding}: {detail} at byte {offset}")]
    BadEncoding { encoding: String, offset: usize, detail: String },
    #[error("no text found")]
    NoText,
    #[error("no question–answer rows: {detail}")]
    NoQa { detail: String },
    #[error("damaged or password-protected DOCX: {detail}")]
    DocxDamaged { detail: String },
    #[error("DOCX unpacks to more than {limit_mib} MiB (zip bomb?)")]
    DocxTooLarge { limit_mib: u64 },
    #[error("encrypted PDF")]
    PdfEncrypted,
    #[error("scanned: no text layer")]
    PdfScanned,
    #[error("unreadable PDF: {detail}")]
    PdfUnreadable { detail: String },
    #[error("PDF support needs pdftotext (poppler-utils), which is not installed")]
    PdfToolMissing,
    #[error("text extraction took longer than {secs} s ([ingest] extract_timeout_secs)")]
    Timeout { secs: u64 },
    #[error("text extraction ran out of memory (limit {limit_mib} MiB)")]
    OutOfMemory { limit_mib: u64 },
    #[error("text extraction failed: {detail}")]
    Crashed { detail: String },
    #[error("cannot read the file: {detail}")]
    Unreadable { detail: String },
}

impl Reject {
    /// The same reason in Arabic, for `NAME.error.txt`.
    pub fn arabic(&self) -> String {
        match self {
            Reject::Empty => "الملف فارغ".into(),
            Reject::TooLarge { mib, limit_mib } => {
                format!("الملف كبير جدًا: {mib} ميغابايت (الحد الأقصى {limit_mib} ميغابايت)")
            }
            Reject::Unsupported { ext } => {
                format!("نوع الملف «{ext}» غير مدعوم؛ الأنواع المدعومة: {SUPPORTED}")
            }
            Reject::Symlink => "رابط رمزي لا يُتبع خارج مجلد الإيداع؛ انسخ الملف نفسه".into(),
            Reject::Binary => "الملف يحتوي على بيانات ثنائية وليس نصًا".into(),
            Reject::BadEncoding { encoding, offset, .. } => {
                format!("النص ليس بترميز {encoding} صالح (بايت غير صالح عند الموضع {offset})")
            }
            Reject::NoText => "لم يُعثر على أي نص في الملف".into(),
            Reject::NoQa { .. } => "لا توجد صفوف سؤال وجواب صالحة في الملف".into(),
            Reject::DocxDamaged { .. } => "ملف DOCX تالف أو محمي بكلمة مرور".into(),
            Reject::DocxTooLarge { limit_mib } => {
                format!("ملف DOCX يتجاوز {limit_mib} ميغابايت عند فك ضغطه (قنبلة ضغط؟)")
            }
            Reject::PdfEncrypted => "ملف PDF مشفّر".into(),
            Reject::PdfScanned => "ملف PDF ممسوح ضوئيًا: لا توجد فيه طبقة نص".into(),
            Reject::PdfUnreadable { .. } => "تعذّرت قراءة ملف PDF".into(),
            Reject::PdfToolMissing => "قراءة ملفات PDF تحتاج إلى أداة pdftotext غير المثبتة".into(),
            Reject::Timeout { secs } => format!("استغرق استخراج النص أكثر من {secs} ثانية"),
            Reject::OutOfMemory { limit_mib } => {
                format!("نفدت الذاكرة أثناء استخراج النص (الحد {limit_mib} ميغابايت)")
            }
            Reject::Crashed { .. } => "فشل استخراج النص من الملف".into(),
            Reject::Unreadable { .. } => "تعذّرت قراءة الملف".into(),
        }
    }

    /// The text of `NAME.error.txt`: Arabic first, then English.
    pub fn error_file_text(&self, name: &str, sha256: Option<&str>) -> String {
        let mut s = format!(
            "لم يُقبل هذا الملف: {}\nThis file was not accepted: {}\n\nFile / الملف: {}\n",
            self.arabic(),
            self,
            name
        );
        if let Some(sha) = sha256 {
            s.push_str(&format!("sha256: {sha}\n"));
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_round_trip_through_json_for_the_extract_child() {
        let r = Reject::BadEncoding { encoding: "utf-8".into(), offset: 7, detail: "bad byte".into() };
        let j = serde_json::to_string(&r).unwrap();
        assert_eq!(serde_json::from_str::<Reject>(&j).unwrap(), r);
    }

    #[test]
    fn error_file_names_the_reason_in_both_languages() {
        let t = Reject::PdfScanned.error_file_text("scan.pdf", Some("ab12"));
        assert!(t.contains("scanned: no text layer") && t.contains("ممسوح") && t.contains("scan.pdf"), "{t}");
    }
}
