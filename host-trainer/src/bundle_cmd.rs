//! `host-trainer bundle inspect FILE` and `host-trainer bundle verify FILE --pubkey PUB`.
//!
//! `verify` does what a device does before it trusts a bundle: size limit, canonical container,
//! signature, manifest schema, every member against the manifest, then the self-test on the CPU
//! path. It exits 0 only when all of that passes; otherwise it names the step and the reason.

use std::path::{Path, PathBuf};

use firm_shared::bundle::{Bundle, Limits, container};

use crate::error::{Error, Result};
use crate::keys::read_verifying_key;

#[derive(Debug, Clone, clap::Subcommand)]
pub enum BundleCommand {
    /// Show a bundle: manifest, members and sizes, threshold and operating points, provenance.
    /// Checks the signature too when --pubkey is given.
    Inspect(InspectArgs),
    /// Check a bundle as a device would (signature, manifest, members, self-test on the CPU
    /// path); exit status 0 only if everything checks.
    Verify(VerifyArgs),
}

#[derive(Debug, Clone, clap::Args)]
pub struct InspectArgs {
    /// Bundle file.
    pub file: PathBuf,
    /// Public key (keygen's .pub file) to check the signature with.
    #[arg(long, value_name = "FILE")]
    pub pubkey: Option<PathBuf>,
    /// Print the manifest as JSON instead of the summary.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Clone, clap::Args)]
pub struct VerifyArgs {
    /// Bundle file.
    pub file: PathBuf,
    /// Public key the bundle must be signed with (keygen's .pub file).
    #[arg(long, value_name = "FILE")]
    pub pubkey: PathBuf,
}

/// Read a bundle file, refusing one above the size limit before reading it.
pub fn read_file(path: &Path, limits: &Limits) -> Result<Vec<u8>> {
    let len = std::fs::metadata(path)
        .map_err(Error::io("open", path))?
        .len();
    if len > limits.max_total {
        return Err(refused(
            path,
            "size",
            container::ContainerError::FileTooLarge {
                size: len,
                limit: limits.max_total,
            },
        ));
    }
    std::fs::read(path).map_err(Error::io("read", path))
}

fn refused(path: &Path, step: &str, e: impl Into<firm_shared::bundle::BundleError>) -> Error {
    let e: firm_shared::bundle::BundleError = e.into();
    Error::BundleRefused {
        path: path.to_path_buf(),
        step: step.to_string(),
        reason: e.to_string(),
    }
}

pub fn run(cmd: &BundleCommand) -> Result<()> {
    match cmd {
        BundleCommand::Inspect(a) => inspect(a),
        BundleCommand::Verify(a) => {
            verify(a).map(|lines| lines.iter().for_each(|l| println!("{l}")))
        }
    }
}

/// The checks of `verify`, one line per step passed.
pub fn verify(a: &VerifyArgs) -> Result<Vec<String>> {
    let limits = Limits::default();
    let key = read_verifying_key(&a.pubkey)?;
    let bytes = read_file(&a.file, &limits)?;
    let mut lines = Vec::new();
    let c = container::read(&bytes, &limits).map_err(|e| refused(&a.file, "container", e))?;
    lines.push(format!(
        "container: ok ({} members, {} bytes)",
        c.members.len() + 1,
        bytes.len()
    ));
    container::verify(&bytes, &c, &key).map_err(|e| refused(&a.file, "signature", e))?;
    lines.push(format!("signature: ok (key {})", a.pubkey.display()));
    let b = Bundle::from_container(&c).map_err(|e| refused(&a.file, "contents", e))?;
    lines.push(format!(
        "contents: ok (schema {}, class {}, bundle version {})",
        b.manifest.schema_version, b.manifest.product_class, b.manifest.bundle_version
    ));
    let st = b
        .self_test_cpu()
        .map_err(|e| refused(&a.file, "self-test", e))?;
    st.check().map_err(|e| refused(&a.file, "self-test", e))?;
    lines.push(format!(
        "self-test: ok on the {} path ({} images; max embedding error {:.2e} <= {:.0e}, max distance error {:.2e} <= {:.0e})",
        st.backend,
        st.cases.len(),
        st.max_embedding_rel_err,
        st.tolerance.embedding_rel,
        st.max_distance_err,
        st.tolerance.distance_abs
    ));
    Ok(lines)
}

fn inspect(a: &InspectArgs) -> Result<()> {
    let limits = Limits::default();
    let bytes = read_file(&a.file, &limits)?;
    let c = container::read(&bytes, &limits).map_err(|e| refused(&a.file, "container", e))?;
    let signature = match &a.pubkey {
        Some(p) => {
            let key = read_verifying_key(p)?;
            container::verify(&bytes, &c, &key).map_err(|e| refused(&a.file, "signature", e))?;
            format!("valid for {}", p.display())
        }
        None => "not checked (give --pubkey to check it)".to_string(),
    };
    let b = Bundle::from_container(&c).map_err(|e| refused(&a.file, "contents", e))?;
    if a.json {
        println!(
            "{}",
            String::from_utf8_lossy(&b.manifest.to_json()).trim_end()
        );
        return Ok(());
    }
    print!("{}", summary(&a.file, &bytes, &c, &b, &signature));
    Ok(())
}

/// The human summary of `inspect`.
pub fn summary(
    path: &Path,
    bytes: &[u8],
    c: &container::Container,
    b: &Bundle,
    signature: &str,
) -> String {
    use std::fmt::Write as _;
    let m = &b.manifest;
    let mut s = String::new();
    let _ = writeln!(s, "{}: FIRM bundle, {} bytes", path.display(), bytes.len());
    let _ = writeln!(s, "  signature        {signature}");
    let _ = writeln!(s, "  schema version   {}", m.schema_version);
    let _ = writeln!(s, "  bundle version   {}", m.bundle_version);
    let _ = writeln!(s, "  product class    {}", m.product_class);
    let _ = writeln!(s, "  created          {}", m.created);
    let e = &m.model.encoder;
    let _ = writeln!(
        s,
        "  model            {}, {}-d features, {} px input",
        e.describe(),
        m.model.feature_dim,
        m.model.input_size
    );
    let g = &m.model.graph;
    let convs: Vec<_> = g.convs().collect();
    let depthwise = convs.iter().filter(|c| c.is_depthwise()).count();
    let side = m.model.input_size as usize;
    let _ = writeln!(
        s,
        "  graph            {} ops: {} convolutions ({} depthwise), {:.3} GMAC per image; taps: {}",
        g.ops.len(),
        convs.len(),
        depthwise,
        g.macs(side, side).unwrap_or(0) as f64 / 1e9,
        tap_summary(g)
    );
    let _ = writeln!(
        s,
        "  activations      {}",
        if m.model.activations.is_empty() {
            "f32 everywhere".to_string()
        } else {
            format!(
                "u8 (per-tensor scale and zero point) at the input of {} tensors",
                m.model.activations.len()
            )
        }
    );
    let w = &m.model.weights;
    let _ = writeln!(
        s,
        "  weights          {}, BatchNorm folded; f32 layers: {}",
        w.scheme,
        if w.float_layers.is_empty() {
            "none".into()
        } else {
            w.float_layers.join(", ")
        }
    );
    let p = &m.preprocess;
    let _ = writeln!(
        s,
        "  preprocessing    short side to {} px, centre crop {} px, {} filter, mean {:?}, std {:?}",
        p.resize_side(),
        p.size,
        serde_json::to_value(p.filter)
            .map_or("?".into(), |v| v.as_str().unwrap_or("?").to_string()),
        p.normalization.mean,
        p.normalization.std
    );
    let _ = writeln!(
        s,
        "  score            {} ({})",
        m.score.spec, m.score.distance
    );
    let t = &m.threshold;
    let _ = writeln!(
        s,
        "  threshold        {:.4e} (operating point {:?})",
        t.distance, t.operating_point
    );
    for (name, v) in &t.operating_points {
        let _ = writeln!(s, "    {name:<14} {v:.4e}");
    }
    let _ = writeln!(s, "  calibration      {}", t.calibration.summary());
    if let Some(tm) = &t.test {
        let cm = &tm.confusion;
        let _ = writeln!(
            s,
            "  test             AUROC {:.4} on {} good + {} defective; at the threshold: {} flagged defective, {} missed, {} good flagged",
            tm.auroc,
            tm.n_good,
            tm.n_defective,
            cm.true_positives,
            cm.false_negatives,
            cm.false_positives
        );
    }
    let _ = writeln!(
        s,
        "  bank             {} entries x {} angle(s), {}, {} px thumbnails",
        m.bank.entries,
        m.bank.angles.len(),
        m.bank.dtype,
        m.bank.thumbnail_size
    );
    let _ = writeln!(
        s,
        "  self-test        {} images, tolerance: embedding {:.0e} relative, distance {:.0e}",
        m.selftest.cases.len(),
        m.selftest.tolerance.embedding_rel,
        m.selftest.tolerance.distance_abs
    );
    let pv = &m.provenance;
    let _ = writeln!(s, "  provenance");
    let _ = writeln!(
        s,
        "    dataset        {} ({} training images)",
        pv.dataset, pv.n_train
    );
    let _ = writeln!(s, "    dataset sha256 {}", pv.dataset_sha256);
    let _ = writeln!(
        s,
        "    checkpoint     {} (epoch {}, step {})",
        pv.checkpoint, pv.epoch, pv.step
    );
    let _ = writeln!(
        s,
        "    trainer        {} (revision {})",
        pv.trainer_version, pv.git_revision
    );
    for (k, v) in &pv.metrics {
        let _ = writeln!(s, "    {k:<30} {v:.6}");
    }
    let _ = writeln!(s, "  members");
    for mem in &c.members {
        let sha = m
            .members
            .get(&mem.name)
            .map_or("(manifest)".to_string(), |i| i.sha256[..16].to_string());
        let _ = writeln!(
            s,
            "    {:<22} {:>10} bytes  {sha}",
            mem.name,
            mem.data.len()
        );
    }
    let _ = writeln!(s, "    {:<22} {:>10} bytes", container::SIGNATURE_NAME, 64);
    s
}

/// The graph's taps for `bundle inspect`: the stage-level ones by name, the ones inside blocks
/// (`blockN.expand`, `blockN.dw`: EfficientNet has 31) counted.
fn tap_summary(g: &firm_shared::model::graph::Graph) -> String {
    let (inner, outer): (Vec<&str>, Vec<&str>) = g
        .taps
        .iter()
        .map(|t| t.name.as_str())
        .partition(|n| n.contains('.'));
    let mut s = outer.join(", ");
    if !inner.is_empty() {
        s += &format!(
            " (and {} inside blocks, {} to {})",
            inner.len(),
            inner[0],
            inner[inner.len() - 1]
        );
    }
    s
}
