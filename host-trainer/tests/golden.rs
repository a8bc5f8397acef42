//! Golden check: our losses and scores against vectors computed by the FIRM reference code.
//!
//! Reads every `*.json` in tests/golden/ (provenance: tests/golden/PROVENANCE.md), or in the folder
//! named by `FIRM_GOLDEN_DIR`. A file is a loss case when it has `losses`, a kNN case when it has
//! `train_feat`; never judged by its name. Every key is inputs, compared, informational, or
//! recognised-but-not-compared; any other key fails the test, so a new kind of reference value
//! cannot be skipped silently.
//!
//! Tolerances (relative unless stated):
//! - f64 path: 1e-9 against `loss`, `per_anchor`, `score_float64`/`score`, ensemble scores, `gamma`,
//!   the normalised features, AUROC and AULC; `loss_verbatim_fp32_masks` 1e-7 (the reference's
//!   float32 masks move the 8th digit); `*_faiss_float32` 1e-6 (a float32 index).
//! - f32 path (the same code in f32): rtol 1e-4 plus atol 1e-6 against the f64 references.
//! - positive masks, label encodings, `k`, `norm_weighted`, `N`, `d`: exact.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use candle_core::{DType, Device, Tensor};
use firm_shared::score::{self, Bank, Real, ScoreFn};
use host_trainer::loss::{LossKind, SampleLabel};
use serde_json::{Map, Value};

const RTOL_F64: f64 = 1e-9;
const RTOL_VERBATIM_FP32: f64 = 1e-7;
const RTOL_FAISS: f64 = 1e-6;
const RTOL_F32: f64 = 1e-4;
const ATOL_F32: f64 = 1e-6;

#[derive(Debug, Default)]
struct Tally {
    files: usize,
    compared: usize,
    ignored: usize,
    errors: Vec<String>,
}

#[derive(Clone, Copy)]
struct Tol {
    rtol: f64,
    atol: f64,
}

const F64: Tol = Tol {
    rtol: RTOL_F64,
    atol: 0.0,
};
const F32: Tol = Tol {
    rtol: RTOL_F32,
    atol: ATOL_F32,
};
const FAISS: Tol = Tol {
    rtol: RTOL_FAISS,
    atol: 0.0,
};

impl Tally {
    fn fail(&mut self, at: &str, msg: impl std::fmt::Display) {
        self.errors.push(format!("{at}: {msg}"));
    }

    fn close(&mut self, at: &str, ours: &[f64], theirs: &[f64], tol: Tol) {
        if ours.len() != theirs.len() {
            self.fail(
                at,
                format!("{} values, reference has {}", ours.len(), theirs.len()),
            );
            return;
        }
        for (i, (&a, &b)) in ours.iter().zip(theirs).enumerate() {
            self.compared += 1;
            let ok = a.is_finite() && (a - b).abs() <= tol.atol + tol.rtol * b.abs();
            if !ok {
                self.fail(
                    at,
                    format!(
                        "[{i}] ours {a:.17e} vs reference {b:.17e} (|diff| {:.3e}, rtol {}, atol {})",
                        (a - b).abs(),
                        tol.rtol,
                        tol.atol
                    ),
                );
            }
        }
    }

    fn exact<T: PartialEq + std::fmt::Debug>(&mut self, at: &str, ours: &[T], theirs: &[T]) {
        self.compared += theirs.len();
        if ours != theirs {
            self.fail(at, format!("ours {ours:?} vs reference {theirs:?}"));
        }
    }

    /// Leaves under `v` that are informational or recognised but not compared.
    fn ignore(&mut self, v: &Value) {
        self.ignored += match v {
            Value::Object(m) => {
                for x in m.values() {
                    self.ignore(x);
                }
                return;
            }
            _ => 1,
        };
    }
}

fn is_informational(key: &str) -> bool {
    matches!(
        key,
        "code"
            | "description"
            | "seed"
            | "generator"
            | "layout"
            | "name"
            | "embedding_order"
            | "note"
    ) || key.ends_with("_meaning")
        || key.ends_with("_note")
}

/// An object whose keys are taken one by one; whatever is left at the end is unknown.
struct Obj {
    at: String,
    map: Map<String, Value>,
    missing: Vec<String>,
}

