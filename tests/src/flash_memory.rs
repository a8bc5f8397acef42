//! Memory during a flash (issue 18, deliverable 6): how much resident memory a device needs, on
//! top of what it holds idle, to install a bundle of a given size, by `device-runtime flash` and
//! by `POST /api/bundle`.
//!
//! [`Station::prepare`] signs bundles with one test key: a small one (version 1, what the device
//! runs when the flash starts) and big ones (versions 2, 3, ...) of about the asked size, made big
//! the way a real bundle grows ([`Fill`]). Each way of flashing gets a device of its own, with
//! the small bundle active:
//!
//! - **cli**: `device-runtime flash BIG` is a process beside the running device, so all of its
//!   memory is extra: its peak (`ru_maxrss` from `wait4`, by the `peak-rss` binary) counts
//!   whole, against an idle of 0.
//! - **http**: `device-runtime run` on the synthetic source with the small bundle (threshold
//!   out of reach: no alerts). Idle is its `VmRSS` once it has settled ([`settled`]); its
//!   high-water mark is then reset to that (`/proc/PID/clear_refs`, 5), a big bundle is posted,
//!   and once the pipeline runs it the peak is `VmHWM`: it includes the pipeline loading the new
//!   bundle, as on the floor. `RSS after` is `VmRSS` 2 s later, what the process keeps (mimalloc
//!   keeps freed memory mapped), and the idle of the next big bundle when there are several.
//!
//! [`Report`]'s table gives them against [`BOUND`] x the bundle's size. `scripts/flash-memory`
//! runs it on a 256 MiB bundle by hand; `device-runtime/tests/flash_memory.rs` on 64 MiB in CI.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use ed25519_dalek::SigningKey;
use firm_shared::bundle::{Bundle, Limits};

use crate::load::get;

/// Peak resident memory over idle may be at most this many times the bundle's size.
pub const BOUND: f64 = 2.5;

/// The exporter's thumbnail side (README: "a 64 px thumbnail each").
const THUMBNAIL: u32 = 64;
/// The bearer token of the devices started here.
const TOKEN: &str = "flash-memory-token-0123456789";

/// What makes the big bundle big.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Fill {
    /// Image bank entries, each with the exporter's 64 px thumbnail (12 KiB) and its f16 row:
    /// how a bundle trained on many good images grows.
    Bank,
    /// Patch bank rows (f16): a patch bank budget far above the default 1,024 rows.
    Patch,
}

impl Fill {
    /// The encoder width the bundles have unless told: 0.5 for patch rows, so that 256 MiB of
    /// them stay under the manifest's 2^20 rows (192-d rows, 384 bytes each); else 0.25. What a
    /// model costs the device to load and self-test (tens of MiB, with its executor's buffers)
    /// does not grow with the bundle, and a small model keeps it from deciding a small test.
    pub fn default_width(self) -> f32 {
        match self {
            Fill::Bank => 0.25,
            Fill::Patch => 0.5,
        }
    }
}

impl std::fmt::Display for Fill {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Fill::Bank => "bank",
            Fill::Patch => "patch",
        })
    }
}

/// How the device is flashed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Via {
    Cli,
    Http,
}

impl std::fmt::Display for Via {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Via::Cli => "cli",
            Via::Http => "http",
        })
    }
}

