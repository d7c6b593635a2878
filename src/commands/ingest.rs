//! `warsha ingest` (the drop folder once, or files/folders in place),
//! `warsha bench ingest`, and the hidden `__extract` child.

use std::io::Write;

use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use rand::{Rng, SeedableRng};

use super::Ctx;
use crate::cli::{BenchIngestArgs, ExtractArgs, IngestArgs};
use crate::config;
use crate::data_dir::DataDir;
use crate::ingest::extract::isolate::child_main;
use crate::ingest::extract::Extractor;
use crate::ingest::pipeline::{Candidate, Origin, Outcome, Pipeline, State};
use crate::ingest::worker::{walk, Worker};
use crate::store::{Level, Store};

pub fn extract_child(a: &ExtractArgs) -> Result<()> {
    child_main(&a.file, &a.kind, a.max_unpacked).context("writing the extraction result")
}

fn pipeline(cfg: &config::Ingest, data: &DataDir) -> Result<Pipeline> {
    data.create()?;
    let store = Store::open(&data.db())?;
    let exe = std::env::current_exe().context("locating the warsha binary for extraction")?;
    Ok(Pipeline::new(store, data.clone(), cfg.clone(), Extractor::new(exe, cfg))?)
}

pub fn run(ctx: &Ctx, args: &IngestArgs) -> Result<()> {
    if args.paths.is_empty() {
        if let Some(mut conn) = super::serve::service(ctx)? {
            let verb = serde_json::json!({"verb": "ingest-now"});
            return super::serve::call(&mut conn, verb, args.out.json, "drop folder scan started");
        }
    }
    let _lock = ctx.data.lock()?;
    let mut pipe = pipeline(&ctx.config.ingest, &ctx.data)?;
    let json = args.out.json;
    let mut tally = Tally::default();
    let mut print = |o: &Outcome| {
        tally.add(o);
        print_outcome(o, json);
    };
    if args.paths.is_empty() {
        let root = ctx.config.ingest.drop_folder.clone();
        if !root.is_dir() {
            bail!("drop folder {} does not exist ([ingest] drop_folder)", root.display());
        }
        let bound = Duration::from_secs(ctx.config.ingest.stability_secs * 6 + 30);
        let mut worker = Worker::new(pipe, None, Arc::new(AtomicBool::new(false)));
        let left = worker.drain(bound, &mut print)?;
        for o in &left {
            print(o);
        }
        let summary = tally.summary();
        worker.pipeline().store().event(
            Level::Info,
            "ingest",
            &format!("drop folder pass: {summary}"),
            None,
        )?;
        if !json {
            println!("{summary}");
        }
        return Ok(());
    }
    for o in pipe.resume()? {
        print(&o);
    }
    for arg in &args.paths {
        let abs = std::fs::canonicalize(arg).with_context(|| format!("{}", arg.display()))?;
        let mut files = Vec::new();
        if abs.is_dir() {
            let ignore = pipe.ignore().clone();
            walk(
                &abs,
                &mut |p, _| p.file_name().is_some_and(|n| ignore.dir_matches(&n.to_string_lossy())),
                &mut files,
            );
        } else {
            files.push(abs);
        }
        for f in files {
            let c = Candidate { rel: f.to_string_lossy().into_owned(), abs: f, origin: Origin::Path };
            if let Some(o) = pipe.take(&c, None)? {
                print(&o);
            }
        }
    }
    let summary = tally.summary();
    pipe.store().event(Level::Info, "ingest", &format!("in-place pass: {summary}"), None)?;
    if !json {
        println!("{summary}");
    }
    Ok(())
}

fn print_outcome(o: &Outcome, json: bool) {
    if json {
        println!("{}", serde_json::to_string(o).unwrap_or_default());
        return;
    }
    let detail = match (o.state, o.document_id) {
        (State::Ingested, Some(d)) => format!("document {d}, {} chunks", o.chunks),
        (State::Duplicate, _) => o.reason.clone().unwrap_or_default(),
        _ => o.reason.clone().unwrap_or_default(),
    };
    println!("{:<9} {}  {}", o.state.as_str(), o.path.escape_debug(), detail);
}

#[derive(Default)]
struct Tally {
    counts: [usize; 5],
}

impl Tally {
    fn add(&mut self, o: &Outcome) {
        self.counts[o.state as usize] += 1;
    }
    fn summary(&self) -> String {
        let c = &self.counts;
        format!(
            "{} ingested, {} duplicate, {} rejected, {} ignored, {} still changing",
            c[0], c[1], c[2], c[3], c[4]
        )
    }
}