impl Obj {
    fn new(at: impl Into<String>, v: Value, tally: &mut Tally) -> Option<Self> {
        let at = at.into();
        match v {
            Value::Object(mut map) => {
                let info: Vec<String> = map
                    .keys()
                    .filter(|k| is_informational(k))
                    .cloned()
                    .collect();
                for k in info {
                    let v = map.remove(&k).expect("present");
                    tally.ignore(&v);
                }
                Some(Self {
                    at,
                    map,
                    missing: Vec::new(),
                })
            }
            _ => {
                tally.fail(&at, "expected a JSON object");
                None
            }
        }
    }

    fn path(&self, key: &str) -> String {
        format!("{}.{key}", self.at)
    }

    fn take(&mut self, key: &str) -> Option<Value> {
        let v = self.map.remove(key);
        if v.is_none() {
            let at = self.path(key);
            self.missing.push(format!("{at}: missing"));
        }
        v
    }

    fn take_opt(&mut self, key: &str) -> Option<Value> {
        self.map.remove(key)
    }

    fn finish(self, tally: &mut Tally) {
        tally.errors.extend(self.missing);
        for k in self.map.keys() {
            tally.errors.push(format!(
                "{}.{k}: unknown key (neither compared nor recognised)",
                self.at
            ));
        }
    }
}

/// Flatten a nested JSON array of numbers, returning values and shape.
fn nd(v: &Value) -> Option<(Vec<f64>, Vec<usize>)> {
    fn walk(v: &Value, depth: usize, shape: &mut Vec<usize>, out: &mut Vec<f64>) -> Option<()> {
        match v {
            Value::Array(a) => {
                if shape.len() == depth {
                    shape.push(a.len());
                } else if shape[depth] != a.len() {
                    return None;
                }
                a.iter().try_for_each(|x| walk(x, depth + 1, shape, out))
            }
            Value::Number(n) => {
                out.push(n.as_f64()?);
                Some(())
            }
            _ => None,
        }
    }
    let (mut shape, mut out) = (Vec::new(), Vec::new());
    walk(v, 0, &mut shape, &mut out)?;
    Some((out, shape))
}

fn num(v: &Value) -> Option<f64> {
    v.as_f64()
}

// ---------------------------------------------------------------------------------------------
// Loss cases

fn loss_values(
    kind: LossKind,
    z: &[f64],
    d: usize,
    labels: &[SampleLabel],
    tau: f64,
    dt: DType,
) -> (f64, Vec<f64>) {
    let rows = z.len() / d;
    let t = Tensor::from_vec(z.to_vec(), (rows, d), &Device::Cpu)
        .unwrap()
        .to_dtype(dt)
        .unwrap();
    let per = kind
        .per_anchor(&t, labels, tau)
        .unwrap()
        .to_dtype(DType::F64)
        .unwrap()
        .to_vec1::<f64>()
        .unwrap();
    let loss = kind
        .loss(&t, labels, tau)
        .unwrap()
        .to_dtype(DType::F64)
        .unwrap()
        .to_scalar()
        .unwrap();
    (loss, per)
}

