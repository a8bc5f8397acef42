//! The bundle format end to end on small real bundles (a tiny ResNet-18 with random weights and
//! BatchNorm statistics, folded and quantized, a bank of random images): round trips, the CPU
//! path's self-test, and every tamper case refused with its own error.

use std::collections::BTreeMap;

use candle_core::{DType, Device};
use candle_nn::{VarBuilder, VarMap};
use ed25519_dalek::SigningKey;
use firm_shared::bundle::manifest::{
    self, BankSection, Manifest, ModelSection, Provenance, ScoreSection, SelfTestCase,
    SelfTestSection, ThresholdSection, Tolerance, WeightsSection,
};
use firm_shared::bundle::{
    BankData, Bundle, BundleError, ContainerError, EncoderWeights, Limits, Member, SelfTestData,
    container, scan, sha256_hex, weights,
};
use firm_shared::calibrate::{self, CalibrationSpec};
use firm_shared::detect::{CpuEmbedder, Detector, Embedder};
use firm_shared::model::{Encoder, EncoderConfig, Stem, params};
use firm_shared::preprocess::PreprocessSpec;
use firm_shared::score::ScoreSpec;
use image::RgbImage;
use rand::{Rng, SeedableRng};

const SIZE: u32 = 16;
const THUMB: u32 = 4;

fn key() -> SigningKey {
    SigningKey::from_bytes(&[7; 32])
}

fn images(n: usize, seed: u64) -> Vec<RgbImage> {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    (0..n)
        .map(|_| RgbImage::from_fn(SIZE, SIZE, |_, _| image::Rgb(rng.random())))
        .collect()
}

struct Spec {
    seed: u64,
    score: &'static str,
    bank: usize,
    selftest: usize,
    float_layers: Vec<String>,
}

impl Default for Spec {
    fn default() -> Self {
        Self {
            seed: 1,
            score: "cos_1",
            bank: 6,
            selftest: 8,
            float_layers: vec![],
        }
    }
}