// ---- bench ingest -----------------------------------------------------------

/// Everyday words of a plant's documents, for generated Arabic text.
const WORDS: &[&str] = &[
    "الصمام",
    "المضخة",
    "الضغط",
    "درجة",
    "الحرارة",
    "افحص",
    "قبل",
    "بعد",
    "التشغيل",
    "الصيانة",
    "الدورية",
    "يجب",
    "على",
    "المشغل",
    "ارتداء",
    "معدات",
    "الوقاية",
    "الشخصية",
    "خط",
    "الإنتاج",
    "المحرك",
    "الكهربائي",
    "الزيت",
    "الهيدروليكي",
    "المرشح",
    "استبدل",
    "كل",
    "ساعة",
    "عند",
    "ظهور",
    "إنذار",
    "أوقف",
    "الآلة",
    "فورًا",
    "وأبلغ",
    "المشرف",
    "السلامة",
    "أولاً",
    "الحزام",
    "الناقل",
    "السرعة",
    "القصوى",
    "بار",
    "دقيقة",
    "التبريد",
    "المياه",
    "الخزان",
    "مستوى",
    "منخفض",
    "مرتفع",
    "تحقق",
    "من",
    "التوصيلات",
    "والأسلاك",
    "اللوحة",
    "الرئيسية",
];

