//! The built-in demo data, compiled into the binary so that `warsha demo`
//! works from any directory: an invented plant's documents (assets/demo)
//! and the questions the demo is scored on (assets/eval/demo.jsonl).

/// Demo documents as (file name, bytes), in the formats operators drop.
pub const DOCUMENTS: &[(&str, &[u8])] = &[
    ("faq.csv", include_bytes!("../assets/demo/faq.csv")),
    ("handover_cp1256.txt", include_bytes!("../assets/demo/handover_cp1256.txt")),
    ("handover_utf16le_bom.txt", include_bytes!("../assets/demo/handover_utf16le_bom.txt")),
    ("line1_startup_sop.md", include_bytes!("../assets/demo/line1_startup_sop.md")),
    ("nm450_fault_codes.md", include_bytes!("../assets/demo/nm450_fault_codes.md")),
    ("nm450_hydraulic_filter_ar.docx", include_bytes!("../assets/demo/nm450_hydraulic_filter_ar.docx")),
    ("plant_overview.md", include_bytes!("../assets/demo/plant_overview.md")),
    ("pm_schedule.md", include_bytes!("../assets/demo/pm_schedule.md")),
    ("qa_train.jsonl", include_bytes!("../assets/demo/qa_train.jsonl")),
    ("quality_checks_ar.txt", include_bytes!("../assets/demo/quality_checks_ar.txt")),
    ("safety_rules.pdf", include_bytes!("../assets/demo/safety_rules.pdf")),
];

/// The demo eval set (format: docs/EVAL.md).
pub const EVAL_SET: &[u8] = include_bytes!("../assets/eval/demo.jsonl");

/// Its file name, as recorded with the scores.
pub const EVAL_SET_NAME: &str = "demo.jsonl";