/// A complete bundle whose self-test expectations come from the CPU path itself (these tests
/// are about the format; the exporter's tests check the independent reference path).
fn make(spec: &Spec) -> Bundle {
    let enc = EncoderConfig::new(Stem::Imagenet, 1.0 / 16.0);
    let graph = enc.graph();
    let vm = VarMap::new();
    Encoder::new(&enc, VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu)).unwrap();
    params::init_params(&vm, spec.seed).unwrap();
    params::randomize_batchnorm(&vm, spec.seed + 1).unwrap();
    let get = |name: &str| -> firm_shared::Result<Vec<f32>> {
        Ok(params::find(&vm, name)
            .unwrap()
            .as_tensor()
            .flatten_all()?
            .to_vec1()?)
    };
    let (w, _) = EncoderWeights::fold_and_quantize(&graph, get, &spec.float_layers).unwrap();
    let score: ScoreSpec = spec.score.parse().unwrap();
    let angles = score.ensemble.angles();
    let pre = PreprocessSpec::new(SIZE);
    let train = images(spec.bank, spec.seed + 2);
    let mut emb = CpuEmbedder::from_weights(&graph, &w, &Default::default(), SIZE).unwrap();
    let raw: Vec<Vec<f32>> = angles
        .iter()
        .map(|&a| {
            let x: Vec<f32> = train
                .iter()
                .flat_map(|i| pre.normalize(&firm_shared::preprocess::rotate(i, a)))
                .collect();
            emb.embed(&x, train.len()).unwrap()
        })
        .collect();
    let thumbs: Vec<RgbImage> = train
        .iter()
        .map(|i| image::imageops::thumbnail(i, THUMB, THUMB))
        .collect();
    let dim = enc.feature_dim();
    let bank = BankData::new(dim, angles, &raw, &thumbs, THUMB).unwrap();
    let cases = images(spec.selftest, spec.seed + 3);
    let mut det = Detector::from_parts(pre.clone(), score, &bank, emb).unwrap();
    let (scored, feats) = det.score_preprocessed(&cases).unwrap();
    let dist: Vec<f64> = scored.iter().map(|s| s.distance).collect();
    let cal = calibrate::conformal_threshold(&dist, &CalibrationSpec::default()).unwrap();
    let manifest = Manifest {
        schema_version: manifest::SCHEMA_VERSION,
        bundle_version: 3,
        product_class: "widget".into(),
        created: "2026-12-01T00:00:00Z".into(),
        model: ModelSection {
            encoder: enc.clone(),
            graph,
            feature_dim: dim,
            input_size: SIZE,
            weights: WeightsSection {
                bn_folded: true,
                scheme: weights::SCHEME.into(),
                float_layers: w.float_layers(),
                float_layers_reason: "test".into(),
                head_exported: false,
            },
            activations: vec![],
        },
        preprocess: pre,
        score: ScoreSection::new(score),
        threshold: ThresholdSection {
            distance: cal.distance,
            operating_point: "calibrated".into(),
            operating_points: BTreeMap::from([("calibrated".into(), cal.distance)]),
            method: "test".into(),
            calibration: cal,
            calibration_images: "the self-test images".into(),
            test: None,
        },
        bank: BankSection {
            entries: spec.bank,
            angles: angles.to_vec(),
            dtype: "f16".into(),
            thumbnail_size: THUMB,
            sources: (0..spec.bank).map(|i| format!("train/{i}.png")).collect(),
        },
        selftest: SelfTestSection {
            cases: (0..spec.selftest)
                .map(|i| SelfTestCase {
                    name: format!("case-{i}"),
                    label: "good".into(),
                })
                .collect(),
            tolerance: Tolerance {
                embedding_rel: 1e-4,
                distance_abs: 1e-5,
                patch_rel: firm_shared::bundle::manifest::PATCH_TOLERANCE,
                why: "test".into(),
            },
            reference: "the CPU path".into(),
        },
        provenance: Provenance {
            dataset: "random".into(),
            dataset_sha256: "0".repeat(64),
            n_train: spec.bank,
            config: serde_json::json!({"seed": spec.seed}),
            git_revision: "test".into(),
            trainer_version: "0".into(),
            checkpoint: "none".into(),
            epoch: 0,
            step: 0,
            metrics: BTreeMap::new(),
        },
        patch: None,
        drift: None,
        members: BTreeMap::new(),
    };
    Bundle {
        manifest,
        encoder: w,
        bank,
        selftest: SelfTestData {
            size: SIZE,
            dim,
            images: cases.iter().flat_map(|i| i.as_raw().clone()).collect(),
            embeddings: feats,
            distances: dist.iter().map(|&d| d as f32).collect(),
            patch_scores: None,
        },
    }
}

fn bytes_of(b: &Bundle) -> Vec<u8> {
    b.to_bytes(&key(), &Limits::default()).unwrap()
}

fn open(bytes: &[u8]) -> Result<Bundle, BundleError> {
    Bundle::open(bytes, &key().verifying_key(), &Limits::default())
}

/// The members of a bundle, to edit and re-sign with the right key (an attacker with the key,
/// or a buggy exporter: the checks behind the signature must still hold).
fn members(bytes: &[u8]) -> Vec<Member> {
    container::read(bytes, &Limits::default()).unwrap().members
}

fn resign(m: &[Member]) -> Vec<u8> {
    container::write(m, &key(), &Limits::default()).unwrap()
}

fn edit_manifest(bytes: &[u8], f: impl FnOnce(&mut serde_json::Value)) -> Vec<u8> {
    let mut m = members(bytes);
    let mut v: serde_json::Value = serde_json::from_slice(&m[0].data).unwrap();
    f(&mut v);
    m[0].data = serde_json::to_vec(&v).unwrap();
    resign(&m)
}

/// (offset of each header, name, data size) in file order, signature included.
fn layout(bytes: &[u8]) -> Vec<(usize, String, usize)> {
    let c = container::read(bytes, &Limits::default()).unwrap();
    let mut out = Vec::new();
    let mut off = 0;
    for (name, size) in c
        .members
        .iter()
        .map(|m| (m.name.clone(), m.data.len()))
        .chain(std::iter::once((container::SIGNATURE_NAME.to_string(), 64)))
    {
        out.push((off, name, size));
        off += 512 + size.div_ceil(512) * 512;
    }
    out
}