pub fn bench(ctx: &Ctx, args: &BenchIngestArgs) -> Result<()> {
    let tmp = tempfile::Builder::new().prefix("warsha-bench-ingest-").tempdir()?;
    let mut cfg = ctx.config.ingest.clone();
    cfg.max_file_mib = cfg.max_file_mib.max(args.large_mb as u64 * 2 + 1);
    cfg.extract_timeout_secs = cfg.extract_timeout_secs.max(300);
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let mut sentence = |n: usize| -> String {
        let mut s = String::new();
        for i in 0..n {
            if i > 0 {
                s.push(' ');
            }
            s.push_str(WORDS[rng.random_range(0..WORDS.len())]);
        }
        s
    };

    // Small files, in place.
    let small = tmp.path().join("small");
    std::fs::create_dir_all(&small)?;
    let mut small_bytes = 0u64;
    for i in 0..args.files {
        let text = format!("# مذكرة {i}\n\n{}.\n\nNote {i}: check valve V-{i} weekly.\n", sentence(120));
        small_bytes += text.len() as u64;
        std::fs::write(small.join(format!("note-{i:05}.txt")), text)?;
    }
    let data = DataDir::new(tmp.path().join("data"));
    let mut pipe = pipeline(&cfg, &data)?;
    let t = Instant::now();
    let c0 = cpu_secs();
    let mut n_small = 0;
    let mut files = Vec::new();
    walk(&small, &mut |_, _| false, &mut files);
    for f in files {
        let c = Candidate { rel: f.to_string_lossy().into_owned(), abs: f, origin: Origin::Path };
        if pipe.take(&c, None)?.is_some_and(|o| o.state == State::Ingested) {
            n_small += 1;
        }
    }
    let small_secs = t.elapsed().as_secs_f64();
    let small_cpu = cpu_secs() - c0;
    let hwm_small = vm_hwm_kib();

    // The same number of files through the drop folder (settle delay excluded): moves included.
    let drop_dir = tmp.path().join("drop");
    std::fs::create_dir_all(&drop_dir)?;
    for i in 0..args.files {
        let text = format!("{}\n\nDrop note {i}.\n", sentence(120));
        std::fs::write(drop_dir.join(format!("drop-{i:05}.txt")), text)?;
    }
    let mut dcfg = cfg.clone();
    dcfg.drop_folder = drop_dir.clone();
    let dpipe = pipeline(&dcfg, &data)?;
    let mut worker = Worker::with_delay(dpipe, None, Arc::new(AtomicBool::new(false)), Duration::ZERO);
    let t = Instant::now();
    let c0 = cpu_secs();
    let mut n_drop = 0;
    worker.drain(Duration::from_secs(3600), |o| n_drop += usize::from(o.state == State::Ingested))?;
    let drop_secs = t.elapsed().as_secs_f64();
    let drop_cpu = cpu_secs() - c0;
    drop(worker);

    // One large Arabic text.
    let large = tmp.path().join("large.txt");
    {
        let mut f = std::io::BufWriter::new(std::fs::File::create(&large)?);
        let mut written = 0usize;
        let mut para = 0;
        while written < args.large_mb * 1_000_000 {
            let p = if para % 40 == 0 {
                format!("## قسم {para}\n\n")
            } else {
                format!("{}.\n\n", sentence(60))
            };
            written += p.len();
            f.write_all(p.as_bytes())?;
            para += 1;
        }
        f.flush()?;
    }
    let large_bytes = std::fs::metadata(&large)?.len();
    let t = Instant::now();
    let c0 = cpu_secs();
    let c = Candidate { rel: large.to_string_lossy().into_owned(), abs: large.clone(), origin: Origin::Path };
    let lo = pipe.take(&c, None)?;
    let large_secs = t.elapsed().as_secs_f64();
    let large_cpu = cpu_secs() - c0;
    let large_state = lo.as_ref().map(|o| o.state.as_str()).unwrap_or("none");
    let large_chunks = lo.as_ref().map(|o| o.chunks).unwrap_or(0);
    let hwm_end = vm_hwm_kib();
    let child_peak = children_maxrss_kib();

    let mb = |b: u64| b as f64 / 1e6;
    let report = serde_json::json!({
        "small_files": args.files,
        "small_ingested": n_small,
        "small_mb": mb(small_bytes),
        "small_secs": small_secs,
        "small_files_per_s": n_small as f64 / small_secs,
        "small_mb_per_s": mb(small_bytes) / small_secs,
        "small_cpu_secs": small_cpu,
        "drop_files_ingested": n_drop,
        "drop_secs": drop_secs,
        "drop_files_per_s": n_drop as f64 / drop_secs,
        "drop_cpu_secs": drop_cpu,
        "large_mb": mb(large_bytes),
        "large_state": large_state,
        "large_chunks": large_chunks,
        "large_secs": large_secs,
        "large_mb_per_s": mb(large_bytes) / large_secs,
        "large_cpu_secs": large_cpu,
        "fsync_ms": fsync_ms(tmp.path()),
        "vm_hwm_mib_after_small": hwm_small / 1024.0,
        "vm_hwm_mib_end": hwm_end / 1024.0,
        "extract_child_peak_rss_mib": child_peak / 1024.0,
    });
    if args.out.json {
        println!("{report}");
    } else {
        println!(
            "small TXT, in place   {n_small} files, {:.2} MB in {small_secs:.2} s ({small_cpu:.2} CPU-s): {:.0} files/s, {:.2} MB/s",
            mb(small_bytes),
            n_small as f64 / small_secs,
            mb(small_bytes) / small_secs
        );
        println!(
            "small TXT, drop+move  {n_drop} files in {drop_secs:.2} s ({drop_cpu:.2} CPU-s): {:.0} files/s",
            n_drop as f64 / drop_secs
        );
        println!(
            "large Arabic TXT      {:.1} MB, {large_state}, {large_chunks} chunks in {large_secs:.2} s ({large_cpu:.2} CPU-s): {:.2} MB/s",
            mb(large_bytes),
            mb(large_bytes) / large_secs
        );
        println!(
            "peak RSS (VmHWM)      {:.0} MiB after the small files, {:.0} MiB at the end; extract child {:.0} MiB",
            hwm_small / 1024.0,
            hwm_end / 1024.0,
            child_peak / 1024.0
        );
        println!(
            "disk                  {:.1} ms per small write + fsync",
            report["fsync_ms"].as_f64().unwrap_or(f64::NAN)
        );
    }
    Ok(())
}

/// CPU seconds used so far by this process and its waited-for children
/// (user + system): the figure that does not depend on other load.
fn cpu_secs() -> f64 {
    use crate::sys::{resource_usage, Usage};
    resource_usage(Usage::Process).cpu_seconds + resource_usage(Usage::Children).cpu_seconds
}

/// Milliseconds one small write + fsync takes on the bench's disk.
fn fsync_ms(dir: &std::path::Path) -> f64 {
    let p = dir.join("fsync-probe");
    let Ok(mut f) = std::fs::File::create(&p) else { return f64::NAN };
    let t = Instant::now();
    for _ in 0..20 {
        if f.write_all(b"x").and_then(|_| f.sync_all()).is_err() {
            return f64::NAN;
        }
    }
    t.elapsed().as_secs_f64() * 1000.0 / 20.0
}

fn vm_hwm_kib() -> f64 {
    crate::sys::peak_rss_bytes().map_or(0.0, |b| b as f64 / 1024.0)
}

fn children_maxrss_kib() -> f64 {
    crate::sys::resource_usage(crate::sys::Usage::Children).max_rss_kib as f64
}