/// `bundle`'s entries grown to `n` by repeating the ones it has, with `THUMBNAIL` px
/// thumbnails. Repeated rows leave every nearest distance, and so the self-test, unchanged.
fn grow_bank(b: &mut Bundle, n: usize) {
    let bank = &mut b.bank;
    let (n0, dim) = (bank.len(), bank.dim);
    let thumbs: Vec<u8> = (0..n0)
        .flat_map(|i| {
            let small = bank.thumbnail(i).expect("a thumbnail per entry");
            image::imageops::resize(
                &small,
                THUMBNAIL,
                THUMBNAIL,
                image::imageops::FilterType::Nearest,
            )
            .into_raw()
        })
        .collect();
    let per = (THUMBNAIL * THUMBNAIL * 3) as usize;
    bank.thumbnail_size = THUMBNAIL;
    bank.thumbnails = thumbs
        .chunks(per)
        .cycle()
        .take(n)
        .flatten()
        .copied()
        .collect();
    for r in &mut bank.residual {
        *r = r.chunks(dim).cycle().take(n).flatten().copied().collect();
    }
    let m = &mut b.manifest.bank;
    m.entries = n;
    m.thumbnail_size = THUMBNAIL;
    m.sources = (0..n).map(|i| format!("good/{i:06}.png")).collect();
}

/// `bundle`'s patch bank grown to `n` rows by repeating the ones it has.
fn grow_patch(b: &mut Bundle, n: usize) {
    let dim = b.bank.patch_dim;
    let p = b.bank.patch.as_mut().expect("a patch bank");
    *p = p
        .chunks(dim)
        .cycle()
        .take(n)
        .flatten()
        .copied()
        .collect::<Vec<_>>()
        .into();
    let m = b.manifest.patch.as_mut().expect("a patch section");
    m.entries = n;
    m.spec.bank = n;
}

/// The bundle grown: `small_patch_bundle`'s (ResNet-18 at `width`, 128 px, 24 entries, 512
/// patch rows).
fn base(width: f32, version: u64) -> Bundle {
    use firm_shared::detect::synthetic::{SyntheticSpec, random_bundle_with_patch};
    use firm_shared::model::{EncoderConfig, Stem};
    use firm_shared::score::patch::PatchSpec;
    let spec = SyntheticSpec {
        encoder: EncoderConfig::new(Stem::Imagenet, width),
        size: 128,
        score: "cos_1".parse().unwrap(),
        int8_activations: true,
        bank: 24,
        seed: 6,
    };
    let patch = PatchSpec {
        bank: 512,
        ..PatchSpec::for_graph(&spec.encoder.graph()).unwrap()
    };
    let mut b = random_bundle_with_patch(&spec, &patch, false).expect("a synthetic bundle");
    b.manifest.bundle_version = version;
    b
}

/// A bundle of at most `bytes` (and within 1 % of it, above the small bundle's size) of a
/// ResNet-18 at `width`, version `version`, signed with `key`.
pub fn bundle(key: &SigningKey, bytes: u64, fill: Fill, width: f32, version: u64) -> Vec<u8> {
    let mut b = base(width, version);
    let limits = Limits {
        max_member: u64::MAX,
        max_total: u64::MAX,
        ..Limits::default()
    };
    let size = |b: &Bundle| b.to_bytes(key, &limits).expect("signed").len() as u64;
    let (n0, per) = match fill {
        Fill::Bank => {
            let n0 = b.bank.len();
            grow_bank(&mut b, n0);
            let angles = b.bank.angles.len();
            // A row per angle, the thumbnail, its source in the manifest.
            let per = b.bank.dim * 2 * angles + (THUMBNAIL * THUMBNAIL * 3) as usize + 24;
            (n0, per)
        }
        Fill::Patch => (
            b.manifest.patch.as_ref().expect("patch").entries,
            b.bank.patch_dim * 2,
        ),
    };
    let base = size(&b);
    let mut n = n0 + (bytes.saturating_sub(base) / per as u64) as usize;
    loop {
        match fill {
            Fill::Bank => grow_bank(&mut b, n),
            Fill::Patch => grow_patch(&mut b, n),
        }
        let out = b.to_bytes(key, &limits).expect("signed");
        if out.len() as u64 <= bytes || n <= n0 {
            return out;
        }
        n -= (out.len() as u64 - bytes).div_ceil(per as u64) as usize;
    }
}