#[test]
fn round_trip_is_exact_and_self_test_passes() {
    for score in ["cos_1", "cos_5+rot", "kde", "center"] {
        let b = make(&Spec {
            score,
            ..Spec::default()
        });
        let bytes = bytes_of(&b);
        let back = open(&bytes).unwrap();
        assert_eq!(back.manifest.members.len(), 3);
        let mut expect = b.clone();
        expect.manifest.members = back.manifest.members.clone();
        assert_eq!(back, expect, "{score}");
        let r = back.self_test_cpu().unwrap();
        assert!(r.passed, "{score}: {r:?}");
        assert_eq!(r.cases.len(), 8);
        // Writing is deterministic: the same content gives the same bytes.
        assert_eq!(bytes_of(&b), bytes);
        // Thumbnails come back as images.
        assert_eq!(back.bank.thumbnail(5).unwrap().dimensions(), (THUMB, THUMB));
        assert!(back.bank.thumbnail(6).is_none());
    }
}

#[test]
fn detector_scores_the_bank_itself_as_normal_and_names_the_nearest() {
    let b = make(&Spec::default());
    let mut det = Detector::cpu(&b).unwrap();
    let train = images(6, 3);
    let (scored, _) = det.score_preprocessed(&train).unwrap();
    for (i, s) in scored.iter().enumerate() {
        // A bank image is its own nearest neighbour (f16 residuals: cosine 1 to ~1e-4).
        assert_eq!(s.nearest, i);
        assert!(s.distance.abs() < 1e-3, "{s:?}");
    }
    let e = det
        .score_preprocessed(&images(1, 9)[..0])
        .map(|r| r.0.len());
    assert_eq!(e.unwrap(), 0);
    let big = RgbImage::new(40, 30);
    assert!(
        det.score_image(&big).is_ok(),
        "score_image applies the test transform"
    );
    let e = det.score_preprocessed(&[big]).unwrap_err().to_string();
    assert!(e.contains("16x16"), "{e}");
}

#[test]
fn self_test_catches_a_changed_weight_scale_or_bias() {
    let b = make(&Spec::default());
    let bytes = bytes_of(&b);
    let mut m = open(&bytes).unwrap();
    // The writer recomputes the member hashes: these are bundles a buggy exporter could sign.
    let layer = 3;
    if let weights::LayerWeight::Int8(q) = &mut m.encoder.layers[layer].weight {
        q.scale[0] *= 1.5;
    }
    let e = open(&bytes_of(&m)).unwrap().self_test_cpu().unwrap();
    assert!(!e.passed);
    let msg = e.check().unwrap_err().to_string();
    assert!(
        msg.contains("self-test failed") && msg.contains("cpu path"),
        "{msg}"
    );
    let mut m = open(&bytes).unwrap();
    m.encoder.layers[0].bias[0] += 0.5;
    assert!(!open(&bytes_of(&m)).unwrap().self_test_cpu().unwrap().passed);
    let mut m = open(&bytes).unwrap();
    m.selftest.distances[2] += 1e-3;
    assert!(!open(&bytes_of(&m)).unwrap().self_test_cpu().unwrap().passed);
}

#[test]
fn truncation_at_every_section_boundary_is_refused() {
    let bytes = bytes_of(&make(&Spec::default()));
    let mut cuts = vec![0, 1, bytes.len() - 1, bytes.len() - 512, bytes.len() - 1024];
    for (off, _, size) in layout(&bytes) {
        let pad = off + 512 + size;
        cuts.extend([
            off,
            off + 100,
            off + 511,
            off + 512,
            off + 513,
            pad - 1,
            pad,
        ]);
        cuts.push(off + 512 + size.div_ceil(512) * 512 - 1);
    }
    cuts.retain(|&c| c < bytes.len());
    for cut in cuts {
        let e = open(&bytes[..cut]).unwrap_err();
        assert!(
            matches!(
                e,
                BundleError::Container(
                    ContainerError::Truncated { .. } | ContainerError::MissingSignature
                )
            ),
            "cut at {cut}: {e}"
        );
        assert!(e.to_string().contains("truncated") || e.to_string().contains("no signature"));
    }
}

