//! `device-runtime bench`: the real [`Detector`] of a bundle, timed per stage on decoded camera
//! frames, as the pipeline runs it (inside a rayon pool of `--threads`, one frame at a time).
//!
//! Stages per frame: preprocess (test transform of the decoded frame, then rotation and
//! normalisation of each view), encoder (every view), kNN (the bank scans and the ensemble
//! mean), decision (distance against the threshold). Reported as p50 and p99 in milliseconds,
//! with frames per second over the timed frames; `--json` prints one object.
//! `selfcheck` is this benchmark on a bundle with random weights.

use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use firm_shared::bundle::{Bundle, Limits};
use firm_shared::detect::synthetic::pattern;
use firm_shared::detect::{Backend, Detector, StageTimes};
use image::RgbImage;
use rand::SeedableRng;
use serde::Serialize;

#[derive(Debug, Clone, clap::Args)]
pub struct BenchArgs {
    /// Bundle file to time (written by `host-trainer export`; its signature is not checked).
    #[arg(long, value_name = "FILE")]
    pub bundle: std::path::PathBuf,
    #[command(flatten)]
    pub run: RunArgs,
}

/// How the frames are timed (shared with `selfcheck`).
#[derive(Debug, Clone, clap::Args)]
pub struct RunArgs {
    /// Backend that runs the encoder.
    #[arg(long, default_value = "cpu", value_parser = parse_backend)]
    pub backend: Backend,
    /// Frames to time (after the warm-up frames).
    #[arg(long, default_value_t = 50, value_name = "N")]
    pub frames: usize,
    /// Untimed frames first (caches, lazily sized buffers).
    #[arg(long, default_value_t = 3, value_name = "N")]
    pub warmup: usize,
    /// Threads of the inference pool (default: every core).
    #[arg(long, value_name = "N")]
    pub threads: Option<usize>,
    /// Camera frame width in pixels (frames are generated, decoded RGB).
    #[arg(long, default_value_t = 640, value_name = "PX")]
    pub frame_width: u32,
    /// Camera frame height in pixels.
    #[arg(long, default_value_t = 480, value_name = "PX")]
    pub frame_height: u32,
    /// Print one JSON object instead of the table.
    #[arg(long)]
    pub json: bool,
}

fn parse_backend(s: &str) -> std::result::Result<Backend, String> {
    s.parse().map_err(|e: firm_shared::Error| e.to_string())
}

/// p50 and p99 of one stage, milliseconds.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Percentiles {
    pub p50_ms: f64,
    pub p99_ms: f64,
}

/// What one benchmark measured.
#[derive(Debug, Clone, Serialize)]
pub struct BenchReport {
    pub backend: String,
    pub isa: String,
    pub threads: usize,
    pub backbone: String,
    pub encoder: String,
    pub input_size: u32,
    pub frame: String,
    pub views_per_frame: usize,
    pub activations: String,
    pub gmac_per_view: f64,
    /// Activation memory the backend planned at load (arena and im2col buffers), if it says.
    pub activation_bytes: Option<usize>,
    pub bank_entries: usize,
    pub frames: usize,
    pub preprocess_p50_ms: f64,
    pub preprocess_p99_ms: f64,
    pub encoder_p50_ms: f64,
    pub encoder_p99_ms: f64,
    pub knn_p50_ms: f64,
    pub knn_p99_ms: f64,
    /// Patch scoring (features, patch bank, map); 0 for bundles without it.
    #[serde(default)]
    pub patch_p50_ms: f64,
    #[serde(default)]
    pub patch_p99_ms: f64,
    /// Patch bank entries (0: no patch scoring).
    #[serde(default)]
    pub patch_bank_entries: usize,
    pub decision_p50_ms: f64,
    pub decision_p99_ms: f64,
    pub total_p50_ms: f64,
    pub total_p99_ms: f64,
    pub fps: f64,
    pub last_distance: f64,
}