/// The bundles and key of a measurement, in `root`.
#[derive(Debug, Clone)]
pub struct Station {
    pub root: PathBuf,
    pub device_bin: PathBuf,
    /// The `peak-rss` binary (this crate's).
    pub peak_rss: PathBuf,
    pub fill: Fill,
    /// The encoder width of the bundles.
    pub width: f32,
    /// The bundle the devices run (version 1).
    pub small: PathBuf,
    /// The bundles flashed, one after the other (versions 2, 3, ...), each of `big_bytes`.
    pub big: Vec<PathBuf>,
    pub big_bytes: u64,
    /// The devices' `bundles.max-bytes`.
    pub max_bytes: u64,
}

impl Station {
    /// Sign the bundles (`flashes` big ones of at most `bytes`) into `root`, for a ResNet-18 at
    /// `width` (None: [`Fill::default_width`]).
    pub fn prepare(
        device_bin: &Path,
        peak_rss: &Path,
        root: &Path,
        bytes: u64,
        fill: Fill,
        width: Option<f32>,
        flashes: usize,
    ) -> Station {
        let width = width.unwrap_or(fill.default_width());
        let key = SigningKey::from_bytes(&[6; 32]);
        std::fs::write(
            root.join("bundle.pub"),
            firm_shared::bundle::container::key_hex(key.verifying_key().as_bytes()),
        )
        .unwrap();
        std::fs::write(root.join("token"), TOKEN).unwrap();
        let small = root.join("small.firm");

        let s = base(width, 1).to_bytes(&key, &Limits::default()).unwrap();
        std::fs::write(&small, s).unwrap();
        let mut big = Vec::new();
        let mut big_bytes = 0;
        for k in 0..flashes.max(1) {
            let b = bundle(&key, bytes, fill, width, 2 + k as u64);
            big_bytes = b.len() as u64;
            big.push(root.join(format!("big-{k}.firm")));
            std::fs::write(&big[k], b).unwrap();
        }
        Station {
            root: root.to_path_buf(),
            device_bin: std::path::absolute(device_bin).unwrap(),
            peak_rss: std::path::absolute(peak_rss).unwrap(),
            fill,
            width,
            small,
            big,
            big_bytes,
            max_bytes: bytes.max(256 << 20),
        }
    }

    /// A device named `name` (its folder under the root) running the small bundle; its config.
    fn device(&self, name: &str, web: &str) -> PathBuf {
        let dir = self.root.join(name);
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let cfg = dir.join("device.toml");
        std::fs::write(
            &cfg,
            format!(
                "schema-version = 1\nsite = \"flash-memory\"\nstate-dir = \"state\"\n\
                 [bundles]\ntrusted-keys = [\"../bundle.pub\"]\nmax-bytes = {}\n\
                 [source]\nspec = \"synthetic\"\nfps = 10.0\n\
                 [inference]\nthreads = 1\nthreshold = 1.0e9\n\
                 [alerts]\nsave-flagged = false\n\
                 [web]\ntoken-file = \"../token\"\n{web}",
                self.max_bytes
            ),
        )
        .unwrap();
        let out = Command::new(&self.device_bin)
            .arg("flash")
            .arg(&self.small)
            .arg("--config")
            .arg(&cfg)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "flashing the small bundle: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        cfg
    }

    /// Measure one way of flashing the big bundles, one after the other (the CLI flashes the
    /// first only: each is a process of its own).
    pub fn measure(&self, via: Via) -> Vec<Peak> {
        match via {
            Via::Cli => vec![self.cli()],
            Via::Http => self.http(),
        }
    }