#[test]
fn a_flipped_bit_anywhere_is_refused_with_the_error_of_its_place() {
    let bytes = bytes_of(&make(&Spec::default()));
    let pk = key().verifying_key();
    let lim = Limits::default();
    let entries = layout(&bytes);
    let flip = |i: usize, bit: u8| {
        let mut b = bytes.clone();
        b[i] ^= 1 << bit;
        Bundle::open(&b, &pk, &lim).unwrap_err()
    };
    for (off, name, size) in &entries {
        // Every bit of every header.
        for i in *off..off + 512 {
            for bit in 0..8 {
                let e = flip(i, bit);
                assert!(
                    matches!(
                        e,
                        BundleError::Container(
                            ContainerError::BadHeader { .. } | ContainerError::UnsafeName { .. }
                        )
                    ),
                    "{name}: header byte {} bit {bit}: {e}",
                    i - off
                );
            }
        }
        // Data: every 61st byte and the last one; the signature covers members, and a flipped
        // signature byte does not verify.
        let data = off + 512;
        for i in (data..data + size)
            .step_by(61)
            .chain(std::iter::once(data + size - 1))
        {
            let e = flip(i, (i % 8) as u8);
            assert_eq!(
                e,
                BundleError::Container(ContainerError::BadSignature),
                "{name}: data byte {}",
                i - data
            );
        }
        // Every padding byte.
        for i in data + size..data + size.div_ceil(512) * 512 {
            assert!(
                matches!(
                    flip(i, 0),
                    BundleError::Container(ContainerError::BadPadding { .. })
                ),
                "{name}: padding byte {}",
                i - data - size
            );
        }
    }
    // The end-of-archive blocks.
    for i in bytes.len() - 1024..bytes.len() {
        assert!(matches!(
            flip(i, 5),
            BundleError::Container(ContainerError::BadPadding { .. })
        ));
    }
}

/// `bundle::scan` under `keys` (the file read in pieces, as a device reports on its slots).
fn scan_with(
    bytes: &[u8],
    keys: &[ed25519_dalek::VerifyingKey],
) -> Result<scan::Scanned, BundleError> {
    scan::scan(&mut std::io::Cursor::new(bytes), keys, &Limits::default())
}

/// The streamed scan agrees with `Bundle::open` wherever it decides: on a good file the same
/// manifest, with the file's size and SHA-256; the same error for every truncation at the
/// section boundaries and every 997th byte, every flipped header bit, every 61st data byte,
/// every padding and end byte, bytes appended, the wrong key (and the right one among others),
/// and members that do not match the signed manifest. (Tensor contents it leaves to `open`.)
#[test]
fn the_streamed_scan_agrees_with_open() {
    let bytes = bytes_of(&make(&Spec::default()));
    let pk = key().verifying_key();
    let other = SigningKey::from_bytes(&[8; 32]).verifying_key();
    let s = scan_with(&bytes, &[other, pk]).unwrap();
    assert_eq!(s.manifest, open(&bytes).unwrap().manifest);
    assert_eq!(s.bytes, bytes.len() as u64);
    assert_eq!(s.sha256, sha256_hex(&bytes));
    let agree = |b: &[u8], what: &str| {
        let want = open(b).map(|_| ()).unwrap_err();
        assert_eq!(scan_with(b, &[pk]).map(|_| ()).unwrap_err(), want, "{what}");
    };
    let entries = layout(&bytes);
    let mut cuts: Vec<usize> = (0..bytes.len()).step_by(997).collect();
    for (off, _, size) in &entries {
        cuts.extend([
            off + 1,
            off + 511,
            off + 512,
            off + 512 + size,
            off + 513 + size,
        ]);
    }
    cuts.extend([bytes.len() - 1, bytes.len() - 512, bytes.len() - 1024]);
    cuts.retain(|&c| c < bytes.len());
    for cut in cuts {
        agree(&bytes[..cut], &format!("cut at {cut}"));
    }
    let flipped = |i: usize, bit: u8| {
        let mut b = bytes.clone();
        b[i] ^= 1 << bit;
        b
    };
    for (off, name, size) in &entries {
        for i in *off..off + 512 {
            for bit in 0..8 {
                agree(
                    &flipped(i, bit),
                    &format!("{name}: header byte {} bit {bit}", i - off),
                );
            }
        }
        let data = off + 512;
        let padded = data + size.div_ceil(512) * 512;
        for i in (data..data + size).step_by(61).chain(data + size..padded) {
            agree(
                &flipped(i, (i % 8) as u8),
                &format!("{name}: byte {}", i - off),
            );
        }
    }
    for i in bytes.len() - 1024..bytes.len() {
        agree(&flipped(i, 5), &format!("end block byte {i}"));
    }
    let mut longer = bytes.clone();
    longer.extend_from_slice(&[0; 512]);
    agree(&longer, "appended zeros");
    assert_eq!(
        scan_with(&bytes, &[other]).unwrap_err(),
        BundleError::Container(ContainerError::BadSignature)
    );
    // Signed with the right key, members that do not match the manifest: a changed member, one
    // more, one missing.
    let mut m = members(&bytes);
    m[2].data[0] ^= 1;
    agree(&resign(&m), "a changed member");
    let mut m = members(&bytes);
    m.push(Member {
        name: "extra.bin".into(),
        data: vec![1, 2, 3],
    });
    agree(&resign(&m), "an extra member");
    let mut m = members(&bytes);
    m.remove(2);
    agree(&resign(&m), "a missing member");
    let m = members(&bytes);
    agree(&resign(&m[1..]), "no manifest");
}

