//! Encoder and head: shapes, parameter names, BatchNorm modes, the differentiable max-pool, weight
//! I/O, and parity with an independent ResNet-18 (candle-transformers, torchvision names).

use candle_core::{D, DType, Device, Module, Tensor};
use candle_nn::{VarBuilder, VarMap};
use firm_shared::model::params::{self, Part};
use firm_shared::model::resnet::max_pool_3x3_s2;
use firm_shared::model::{EncoderConfig, FirmModel, ModelConfig, ResNet18, Stem};

fn build(cfg: &ModelConfig, seed: u64) -> (VarMap, FirmModel) {
    let vm = VarMap::new();
    let vb = VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu);
    let m = FirmModel::new(cfg, vb).unwrap();
    params::init_params(&vm, seed).unwrap();
    (vm, m)
}

fn build_encoder(cfg: &EncoderConfig, seed: u64) -> (VarMap, ResNet18) {
    let vm = VarMap::new();
    let vb = VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu);
    let EncoderConfig::Resnet18(r) = cfg else {
        panic!("a ResNet-18 config")
    };
    let m = ResNet18::new(r, vb).unwrap();
    params::init_params(&vm, seed).unwrap();
    (vm, m)
}

fn input(b: usize, size: usize, seed: u64) -> Tensor {
    use rand::{Rng, SeedableRng};
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let v: Vec<f32> = (0..b * 3 * size * size)
        .map(|_| rng.random_range(-2.0..2.0))
        .collect();
    Tensor::from_vec(v, (b, 3, size, size), &Device::Cpu).unwrap()
}

fn max_rel_diff(a: &Tensor, b: &Tensor) -> f32 {
    let a: Vec<f32> = a.flatten_all().unwrap().to_vec1().unwrap();
    let b: Vec<f32> = b.flatten_all().unwrap().to_vec1().unwrap();
    assert_eq!(a.len(), b.len());
    let scale = b.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-12);
    a.iter()
        .zip(&b)
        .fold(0f32, |m, (x, y)| m.max((x - y).abs() / scale))
}

#[test]
fn output_shapes_for_both_stems() {
    for stem in [Stem::Cifar, Stem::Imagenet] {
        // Width 1/8 keeps the 224 px CIFAR-stem case (full-resolution feature maps) fast.
        let cfg = EncoderConfig::new(stem, 0.125);
        let (_, enc) = build_encoder(&cfg, 0);
        for size in [32, 64, 224] {
            let f = enc.forward_t(&input(2, size, 1), false).unwrap();
            assert_eq!(f.dims(), &[2, 64], "{stem:?} at {size} px");
        }
    }
    let (_, full) = build_encoder(&EncoderConfig::new(Stem::Cifar, 1.0), 0);
    let f = full.forward_t(&input(1, 32, 2), false).unwrap();
    assert_eq!(f.dims(), &[1, 512]);
}

#[test]
fn parameter_names_are_torchvision_and_head_sequential() {
    let (vm, m) = build(&ModelConfig::default(), 0);
    let names: Vec<String> = params::sorted_vars(&vm)
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    for want in [
        "conv1.weight",
        "bn1.running_var",
        "layer1.0.conv1.weight",
        "layer1.1.bn2.bias",
        "layer2.0.downsample.0.weight",
        "layer4.1.conv2.weight",
        "head.0.weight",
        "head.1.running_mean",
        "head.21.weight",
        "head.22.running_var",
    ] {
        assert!(names.iter().any(|n| n == want), "missing {want}");
    }
    assert!(!names.iter().any(|n| n == "layer1.0.downsample.0.weight"));
    assert!(
        !names.iter().any(|n| n == "head.22.weight"),
        "last BN is not affine"
    );
    // Convolutions and linears are bias-free: every bias belongs to a BatchNorm.
    for n in names.iter().filter(|n| n.ends_with(".bias")) {
        let rm = n.replace(".bias", ".running_mean");
        assert!(names.contains(&rm), "{n} is not a BatchNorm bias");
    }
    // torchvision ResNet-18 minus fc has 11,176,512 parameters; the CIFAR stem's 3x3 conv has
    // 64 * 3 * (49 - 9) = 7,680 fewer than the 7x7 one.
    let enc_params: usize = params::trainable_vars(&vm)
        .iter()
        .filter(|(n, _)| !n.starts_with("head."))
        .map(|(_, v)| v.elem_count())
        .sum();
    assert_eq!(enc_params, 11_176_512 - 7_680);
    let out = m.forward_t(&input(2, 32, 3), false).unwrap();
    assert_eq!(out.features.dims(), &[2, 512]);
    assert_eq!(out.z.dims(), &[2, 128]);
}