fn percentiles(mut v: Vec<f64>) -> Percentiles {
    v.sort_by(f64::total_cmp);
    let at = |p: f64| v[((v.len() - 1) as f64 * p).round() as usize];
    Percentiles {
        p50_ms: at(0.5),
        p99_ms: at(0.99),
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// Time `bundle`'s detector on generated frames.
pub fn bench(bundle: &Bundle, a: &RunArgs) -> Result<BenchReport> {
    ensure!(a.frames >= 1, "--frames must be at least 1");
    ensure!(
        a.frame_width >= 1 && a.frame_height >= 1,
        "--frame-width and --frame-height must be at least 1 pixel"
    );
    let threads = a
        .threads
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get()));
    ensure!(threads >= 1, "--threads must be at least 1");
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .thread_name(|i| format!("bench-{i}"))
        .build()
        .context("starting the inference threads")?;
    let m = &bundle.manifest;
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0);
    let frames: Vec<RgbImage> = (0..4)
        .map(|_| pattern(a.frame_width, a.frame_height, &mut rng))
        .collect();
    let threshold = m.threshold.distance;
    // Everything runs on the pool, as the pipeline's inference loop does.
    pool.install(|| -> Result<BenchReport> {
        let mut det = Detector::on(bundle, a.backend)?;
        for f in frames.iter().cycle().take(a.warmup) {
            det.score_image(f)?;
        }
        let mut stages: [Vec<f64>; 6] = Default::default();
        let mut last = 0.0;
        let mut flagged = 0usize;
        let start = Instant::now();
        for f in frames.iter().cycle().take(a.frames) {
            let mut t = StageTimes::default();
            let t0 = Instant::now();
            let s = det.score_image_timed(f, &mut t)?;
            let t1 = Instant::now();
            flagged += usize::from(std::hint::black_box(s.distance) > threshold);
            let decision = t1.elapsed();
            let total = t0.elapsed();
            last = s.distance;
            for (v, d) in
                stages
                    .iter_mut()
                    .zip([t.preprocess, t.encoder, t.knn, t.patch, decision, total])
            {
                v.push(ms(d));
            }
        }
        let wall = start.elapsed();
        std::hint::black_box(flagged);
        let [pre, enc, knn, patch, dec, total] = stages.map(percentiles);
        let side = m.model.input_size as usize;
        let activation_bytes = det.embedder().activation_bytes();
        Ok(BenchReport {
            backend: a.backend.to_string(),
            isa: firm_shared::exec::kernels::Isa::best().to_string(),
            threads,
            backbone: m.model.encoder.backbone().to_string(),
            encoder: m.model.encoder.describe(),
            input_size: m.model.input_size,
            frame: format!("{}x{}", a.frame_width, a.frame_height),
            views_per_frame: m.bank.angles.len(),
            activations: if m.model.activations.is_empty() {
                "f32".into()
            } else {
                "u8".into()
            },
            gmac_per_view: m.model.graph.macs(side, side)? as f64 / 1e9,
            activation_bytes,
            bank_entries: m.bank.entries,
            frames: a.frames,
            preprocess_p50_ms: pre.p50_ms,
            preprocess_p99_ms: pre.p99_ms,
            encoder_p50_ms: enc.p50_ms,
            encoder_p99_ms: enc.p99_ms,
            knn_p50_ms: knn.p50_ms,
            knn_p99_ms: knn.p99_ms,
            patch_p50_ms: patch.p50_ms,
            patch_p99_ms: patch.p99_ms,
            patch_bank_entries: det.patch_bank_len(),
            decision_p50_ms: dec.p50_ms,
            decision_p99_ms: dec.p99_ms,
            total_p50_ms: total.p50_ms,
            total_p99_ms: total.p99_ms,
            fps: a.frames as f64 / wall.as_secs_f64(),
            last_distance: last,
        })
    })
}

/// The report as a table (or JSON).
pub fn print(r: &BenchReport, json: bool) {
    if json {
        println!("{}", serde_json::to_string(r).expect("report serialises"));
        return;
    }
    println!(
        "{} on {} ({}, {} threads): {} px from {} frames, {} view(s), {} activations ({}), {:.3} GMAC per view, bank of {}",
        r.encoder,
        r.backend,
        r.isa,
        r.threads,
        r.input_size,
        r.frame,
        r.views_per_frame,
        r.activations,
        r.activation_bytes
            .map_or("size not reported".to_string(), |b| format!(
                "{:.2} MB planned at load",
                b as f64 / 1e6
            )),
        r.gmac_per_view,
        r.bank_entries
    );
    println!("| stage | p50 ms | p99 ms |");
    println!("|---|---|---|");
    for (name, p50, p99) in [
        ("preprocess", r.preprocess_p50_ms, r.preprocess_p99_ms),
        ("encoder", r.encoder_p50_ms, r.encoder_p99_ms),
        ("knn", r.knn_p50_ms, r.knn_p99_ms),
        ("patch", r.patch_p50_ms, r.patch_p99_ms),
        ("decision", r.decision_p50_ms, r.decision_p99_ms),
        ("total", r.total_p50_ms, r.total_p99_ms),
    ] {
        println!("| {name} | {p50:.3} | {p99:.3} |");
    }
    if r.patch_bank_entries > 0 {
        println!(
            "patch scoring ({} bank entries): {:.0} % of the encoder's p50",
            r.patch_bank_entries,
            100.0 * r.patch_p50_ms / r.encoder_p50_ms.max(1e-9)
        );
    }
    println!("{:.1} frames per second over {} frames", r.fps, r.frames);
}

/// `device-runtime bench`.
pub fn run(a: &BenchArgs) -> Result<()> {
    let bytes =
        std::fs::read(&a.bundle).with_context(|| format!("reading {}", a.bundle.display()))?;
    let bundle = Bundle::parse_unverified(&bytes, &Limits::default())
        .with_context(|| format!("{} is not a bundle this build reads", a.bundle.display()))?;
    let r = bench(&bundle, &a.run)?;
    print(&r, a.run.json);
    Ok(())
}