/// `Bundle::open_owned` (the device's: it takes the file's buffer) gives what `open` gives,
/// with small thumbnails and with thumbnails that are most of the file, which then keep the
/// file's buffer (its capacity shows it); it refuses a wrong key and a changed byte alike.
#[test]
fn open_owned_gives_what_open_gives_and_reuses_the_buffer_for_large_thumbnails() {
    let pk = key().verifying_key();
    let other = SigningKey::from_bytes(&[8; 32]).verifying_key();
    let lim = Limits::default();
    let small = bytes_of(&make(&Spec::default()));
    let mut big = make(&Spec::default());
    let side = 512;
    big.manifest.bank.thumbnail_size = side;
    big.bank.thumbnail_size = side;
    big.bank.thumbnails = (0..big.bank.len() * (side * side * 3) as usize)
        .map(|i| (i * 7 % 251) as u8)
        .collect();
    let big = bytes_of(&big);
    for (what, bytes, in_place) in [("small", &small, false), ("large", &big, true)] {
        let want = open(bytes).unwrap();
        let got = Bundle::open_owned(bytes.clone(), &[other, pk], &lim).unwrap();
        assert_eq!(got, want, "{what} thumbnails");
        assert_eq!(
            got.bank.thumbnails.capacity() == bytes.len(),
            in_place,
            "{what} thumbnails: capacity {} of a {}-byte file",
            got.bank.thumbnails.capacity(),
            bytes.len()
        );
        assert_eq!(
            Bundle::open_owned(bytes.clone(), &[other], &lim).unwrap_err(),
            BundleError::Container(ContainerError::BadSignature)
        );
        let mut changed = bytes.clone();
        let i = changed.len() / 2;
        changed[i] ^= 1;
        assert_eq!(
            Bundle::open_owned(changed.clone(), &[pk], &lim).unwrap_err(),
            open(&changed).unwrap_err()
        );
    }
}

#[test]
fn wrong_key_missing_signature_and_size_limits() {
    let bytes = bytes_of(&make(&Spec::default()));
    let other = SigningKey::from_bytes(&[8; 32]).verifying_key();
    assert_eq!(
        Bundle::open(&bytes, &other, &Limits::default()).unwrap_err(),
        BundleError::Container(ContainerError::BadSignature)
    );
    // The archive without its signature entry (cut there, end blocks appended).
    let sig_at = layout(&bytes).last().unwrap().0;
    let mut unsigned = bytes[..sig_at].to_vec();
    unsigned.resize(sig_at + 1024, 0);
    let e = open(&unsigned).unwrap_err();
    assert_eq!(e, BundleError::Container(ContainerError::MissingSignature));
    // A member above the limit is refused by name, before its data is read.
    let small = Limits {
        max_member: 20_000,
        ..Limits::default()
    };
    let e = Bundle::open(&bytes, &key().verifying_key(), &small).unwrap_err();
    assert!(
        matches!(&e, BundleError::Container(ContainerError::MemberTooLarge { name, .. }) if name == "encoder.safetensors"),
        "{e}"
    );
    let tiny = Limits {
        max_total: 4096,
        ..Limits::default()
    };
    assert!(matches!(
        Bundle::open(&bytes, &key().verifying_key(), &tiny).unwrap_err(),
        BundleError::Container(ContainerError::FileTooLarge { .. })
    ));
}