#[test]
fn head_output_is_unit_norm_in_both_modes() {
    let (_, m) = build(&ModelConfig::tiny(Stem::Cifar), 4);
    for train in [true, false] {
        let z = m.forward_t(&input(4, 16, 5), train).unwrap().z;
        let norms: Vec<f32> = z.sqr().unwrap().sum(D::Minus1).unwrap().to_vec1().unwrap();
        for n in norms {
            assert!((n - 1.0).abs() < 1e-5, "{n}");
        }
    }
}

#[test]
fn differentiable_max_pool_equals_candle_pool() {
    for (h, w) in [(8, 8), (7, 9), (112, 112), (5, 6)] {
        let x = Tensor::randn(0f32, 1.0, (2, 3, h, w), &Device::Cpu)
            .unwrap()
            .relu()
            .unwrap();
        let ours = max_pool_3x3_s2(&x).unwrap();
        let reference = x
            .pad_with_zeros(D::Minus1, 1, 1)
            .unwrap()
            .pad_with_zeros(D::Minus2, 1, 1)
            .unwrap()
            .max_pool2d_with_stride(3, 2)
            .unwrap();
        assert_eq!(ours.dims(), reference.dims(), "{h}x{w}");
        assert_eq!(max_rel_diff(&ours, &reference), 0.0, "{h}x{w}");
    }
}

#[test]
fn imagenet_stem_trains_and_eval_matches_train_graph_shapes() {
    let cfg = EncoderConfig::new(Stem::Imagenet, 0.125);
    let (vm, enc) = build_encoder(&cfg, 7);
    let x = input(4, 32, 8);
    let loss = enc
        .forward_t(&x, true)
        .unwrap()
        .sqr()
        .unwrap()
        .mean_all()
        .unwrap();
    let grads = loss.backward().unwrap();
    for (name, var) in params::trainable_vars(&vm) {
        let g = grads.get(var.as_tensor());
        assert!(g.is_some(), "no gradient for {name}");
    }
    let conv1 = params::find(&vm, "conv1.weight").unwrap();
    let g = grads.get(conv1.as_tensor()).unwrap();
    let gsum: f32 = g.abs().unwrap().sum_all().unwrap().to_scalar().unwrap();
    assert!(
        gsum > 0.0,
        "gradient must reach the stem through the max-pool"
    );
}

#[test]
fn train_mode_updates_running_stats_with_pytorch_momentum() {
    let cfg = EncoderConfig::new(Stem::Cifar, 0.0625);
    let (vm, enc) = build_encoder(&cfg, 1);
    let get = |name: &str| {
        params::find(&vm, name)
            .unwrap()
            .as_tensor()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap()
    };
    assert!(get("bn1.running_mean").iter().all(|&v| v == 0.0));
    let x = input(4, 8, 2);
    // Batch mean of conv1's output per channel, computed independently.
    let conv_w = params::find(&vm, "conv1.weight").unwrap();
    let y = x.conv2d(conv_w.as_tensor(), 1, 1, 1, 1).unwrap();
    let batch_mean: Vec<f32> = y
        .transpose(0, 1)
        .unwrap()
        .flatten_from(1)
        .unwrap()
        .mean(1)
        .unwrap()
        .to_vec1()
        .unwrap();
    let before_eval = enc.forward_t(&x, false).unwrap();
    enc.forward_t(&x, true).unwrap();
    let rm = get("bn1.running_mean");
    for (r, b) in rm.iter().zip(&batch_mean) {
        // momentum 0.9: running = 0.1 * 0 + 0.9 * batch mean
        assert!((r - 0.9 * b).abs() < 1e-4, "{r} vs {}", 0.9 * b);
    }
    // Eval mode reads the (now changed) running statistics.
    let after_eval = enc.forward_t(&x, false).unwrap();
    assert!(max_rel_diff(&before_eval, &after_eval) > 1e-3);
}