fn check_loss_case(file: &str, v: Value, tally: &mut Tally) {
    let Some(mut o) = Obj::new(file, v, tally) else {
        return;
    };
    let n = o.take("N").and_then(|v| v.as_u64());
    let d = o.take("d").and_then(|v| v.as_u64());
    let tau = o.take("temperature").as_ref().and_then(num);
    let emb = o.take("embeddings").as_ref().and_then(nd);
    let shift = o.take_opt("labels");
    let bin = o.take_opt("bin_labels");
    let supb = o.take_opt("supcon_binary_labels");
    let pkg = o.take_opt("package_labels");
    let losses = o.take("losses");
    let at = o.at.clone();
    o.finish(tally);
    let (Some(n), Some(d), Some(tau), Some((z, zshape)), Some(losses)) = (n, d, tau, emb, losses)
    else {
        tally.fail(
            &at,
            "N, d, temperature, embeddings and losses must be present and numeric",
        );
        return;
    };
    let (n, d) = (n as usize, d as usize);
    tally.exact(&format!("{at}.N/d"), &zshape, &[2 * n, d]);
    // Inputs are unit rows, as the model's output.
    for (r, row) in z.chunks(d).enumerate() {
        let norm = row.iter().map(|x| x * x).sum::<f64>().sqrt();
        if (norm - 1.0).abs() > 1e-9 {
            tally.fail(
                &format!("{at}.embeddings[{r}]"),
                format!("row norm {norm}, expected 1"),
            );
        }
    }
    let ints = |v: &Option<Value>| -> Option<Vec<i64>> {
        v.as_ref()
            .and_then(nd)
            .map(|(x, _)| x.iter().map(|&f| f as i64).collect())
    };
    // Our labels come from the multiclass encoding when present, else the package one; every
    // other encoding is then compared with ours.
    let labels: Vec<SampleLabel> = if let Some(s) = ints(&shift) {
        s.iter()
            .map(|&k| SampleLabel::from_shift(k as u16))
            .collect()
    } else if let Some(p) = ints(&pkg) {
        match p
            .iter()
            .map(|&k| SampleLabel::from_package(k))
            .collect::<Option<Vec<_>>>()
        {
            Some(l) => l,
            None => {
                tally.fail(&format!("{at}.package_labels"), "labels must be -1 or >= 0");
                return;
            }
        }
    } else {
        tally.fail(&at, "needs `labels` or `package_labels`");
        return;
    };
    if labels.len() != n {
        tally.fail(&at, format!("{} labels for N = {n}", labels.len()));
        return;
    }
    let enc = |f: fn(SampleLabel) -> i64| labels.iter().map(|&l| f(l)).collect::<Vec<i64>>();
    if let Some(b) = ints(&bin) {
        tally.exact(
            &format!("{at}.bin_labels"),
            &enc(|l| l.bin_label() as i64),
            &b,
        );
    }
    if let Some(b) = ints(&supb) {
        tally.exact(
            &format!("{at}.supcon_binary_labels"),
            &enc(|l| l.supcon_binary_label() as i64),
            &b,
        );
    }
    let package_labels: Vec<SampleLabel> = match ints(&pkg) {
        Some(p) => {
            if shift.is_some() {
                tally.exact(
                    &format!("{at}.package_labels"),
                    &enc(|l| l.package_label()),
                    &p,
                );
            }
            p.iter()
                .filter_map(|&k| SampleLabel::from_package(k))
                .collect()
        }
        None => labels.clone(),
    };

    let Some(mut lo) = Obj::new(format!("{at}.losses"), losses, tally) else {
        return;
    };
    let names: Vec<String> = lo.map.keys().cloned().collect();
    let mut entries = Vec::new();
    for name in names {
        let v = lo.take(&name).expect("listed");
        entries.push((name, v));
    }
    lo.finish(tally);
    for (name, v) in entries {
        let (kind, labels_for) = match name.as_str() {
            "firm_pairwise" => (LossKind::Firm, &labels),
            "firm_concat" => (LossKind::FirmConcat, &package_labels),
            "ntxent_pairwise" => (LossKind::NtXent, &labels),
            "ntxent_concat" => (LossKind::NtXent2n, &labels),
            "supcon_binary" => (LossKind::SupCon, &labels),
            "supcon_multiclass" => (LossKind::SupConStar, &labels),
            "firm_package_pairwise" => (LossKind::Firm, &package_labels),
            "firm_package_concat" => (LossKind::FirmConcat, &package_labels),
            other => {
                tally.fail(
                    &format!("{at}.losses.{other}"),
                    "unknown loss (no implementation mapped)",
                );
                continue;
            }
        };
        let here = format!("{at}.losses.{name}");
        let (loss64, per64) = loss_values(kind, &z, d, labels_for, tau, DType::F64);
        let (loss32, per32) = loss_values(kind, &z, d, labels_for, tau, DType::F32);
        let Some(mut e) = Obj::new(&here, v, tally) else {
            continue;
        };
        let reference = e.take("loss").as_ref().and_then(num);
        let per_ref = e.take("per_anchor").as_ref().and_then(nd);
        let mask_ref = e.take_opt("positive_mask").as_ref().and_then(nd);
        let verbatim = e.take_opt("loss_verbatim_fp32_masks");
        let current_pkg = e.take_opt("loss_current_package");
        let old_v2 = e.take_opt("loss_old_FIRMLossv2");
        e.finish(tally);
        let Some(reference) = reference else {
            tally.fail(&here, "`loss` is missing or not a number");
            continue;
        };
        tally.close(&format!("{here}.loss"), &[loss64], &[reference], F64);
        tally.close(
            &format!("{here}.loss (f32 path)"),
            &[loss32],
            &[reference],
            F32,
        );
        match per_ref {
            Some((p, _)) => {
                tally.close(&format!("{here}.per_anchor"), &per64, &p, F64);
                tally.close(&format!("{here}.per_anchor (f32 path)"), &per32, &p, F32);
            }
            None => tally.fail(&format!("{here}.per_anchor"), "missing or not numeric"),
        }
        if let Some((m, _)) = mask_ref {
            let ours: Vec<i64> = kind
                .positive_mask(labels_for)
                .iter()
                .map(|&b| b as i64)
                .collect();
            let theirs: Vec<i64> = m.iter().map(|&x| x as i64).collect();
            tally.exact(&format!("{here}.positive_mask"), &ours, &theirs);
        }
        if let Some(v) = verbatim {
            match num(&v) {
                Some(x) => tally.close(
                    &format!("{here}.loss_verbatim_fp32_masks"),
                    &[loss64],
                    &[x],
                    Tol {
                        rtol: RTOL_VERBATIM_FP32,
                        atol: 0.0,
                    },
                ),
                None => tally.fail(&format!("{here}.loss_verbatim_fp32_masks"), "not a number"),
            }
        }
        if let Some(v) = current_pkg {
            let (pkg_loss, _) = loss_values(kind, &z, d, &package_labels, tau, DType::F64);
            match num(&v) {
                Some(x) => tally.close(
                    &format!("{here}.loss_current_package"),
                    &[pkg_loss],
                    &[x],
                    F64,
                ),
                None => tally.fail(&format!("{here}.loss_current_package"), "not a number"),
            }
        }
        if let Some(v) = old_v2 {
            // The reference's early 2N variant is NaN on purpose; recognised, not compared. What we
            // assert instead: every loss of ours is finite on this very batch, in f64 and f32.
            if v.as_str() != Some("NaN") {
                tally.fail(
                    &format!("{here}.loss_old_FIRMLossv2"),
                    "expected the string \"NaN\"",
                );
            }
            tally.ignored += 1;
            for k in LossKind::ALL {
                for dt in [DType::F64, DType::F32] {
                    let (l, per) = loss_values(k, &z, d, &labels, tau, dt);
                    if !l.is_finite() || per.iter().any(|p| !p.is_finite()) {
                        tally.fail(&here, format!("{k:?} ({dt:?}) is not finite on this batch"));
                    }
                }
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// kNN cases

struct Features {
    /// [angle] -> raw bank rows
    train: Vec<Vec<f64>>,
    /// [angle][crop] -> raw test rows
    val: Vec<Vec<Vec<f64>>>,
    dim: usize,
}

impl Features {
    fn to<T: Real>(&self) -> (Vec<Bank<T>>, Vec<Vec<Vec<T>>>) {
        let cast = |v: &Vec<f64>| v.iter().map(|&x| T::from(x).unwrap()).collect::<Vec<T>>();
        let banks = self
            .train
            .iter()
            .map(|t| Bank::from_raw(&cast(t), self.dim).unwrap())
            .collect();
        let val = self
            .val
            .iter()
            .map(|crops| crops.iter().map(cast).collect())
            .collect();
        (banks, val)
    }
}

fn to_f64<T: Real>(v: Vec<T>) -> Vec<f64> {
    v.into_iter().map(|x| x.to_f64().unwrap()).collect()
}

/// Scores in f64 and f32 of `f`, for `angles` (a prefix of the angles) and either the first crop
/// or all crops.
fn knn_scores(feat: &Features, f: ScoreFn, angles: usize, all_crops: bool) -> (Vec<f64>, Vec<f64>) {
    fn run<T: Real>(feat: &Features, f: ScoreFn, angles: usize, all_crops: bool) -> Vec<f64> {
        let (banks, val) = feat.to::<T>();
        let val: Vec<Vec<Vec<T>>> = val
            .into_iter()
            .take(angles)
            .map(|crops| {
                if all_crops {
                    crops
                } else {
                    crops.into_iter().take(1).collect()
                }
            })
            .collect();
        to_f64(score::ensemble_scores(f, &banks[..angles], &val).unwrap())
    }
    (
        run::<f64>(feat, f, angles, all_crops),
        run::<f32>(feat, f, angles, all_crops),
    )
}

fn check_knn_case(file: &str, v: Value, tally: &mut Tally) {
    let Some(mut o) = Obj::new(file, v, tally) else {
        return;
    };
    let angles = o.take("angles_deg").as_ref().and_then(nd);
    let train = o.take("train_feat").as_ref().and_then(nd);
    let val = o.take("val_feat").as_ref().and_then(nd);
    let train_norm = o.take("train_norm").as_ref().and_then(nd);
    let val_norm = o.take("val_norm").as_ref().and_then(nd);
    let y = o.take("y_test").as_ref().and_then(nd);
    let single = o.take("single_angle0_crop0");
    let ens = o.take("ensemble");
    let aulc = o.take_opt("aulc");
    let at = o.at.clone();
    o.finish(tally);
    let (Some((angles, _)), Some((tr, ts)), Some((va, vs)), Some((y, _))) = (angles, train, val, y)
    else {
        tally.fail(
            &at,
            "angles_deg, train_feat, val_feat, y_test must be numeric arrays",
        );
        return;
    };
    if ts.len() != 4
        || vs.len() != 4
        || ts[0] != angles.len()
        || vs[0] != angles.len()
        || ts[1] != 1
        || ts[3] != vs[3]
        || vs[2] != y.len()
    {
        tally.fail(
            &at,
            format!(
                "inconsistent shapes: train {ts:?}, val {vs:?}, {} angles, {} labels",
                angles.len(),
                y.len()
            ),
        );
        return;
    }
    let (na, nc, nv, dim, m) = (vs[0], vs[1], vs[2], vs[3], ts[2]);
    let feat = Features {
        train: tr.chunks(m * dim).map(<[f64]>::to_vec).collect(),
        val: va
            .chunks(nc * nv * dim)
            .map(|a| a.chunks(nv * dim).map(<[f64]>::to_vec).collect())
            .collect(),
        dim,
    };
    // Our normalisation against the reference's.
    let norm_all = |x: &[f64]| {
        x.chunks(dim)
            .flat_map(score::l2_normalize)
            .collect::<Vec<f64>>()
    };
    match (train_norm, val_norm) {
        (Some((tn, _)), Some((vn, _))) => {
            tally.close(&format!("{at}.train_norm"), &norm_all(&tr), &tn, F64);
            tally.close(&format!("{at}.val_norm"), &norm_all(&va), &vn, F64);
        }
        _ => tally.fail(&at, "train_norm / val_norm missing or not numeric"),
    }
    let is_normal: Vec<bool> = y.iter().map(|&v| v == 1.0).collect();
    let auroc = |s: &[f64]| score::auroc(s, &is_normal).unwrap();

    for (section, value, ensemble) in [
        ("single_angle0_crop0", single, false),
        ("ensemble", ens, true),
    ] {
        let Some(value) = value else { continue };
        let Some(mut sec) = Obj::new(format!("{at}.{section}"), value, tally) else {
            continue;
        };
        let metrics: Vec<String> = sec.map.keys().cloned().collect();
        let mut entries = Vec::new();
        for name in metrics {
            let v = sec.take(&name).expect("listed");
            entries.push((name, v));
        }
        sec.finish(tally);
        for (name, v) in entries {
            let here = format!("{at}.{section}.{name}");
            if name == "ocsvm" || name == "locsvm" {
                // libsvm references: recognised, not compared.
                tally.ignore(&v);
                continue;
            }
            let f = match ScoreFn::from_str(&name) {
                Ok(f) => f,
                Err(_) => {
                    tally.fail(&here, "unknown score (no implementation mapped)");
                    tally.ignore(&v);
                    continue;
                }
            };
            let (angles_used, all_crops) = if ensemble { (na, true) } else { (1, false) };
            let (s64, s32) = knn_scores(&feat, f, angles_used, all_crops);
            let Some(mut e) = Obj::new(&here, v, tally) else {
                continue;
            };
            if let Some(k) = e.take_opt("k") {
                let want = match f {
                    ScoreFn::CosK { k } | ScoreFn::CosKNorm { k } => k as i64,
                    _ => -1,
                };
                tally.exact(&format!("{here}.k"), &[k.as_i64().unwrap_or(-2)], &[want]);
            }
            if let Some(nw) = e.take_opt("norm_weighted") {
                let ours = matches!(f, ScoreFn::CosKNorm { .. });
                tally.exact(
                    &format!("{here}.norm_weighted"),
                    &[Some(ours)],
                    &[nw.as_bool()],
                );
            }
            if let Some(g) = e.take_opt("gamma") {
                let (banks, _) = feat.to::<f64>();
                match num(&g) {
                    Some(g) => {
                        tally.close(&format!("{here}.gamma"), &[banks[0].kde_gamma()], &[g], F64)
                    }
                    None => tally.fail(&format!("{here}.gamma"), "not a number"),
                }
            }
            let mut any_score = false;
            for key in ["score_float64", "score"] {
                if let Some(s) = e.take_opt(key).as_ref().and_then(nd) {
                    any_score = true;
                    tally.close(&format!("{here}.{key}"), &s64, &s.0, F64);
                    tally.close(&format!("{here}.{key} (f32 path)"), &s32, &s.0, F32);
                }
            }
            if let Some(s) = e.take_opt("score_faiss_float32").as_ref().and_then(nd) {
                any_score = true;
                tally.close(&format!("{here}.score_faiss_float32"), &s64, &s.0, FAISS);
            }
            if let Some(s) = e
                .take_opt("angle0_only_all_crops_score_faiss_float32")
                .as_ref()
                .and_then(nd)
            {
                let (a0, _) = knn_scores(&feat, f, 1, true);
                tally.close(
                    &format!("{here}.angle0_only_all_crops_score_faiss_float32"),
                    &a0,
                    &s.0,
                    FAISS,
                );
            }
            if !any_score {
                tally.fail(&here, "no score array");
            }
            let ours_auc = auroc(&s64);
            for (key, tol) in [
                ("auroc_float64", F64),
                ("auroc", F64),
                ("auroc_faiss_float32", FAISS),
            ] {
                if let Some(a) = e.take_opt(key) {
                    match num(&a) {
                        Some(a) => tally.close(&format!("{here}.{key}"), &[ours_auc], &[a], tol),
                        None => tally.fail(&format!("{here}.{key}"), "not a number"),
                    }
                }
            }
            e.finish(tally);
        }
    }

    if let Some(v) = aulc {
        let Some(mut e) = Obj::new(format!("{at}.aulc"), v, tally) else {
            return;
        };
        let curve = e.take("auc_curve").as_ref().and_then(nd);
        let value = e.take("aulc").as_ref().and_then(num);
        e.finish(tally);
        match (curve, value) {
            (Some((c, _)), Some(v)) => tally.close(
                &format!("{at}.aulc.aulc"),
                &[score::aulc(&c).unwrap()],
                &[v],
                F64,
            ),
            _ => tally.fail(&format!("{at}.aulc"), "auc_curve and aulc must be numeric"),
        }
    }
}

// ---------------------------------------------------------------------------------------------

fn check_value(file: &str, v: Value, tally: &mut Tally) {
    tally.files += 1;
    let is_obj = |k: &str| v.get(k).is_some();
    if is_obj("losses") {
        check_loss_case(file, v, tally);
    } else if is_obj("train_feat") {
        check_knn_case(file, v, tally);
    } else {
        tally.fail(
            file,
            "neither a loss case (`losses`) nor a kNN case (`train_feat`)",
        );
    }
}

fn check_dir(dir: &Path) -> Tally {
    let mut tally = Tally::default();
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| {
            panic!(
                "cannot read golden folder {} (a relative FIRM_GOLDEN_DIR is taken from \
                 host-trainer/, the working directory cargo gives this test): {e}",
                dir.display()
            )
        })
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "json"))
        .collect();
    files.sort();
    for path in files {
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        let text = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("cannot read {}: {e}", path.display()));
        match serde_json::from_str::<Value>(&text) {
            Ok(v) => check_value(&name, v, &mut tally),
            Err(e) => tally.fail(&name, format!("not JSON: {e}")),
        }
    }
    tally
}