/// Signed with the right key but not a bundle this build may run: each refused by name.
#[test]
fn signed_but_wrong_contents_are_refused_specifically() {
    let bytes = bytes_of(&make(&Spec::default()));
    // Unknown schema version, missing or malformed version.
    let e = open(&edit_manifest(&bytes, |v| v["schema-version"] = 3.into())).unwrap_err();
    assert_eq!(
        e,
        BundleError::UnknownSchema {
            found: 3,
            supported: 2
        }
    );
    assert!(e.to_string().contains("schema-version 3"), "{e}");
    // A bundle of the previous schema (no graph) is refused with the way to re-export it.
    let e = open(&edit_manifest(&bytes, |v| v["schema-version"] = 1.into())).unwrap_err();
    assert_eq!(
        e,
        BundleError::OutdatedSchema {
            found: 1,
            supported: 2
        }
    );
    let msg = e.to_string();
    assert!(
        msg.contains("schema-version 1") && msg.contains("host-trainer export --run"),
        "{msg}"
    );
    // The graph is checked: a convolution that reads a tensor of other channels, a residual
    // from the future, a graph too deep for the input size, a quantized tensor that does not
    // exist, a layer the weights member lacks.
    let e = open(&edit_manifest(&bytes, |v| {
        v["model"]["graph"]["ops"][2]["c-in"] = 5.into()
    }))
    .unwrap_err();
    assert!(e.to_string().contains("c-in 5"), "{e}");
    let e = open(&edit_manifest(&bytes, |v| {
        v["model"]["graph"]["ops"][3]["residual"] =
            serde_json::json!({"tensor": 40, "before-activation": true})
    }))
    .unwrap_err();
    assert!(e.to_string().contains("not written before"), "{e}");
    let e = open(&edit_manifest(&bytes, |v| {
        // The last convolution (layer4.1.conv2) sees a 1x1 map at 16 px: unpadded it has no output.
        let ops = v["model"]["graph"]["ops"].as_array_mut().unwrap();
        let last = ops.len() - 2;
        ops[last]["padding"] = 0.into();
    }))
    .unwrap_err();
    assert!(e.to_string().contains("model.graph at 16 px"), "{e}");
    let e =
        open(&edit_manifest(
            &bytes,
            |v| {
                v["model"]["activations"] =
                    serde_json::json!([{"tensor": 999, "scale": 0.1, "zero-point": 0}])
            },
        ))
        .unwrap_err();
    assert!(e.to_string().contains("model.activations"), "{e}");
    let e = open(&edit_manifest(&bytes, |v| {
        v["model"]["graph"]["ops"][0]["name"] = "stem".into()
    }))
    .unwrap_err();
    assert!(e.to_string().contains("stem.weight"), "{e}");
    let e = open(&edit_manifest(&bytes, |v| {
        v.as_object_mut().unwrap().remove("schema-version");
    }))
    .unwrap_err();
    assert!(e.to_string().contains("no `schema-version`"), "{e}");
    // Unknown field; contradictory threshold.
    let e = open(&edit_manifest(&bytes, |v| v["colour"] = "red".into())).unwrap_err();
    assert!(e.to_string().contains("unknown field `colour`"), "{e}");
    let e = open(&edit_manifest(&bytes, |v| {
        v["threshold"]["distance"] = 0.5.into()
    }))
    .unwrap_err();
    assert!(
        e.to_string().contains("differs from operating point"),
        "{e}"
    );
    let e = open(&edit_manifest(&bytes, |v| {
        v["preprocess"]["resize-ratio"] = 1e30.into()
    }))
    .unwrap_err();
    assert!(e.to_string().contains("resize-ratio"), "{e}");
    let e = open(&edit_manifest(&bytes, |v| {
        v["score"]["ensemble"] = "rotation".into()
    }))
    .unwrap_err();
    assert!(e.to_string().contains("score.spec contradicts"), "{e}");

    let m = members(&bytes);
    // A member missing, an extra one, or one that differs from the manifest's hash.
    let e = open(&resign(&m[..3])).unwrap_err();
    assert_eq!(
        e,
        BundleError::MissingMember {
            name: "selftest.safetensors".into()
        }
    );
    let mut extra = m.clone();
    extra.push(Member {
        name: "payload.sh".into(),
        data: b"rm -rf /".to_vec(),
    });
    assert_eq!(
        open(&resign(&extra)).unwrap_err(),
        BundleError::UnexpectedMember {
            name: "payload.sh".into()
        }
    );
    let mut changed = m.clone();
    let last = changed[2].data.len() - 1;
    changed[2].data[last] ^= 1;
    let e = open(&resign(&changed)).unwrap_err();
    assert!(
        matches!(&e, BundleError::MemberMismatch { name, why } if name == "bank.safetensors" && why.contains("SHA-256")),
        "{e}"
    );
    changed[2].data.push(0);
    assert!(
        open(&resign(&changed))
            .unwrap_err()
            .to_string()
            .contains("bytes, the manifest says")
    );
}