    /// `device-runtime flash BIG` as a process of its own: its whole peak is extra. It runs
    /// under `peak-rss` (see there why).
    fn cli(&self) -> Peak {
        let cfg = self.device("cli", "");
        let t = Instant::now();
        let out = Command::new(&self.peak_rss)
            .envs(deployed_env())
            .arg(&self.device_bin)
            .arg("flash")
            .arg(&self.big[0])
            .arg("--config")
            .arg(&cfg)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "device-runtime flash failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        Peak {
            via: Via::Cli,
            bundle: self.big_bytes,
            idle: 0,
            peak: report["peak-rss-bytes"]
                .as_u64()
                .expect("peak-rss's report"),
            after: None,
            seconds: t.elapsed().as_secs_f64(),
        }
    }

    /// `POST /api/bundle` to `device-runtime run`, each big bundle in turn: the peak of each
    /// over the resident memory before it (the first: the settled idle).
    fn http(&self) -> Vec<Peak> {
        let addr: SocketAddr = crate::free_loopback_addr();
        let cfg = self.device("http", &format!("listen = \"{addr}\"\n"));
        let log = cfg.with_file_name("device.log");
        let child = Command::new(&self.device_bin)
            .envs(deployed_env())
            .args(["run", "--config"])
            .arg(&cfg)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let mut device = Running(child);
        let pid = device.0.id();
        let log = || std::fs::read_to_string(&log).unwrap_or_default();
        let scored = || status(addr).and_then(|s| s["counters"]["frames-scored"].as_u64());
        let t = Instant::now();
        while scored().unwrap_or(0) < 10 {
            assert!(
                t.elapsed() < Duration::from_secs(120) && device.0.try_wait().unwrap().is_none(),
                "the device did not start scoring:\n{}",
                log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        let mut idle = settled(pid);
        let mut peaks = Vec::new();
        for (k, file) in self.big.iter().enumerate() {
            let version = 2 + k as u64;
            std::fs::write(format!("/proc/{pid}/clear_refs"), "5")
                .expect("resetting the device's peak RSS (/proc/PID/clear_refs)");
            let t = Instant::now();
            let (code, body) = upload(addr, file);
            assert_eq!(
                code,
                200,
                "upload: {}\n{}",
                String::from_utf8_lossy(&body),
                log()
            );
            let running = || status(addr).is_some_and(|s| s["bundle"]["bundle-version"] == version);
            while !running() {
                assert!(
                    t.elapsed() < Duration::from_secs(600),
                    "the pipeline did not switch to bundle version {version}:\n{}",
                    log()
                );
                std::thread::sleep(Duration::from_millis(100));
            }
            let seconds = t.elapsed().as_secs_f64();
            // The old scorer is dropped once the new one is in place, between frames.
            std::thread::sleep(Duration::from_secs(2));
            let after = proc_status(pid, "VmRSS:");
            peaks.push(Peak {
                via: Via::Http,
                bundle: self.big_bytes,
                idle,
                peak: proc_status(pid, "VmHWM:"),
                after: Some(after),
                seconds,
            });
            idle = after;
        }
        drop(device);
        peaks
    }
}

/// The resident memory of the running device `pid` once it has settled: the most of the last
/// 3 s of samples, when they span less than 1 MiB. A device grows for a while after it starts
/// (queues and windows filling, pages touched once); that is not the flash's.
fn settled(pid: u32) -> u64 {
    let t = Instant::now();
    let mut last: std::collections::VecDeque<u64> = std::collections::VecDeque::new();
    loop {
        last.push_back(proc_status(pid, "VmRSS:"));
        if last.len() > 7 {
            last.pop_front();
            let (lo, hi) = (last.iter().min().unwrap(), last.iter().max().unwrap());
            if hi - lo < 1 << 20 {
                return *hi;
            }
        }
        assert!(
            t.elapsed() < Duration::from_secs(120),
            "the device's resident memory did not settle in 120 s: {last:?}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// A child process, killed when dropped.
struct Running(std::process::Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A line of `/proc/PID/status` in bytes (its values are in kB).
fn proc_status(pid: u32, key: &str) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    s.lines()
        .find(|l| l.starts_with(key))
        .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

fn status(addr: SocketAddr) -> Option<serde_json::Value> {
    match get(addr, "/api/status", Duration::from_secs(10)) {
        Ok((200, body)) => serde_json::from_slice(&body).ok(),
        _ => None,
    }
}

/// POST `file` as the bundle: (status, body).
fn upload(addr: SocketAddr, file: &Path) -> (u16, Vec<u8>) {
    let len = std::fs::metadata(file).unwrap().len();
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(600))).unwrap();
    write!(
        s,
        "POST /api/bundle HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {TOKEN}\r\n\
         Content-Type: application/octet-stream\r\nContent-Length: {len}\r\n\
         Connection: close\r\n\r\n"
    )
    .unwrap();
    std::io::copy(&mut std::fs::File::open(file).unwrap(), &mut s).unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).unwrap();
    let code = std::str::from_utf8(out.get(9..12).unwrap_or_default())
        .ok()
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = out
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map_or(Vec::new(), |i| out[i + 4..].to_vec());
    (code, body)
}

/// One measured flash.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Peak {
    pub via: Via,
    pub bundle: u64,
    /// Resident memory before the flash (0 for the CLI: it is a process of its own).
    pub idle: u64,
    /// The most resident memory during the flash.
    pub peak: u64,
    /// Resident memory 2 s after the pipeline switched (HTTP).
    pub after: Option<u64>,
    /// From the start of the flash to the new bundle installed (CLI) or running (HTTP).
    pub seconds: f64,
}

impl Peak {
    pub fn over_idle(&self) -> u64 {
        self.peak.saturating_sub(self.idle)
    }

    /// Peak over idle, in bundle sizes.
    pub fn ratio(&self) -> f64 {
        self.over_idle() as f64 / self.bundle as f64
    }

    pub fn holds(&self) -> bool {
        self.ratio() <= BOUND
    }
}

/// The measured flashes, as a table.
#[derive(Debug, Clone)]
pub struct Report {
    pub fill: Fill,
    /// The encoder width of the bundles.
    pub width: f32,
    pub peaks: Vec<Peak>,
}

fn mib(b: u64) -> f64 {
    b as f64 / 1048576.0
}

impl std::fmt::Display for Report {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "| flash | bundle (MiB, fill) | idle RSS (MiB) | peak RSS (MiB) | peak - idle (MiB) | \
             (peak - idle) / bundle | RSS after (MiB) | seconds |"
        )?;
        writeln!(f, "|---|---:|---:|---:|---:|---:|---:|---:|")?;
        for p in &self.peaks {
            writeln!(
                f,
                "| {} | {:.1} ({}) | {:.1} | {:.1} | {:.1} | {:.2}x{} | {} | {:.1} |",
                p.via,
                mib(p.bundle),
                self.fill,
                mib(p.idle),
                mib(p.peak),
                mib(p.over_idle()),
                p.ratio(),
                if p.holds() { "" } else { " (above the bound)" },
                p.after.map_or("-".into(), |a| format!("{:.1}", mib(a))),
                p.seconds
            )?;
        }
        write!(
            f,
            "\nbundles: ResNet-18 at width {}, 128 px; bound: peak - idle <= {BOUND} x the \
             bundle's size",
            self.width
        )
    }
}

/// The allocator setting the device runs with (hardware/systemd/firm-inspect.service):
/// `MIMALLOC_PURGE_DELAY=0` returns freed memory to the system at once. With mimalloc's default
/// delay, the large blocks a flash frees (the file's bytes, the self-test's detector) stay
/// resident beside the new bundle's, and a 128 MiB patch-bank upload measured 2.55x instead of
/// 2.19x. An environment that sets the variable keeps its value (to compare).
fn deployed_env() -> Vec<(&'static str, String)> {
    match std::env::var("MIMALLOC_PURGE_DELAY") {
        Ok(_) => Vec::new(),
        Err(_) => vec![("MIMALLOC_PURGE_DELAY", "0".to_string())],
    }
}