fn shipped_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden")
}

#[test]
fn golden() {
    let dir = std::env::var_os("FIRM_GOLDEN_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(shipped_dir);
    let t = check_dir(&dir);
    println!("golden vectors from {}", dir.display());
    println!(
        "golden: {} files, {} values compared, {} ignored",
        t.files, t.compared, t.ignored
    );
    assert!(t.files > 0, "no *.json files in {}", dir.display());
    assert!(
        t.errors.is_empty(),
        "{} mismatches:\n{}",
        t.errors.len(),
        t.errors.join("\n")
    );
}

/// The workplace's own copy of the reference vectors (`../shared/golden` beside the checkout),
/// checked as well when it is there, so that the shipped copy cannot drift from it unseen. A fresh
/// clone without it says so and passes.
#[test]
fn golden_workplace_copy() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/golden");
    if !dir.is_dir() {
        println!(
            "{} not found; golden ran on the shipped copy only",
            dir.display()
        );
        return;
    }
    let t = check_dir(&dir);
    println!(
        "golden vectors from {}: {} files, {} values compared, {} ignored",
        dir.display(),
        t.files,
        t.compared,
        t.ignored
    );
    assert!(t.files > 0, "no *.json files in {}", dir.display());
    assert!(
        t.errors.is_empty(),
        "{} mismatches against {}:\n{}",
        t.errors.len(),
        dir.display(),
        t.errors.join("\n")
    );
}