#[test]
fn seeded_init_is_deterministic_and_kaiming_fan_out() {
    let cfg = EncoderConfig::new(Stem::Cifar, 1.0);
    let (a, _) = build_encoder(&cfg, 42);
    let (b, _) = build_encoder(&cfg, 42);
    let (c, _) = build_encoder(&cfg, 43);
    let w = |vm: &VarMap| {
        params::find(vm, "layer3.0.conv1.weight")
            .unwrap()
            .as_tensor()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap()
    };
    assert_eq!(w(&a), w(&b));
    assert_ne!(w(&a), w(&c));
    // layer3.0.conv1: 256 out channels, 3x3 -> std sqrt(2 / 2304) = 0.02946.
    let v = w(&a);
    let std = (v.iter().map(|x| x * x).sum::<f32>() / v.len() as f32).sqrt();
    assert!((std - 0.02946).abs() < 0.001, "{std}");
}

#[test]
fn weights_round_trip_and_errors_name_the_tensor() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = ModelConfig::tiny(Stem::Imagenet);
    let (vm, m) = build(&cfg, 11);
    params::randomize_batchnorm(&vm, 12).unwrap();
    let full = dir.path().join("model.safetensors");
    let enc_only = dir.path().join("encoder.safetensors");
    params::save(&vm, &full, Part::All).unwrap();
    params::save(&vm, &enc_only, Part::Encoder).unwrap();
    let x = input(2, 32, 13);
    let want = m.forward_t(&x, false).unwrap();

    let (vm2, m2) = build(&cfg, 99);
    params::load(&vm2, &full, Part::All).unwrap();
    let got = m2.forward_t(&x, false).unwrap();
    assert_eq!(max_rel_diff(&got.z, &want.z), 0.0);

    let (vm3, m3) = build(&cfg, 98);
    params::load(&vm3, &enc_only, Part::Encoder).unwrap();
    let got = m3.forward_t(&x, false).unwrap();
    assert_eq!(max_rel_diff(&got.features, &want.features), 0.0);
    let e = params::load(&vm3, &enc_only, Part::All).unwrap_err();
    assert!(
        e.to_string().contains("missing tensor `head.0.weight`"),
        "{e}"
    );

    let wider = ModelConfig {
        encoder: EncoderConfig::new(Stem::Imagenet, 0.125),
        ..cfg.clone()
    };
    let (vm4, _) = build(&wider, 0);
    let e = params::load(&vm4, &enc_only, Part::Encoder).unwrap_err();
    assert!(
        e.to_string().contains("bn1.bias") && e.to_string().contains("shape"),
        "{e}"
    );

    std::fs::write(dir.path().join("junk.safetensors"), b"not safetensors").unwrap();
    let e = params::load(&vm4, &dir.path().join("junk.safetensors"), Part::All).unwrap_err();
    assert!(e.to_string().contains("junk.safetensors"), "{e}");
}

/// Our ImageNet-stem ResNet-18, saved as safetensors and loaded into candle-transformers'
/// independent ResNet-18 (inference-only, torchvision names), gives the same features.
#[test]
fn parity_with_candle_transformers_resnet18() {
    let cfg = EncoderConfig::new(Stem::Imagenet, 1.0);
    let (vm, ours) = build_encoder(&cfg, 2024);
    params::randomize_batchnorm(&vm, 2025).unwrap();
    let bytes = params::to_safetensors(&vm, Part::Encoder).unwrap();
    let vb = VarBuilder::from_buffered_safetensors(bytes, DType::F32, &Device::Cpu).unwrap();
    let theirs = candle_transformers::models::resnet::resnet18_no_final_layer(vb).unwrap();
    for size in [64usize, 224] {
        let x = input(2, size, size as u64);
        let a = ours.forward_t(&x, false).unwrap();
        let b = theirs.forward(&x).unwrap();
        assert_eq!(a.dims(), &[2, 512]);
        let d = max_rel_diff(&a, &b);
        assert!(d < 1e-5, "{size} px: max relative difference {d}");
    }
}