/// A member that matches the manifest's hash but not the format (the manifest re-signed for it).
#[test]
fn tensors_must_have_the_prescribed_dtype_shape_and_names() {
    let b = make(&Spec::default());
    let bytes = bytes_of(&b);
    let relisted = |m: &mut Vec<Member>| {
        let mut v: serde_json::Value = serde_json::from_slice(&m[0].data).unwrap();
        for mem in m[1..].iter() {
            v["members"][&mem.name] = serde_json::json!({
                "size": mem.data.len(),
                "sha256": firm_shared::bundle::sha256_hex(&mem.data),
            });
        }
        m[0].data = serde_json::to_vec(&v).unwrap();
    };
    use firm_shared::bundle::tensors::{OwnedTensor, serialize};
    let mut m = members(&bytes);
    m[3].data = serialize(
        "selftest.safetensors",
        &[
            OwnedTensor::u8("images", &[8, 16, 16, 3], &vec![0; 8 * 16 * 16 * 3]),
            OwnedTensor::f32("embeddings", &[8, 31], &vec![0.0; 8 * 31]),
            OwnedTensor::f32("distances", &[8], &[0.0; 8]),
        ],
    )
    .unwrap();
    relisted(&mut m);
    let e = open(&resign(&m)).unwrap_err().to_string();
    assert!(
        e.contains("`embeddings` has shape [8, 31]; expected [8, 32]"),
        "{e}"
    );
    let mut m = members(&bytes);
    m[1].data = b"not safetensors".to_vec();
    relisted(&mut m);
    let e = open(&resign(&m)).unwrap_err().to_string();
    assert!(
        e.contains("encoder.safetensors") && e.contains("not a safetensors file"),
        "{e}"
    );
    // A layer stored in f32 that the manifest does not list as float.
    let mut f = b.clone();
    let l = &mut f.encoder.layers[0];
    l.weight = weights::LayerWeight::F32(l.dequantized());
    let e = open(&bytes_of(&f)).unwrap_err().to_string();
    assert!(e.contains("stored in f32") && e.contains("conv1"), "{e}");
}

#[test]
fn float_layers_are_kept_exactly() {
    let b = make(&Spec {
        float_layers: vec!["conv1".into(), "layer4.1.conv2".into()],
        ..Spec::default()
    });
    let back = open(&bytes_of(&b)).unwrap();
    assert_eq!(back.encoder.float_layers(), ["conv1", "layer4.1.conv2"]);
    assert!(back.self_test_cpu().unwrap().passed);
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(12))]
    /// write -> read gives back every field and tensor, for varied models, scores and sizes.
    #[test]
    fn write_read_round_trip(
        seed in 0u64..1000,
        score in proptest::sample::select(vec!["cos_1", "cos_3", "cos_2_norm+rot", "kde+rot", "center"]),
        bank in 1usize..7,
        selftest in 1usize..10,
        float in proptest::sample::subsequence(vec!["conv1", "layer1.0.conv1", "layer3.0.downsample.0"], 0..3),
        version in proptest::prelude::any::<u64>(),
        class in "[a-zA-Z0-9 _-]{1,20}",
    ) {
        let mut b = make(&Spec {
            seed,
            score,
            bank,
            selftest,
            float_layers: float.into_iter().map(String::from).collect(),
        });
        b.manifest.bundle_version = version;
        b.manifest.product_class = class;
        let back = open(&bytes_of(&b)).unwrap();
        b.manifest.members = back.manifest.members.clone();
        proptest::prop_assert_eq!(&back, &b);
        proptest::prop_assert!(back.self_test_cpu().unwrap().passed);
    }
}