fn load(name: &str) -> Value {
    serde_json::from_str(&std::fs::read_to_string(shipped_dir().join(name)).unwrap()).unwrap()
}

fn check_one(v: Value) -> Tally {
    let mut t = Tally::default();
    check_value("case.json", v, &mut t);
    t
}

#[test]
fn golden_fails_on_unknown_keys() {
    let mut v = load("loss_01_small_mixed_t0.1.json");
    v["losses"]["firm_pairwise"]["surprise"] = Value::from(1.0);
    let t = check_one(v);
    assert!(
        t.errors
            .iter()
            .any(|e| e.contains("firm_pairwise.surprise: unknown key")),
        "{:?}",
        t.errors
    );
    let mut v = load("knn_01_single_view.json");
    v["ensemble"]["cos_7_squared"] = serde_json::json!({"score": [1.0]});
    assert!(!check_one(v).errors.is_empty());
    let mut v = load("loss_02_small_allID_t0.2.json");
    v["losses"]["triplet"] = serde_json::json!({"loss": 1.0});
    assert!(check_one(v).errors.iter().any(|e| e.contains("triplet")));
}

#[test]
fn golden_detects_small_deviations() {
    let mut v = load("loss_04_N8_rotations_t0.2.json");
    let x = v["losses"]["firm_pairwise"]["loss"].as_f64().unwrap();
    v["losses"]["firm_pairwise"]["loss"] = Value::from(x * (1.0 + 1e-8));
    assert!(
        !check_one(v).errors.is_empty(),
        "a 1e-8 relative change must fail at rtol 1e-9"
    );
    let mut v = load("loss_01_small_mixed_t0.1.json");
    v["losses"]["supcon_binary"]["positive_mask"][0][2] = Value::from(1);
    assert!(
        check_one(v)
            .errors
            .iter()
            .any(|e| e.contains("positive_mask"))
    );
    let mut v = load("knn_02_rot_ensemble.json");
    let s = v["ensemble"]["kde"]["score"][3].as_f64().unwrap();
    v["ensemble"]["kde"]["score"][3] = Value::from(s + 1e-6);
    assert!(
        check_one(v)
            .errors
            .iter()
            .any(|e| e.contains("ensemble.kde.score"))
    );
    let mut v = load("knn_03_rot_crop_ensemble.json");
    v["aulc"]["aulc"] = Value::from(0.77);
    assert!(check_one(v).errors.iter().any(|e| e.contains("aulc")));
}

#[test]
fn golden_classifies_by_content_not_name() {
    // A kNN case under a loss-like name is still checked as a kNN case, and passes.
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(
        shipped_dir().join("knn_01_single_view.json"),
        dir.path().join("loss_99_misnamed.json"),
    )
    .unwrap();
    std::fs::write(dir.path().join("other.json"), r#"{"name": "x"}"#).unwrap();
    let t = check_dir(dir.path());
    assert_eq!(t.files, 2);
    assert!(t.compared > 100);
    assert_eq!(t.errors.len(), 1, "{:?}", t.errors);
    assert!(t.errors[0].contains("other.json: neither a loss case"));
}

#[test]
fn every_shipped_case_has_reference_counts() {
    // Guard against a vacuous pass: the shipped vectors hold thousands of values.
    let t = check_dir(&shipped_dir());
    let per_file: BTreeMap<usize, usize> = BTreeMap::from([(t.files, t.compared)]);
    assert!(t.files >= 16 && t.compared > 5_000, "{per_file:?}");
}
