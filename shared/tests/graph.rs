//! Each backbone's emitted graph computes its trainable model: for ResNet-18 (both stems, widths
//! that are and are not multiples of 8) and EfficientNet-Lite0 (every feature output), with
//! random weights and BatchNorm statistics,
//! - the graph names exactly the model's convolutions, and each BatchNorm it folds exists;
//! - the graph run unfolded (convolution, then BatchNorm) equals the model in evaluation mode;
//! - folded in f32 it equals the model; with int8 weights it stays close;
//! - the graph survives a JSON round trip (it travels in the manifest).

use std::collections::BTreeSet;

use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use firm_shared::bundle::EncoderWeights;
use firm_shared::model::efficientnet::Features;
use firm_shared::model::graph::Graph;
use firm_shared::model::graph::candle::CandleGraph;
use firm_shared::model::{Encoder, EncoderConfig, Stem, params};
use rand::{Rng, SeedableRng};

fn input(b: usize, size: usize, seed: u64) -> Tensor {
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

fn check(cfg: &EncoderConfig, size: usize, what: &str) {
    let vm = VarMap::new();
    let model = Encoder::new(cfg, VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu)).unwrap();
    params::init_params(&vm, 3).unwrap();
    params::randomize_batchnorm(&vm, 4).unwrap();
    let graph = cfg.graph();
    graph.validate().unwrap();
    assert_eq!(graph.feature_dim().unwrap(), cfg.feature_dim(), "{what}");
    let json = serde_json::to_string(&graph).unwrap();
    assert_eq!(
        serde_json::from_str::<Graph>(&json).unwrap(),
        graph,
        "{what}"
    );

    // The graph's convolutions are exactly the model's.
    let vars: BTreeSet<String> = params::sorted_vars(&vm)
        .into_iter()
        .map(|(n, _)| n)
        .collect();
    let model_convs: BTreeSet<String> = params::sorted_vars(&vm)
        .into_iter()
        .filter(|(n, v)| v.rank() == 4 && n.ends_with(".weight"))
        .map(|(n, _)| n.trim_end_matches(".weight").to_string())
        .collect();
    let graph_convs: BTreeSet<String> = graph.convs().map(|c| c.name.clone()).collect();
    assert_eq!(graph_convs, model_convs, "{what}");
    for c in graph.convs() {
        for p in ["weight", "bias", "running_mean", "running_var"] {
            assert!(
                vars.contains(&format!("{}.{p}", c.fold.bn)),
                "{what}: {} {p}",
                c.fold.bn
            );
        }
    }

    let get = |name: &str| -> firm_shared::Result<Vec<f32>> {
        Ok(params::find(&vm, name)
            .unwrap_or_else(|| panic!("{what}: no {name}"))
            .as_tensor()
            .flatten_all()?
            .to_vec1()?)
    };
    let x = input(2, size, 5);
    let want = model.forward_t(&x, false).unwrap();

    let all: Vec<String> = graph.convs().map(|c| c.name.clone()).collect();
    let (float, floats) = EncoderWeights::fold_and_quantize(&graph, get, &all).unwrap();
    let unfolded: Vec<_> = floats
        .iter()
        .map(|f| (f.conv_weight.clone(), f.bn.clone()))
        .collect();
    let got = CandleGraph::unfolded(&graph, &unfolded)
        .unwrap()
        .forward(&x)
        .unwrap();
    let d = max_rel_diff(&got, &want);
    assert!(d < 1e-5, "{what}: the unfolded graph differs by {d}");

    let folded: Vec<(Vec<f32>, Vec<f32>)> = float
        .layers
        .iter()
        .map(|l| (l.dequantized(), l.bias.clone()))
        .collect();
    let got = CandleGraph::folded(&graph, &folded)
        .unwrap()
        .forward(&x)
        .unwrap();
    let d = max_rel_diff(&got, &want);
    assert!(d < 1e-4, "{what}: the folded f32 graph differs by {d}");

    let (int8, floats8) = EncoderWeights::fold_and_quantize(&graph, get, &[]).unwrap();
    let folded: Vec<(Vec<f32>, Vec<f32>)> = int8
        .layers
        .iter()
        .map(|l| (l.dequantized(), l.bias.clone()))
        .collect();
    let q = CandleGraph::folded(&graph, &folded)
        .unwrap()
        .forward(&x)
        .unwrap();
    let d = max_rel_diff(&q, &want);
    assert!(d > 1e-7 && d < 5e-2, "{what}: int8 weights differ by {d}");
    // The reference path's unfolding of the int8 weights computes the folded int8 graph.
    let r = CandleGraph::unfolded(&graph, &int8.unfolded(&floats8).unwrap())
        .unwrap()
        .forward(&x)
        .unwrap();
    let d = max_rel_diff(&r, &q);
    assert!(
        d < 1e-4,
        "{what}: unfolded int8 differs from folded int8 by {d}"
    );
}

#[test]
fn resnet18_graphs_compute_the_trainable_model() {
    for stem in [Stem::Cifar, Stem::Imagenet] {
        for width in [0.125, 0.3] {
            check(
                &EncoderConfig::new(stem, width),
                32,
                &format!("{stem} width {width}"),
            );
        }
    }
    // Odd input size, ImageNet stem.
    check(
        &EncoderConfig::new(Stem::Imagenet, 0.125),
        45,
        "imagenet 45 px",
    );
}

#[test]
fn efficientnet_lite0_graphs_compute_the_trainable_model() {
    for f in [
        Features::Head,
        Features::Stage5,
        Features::Stage6,
        Features::Stage7,
    ] {
        check(&EncoderConfig::efficientnet(f), 64, &format!("{f:?}"));
    }
}

#[test]
fn graphs_have_the_expected_structure() {
    let r = EncoderConfig::new(Stem::Imagenet, 1.0).graph();
    assert_eq!(r.convs().count(), 20);
    assert_eq!(r.convs().filter(|c| c.residual.is_some()).count(), 8);
    // torchvision's ResNet-18 at 224 px: 1.81 GMAC (convolutions).
    let macs = r.macs(224, 224).unwrap() as f64 / 1e9;
    assert!((macs - 1.814).abs() < 0.01, "{macs}");
    let taps: Vec<&str> = r.taps.iter().map(|t| t.name.as_str()).collect();
    assert_eq!(taps, ["stem", "layer1", "layer2", "layer3", "layer4"]);
    let s = r.shapes(224, 224).unwrap();
    let l3 = s[r.tap("layer3").unwrap()];
    assert_eq!((l3.c, l3.h, l3.w), (256, 14, 14));

    let e = EncoderConfig::efficientnet(Features::Head).graph();
    // Stem, 16 depthwise, 16 project, 15 expand, head.
    assert_eq!(e.convs().count(), 49);
    assert_eq!(e.convs().filter(|c| c.is_depthwise()).count(), 16);
    let macs = e.macs(224, 224).unwrap() as f64 / 1e9;
    // EfficientNet-Lite0: about 0.39 GMAC at 224 px.
    assert!((0.37..0.41).contains(&macs), "{macs}");
    assert_eq!(e.feature_dim().unwrap(), 1280);
    assert!(e.tap("stage5").is_some() && e.tap("head").is_some());
    // Inside the blocks: block 3 (stage3's first) expands stage2's 24 channels to 144 at
    // stride 4; block 5 (stage4's first) expands stage3's 40 to 240 at stride 8; block 0 has
    // no expansion; block 15's depthwise runs at stride 32.
    let s = e.shapes(224, 224).unwrap();
    let shape = |n: &str| {
        let t = s[e.tap(n).unwrap_or_else(|| panic!("tap {n}"))];
        (t.c, t.h, t.w)
    };
    assert_eq!(shape("block3.expand"), (144, 56, 56));
    assert_eq!(shape("block5.expand"), (240, 28, 28));
    assert_eq!(shape("block15.dw"), (1152, 7, 7));
    assert!(e.tap("block0.expand").is_none() && e.tap("block0.dw").is_some());
    assert_eq!(e.taps.len(), 1 + 7 + 1 + 15 + 16);
}

/// Both backbones pad every window by `k / 2` with odd `k`, so a stride-`s` tap's cell `i` is
/// centred on input pixel `s * i`: what the patch map's placement relies on.
#[test]
fn taps_are_centred_on_their_strides_multiples() {
    for (g, taps) in [
        (
            EncoderConfig::new(Stem::Imagenet, 1.0).graph(),
            &[
                ("stem", 4.0),
                ("layer1", 4.0),
                ("layer2", 8.0),
                ("layer3", 16.0),
            ][..],
        ),
        (
            EncoderConfig::efficientnet(Features::Head).graph(),
            &[
                ("stage2", 4.0),
                ("stage3", 8.0),
                ("block3.expand", 4.0),
                ("block5.expand", 8.0),
                ("block5.dw", 16.0),
                ("stage5", 16.0),
            ][..],
        ),
    ] {
        let p = g.placements();
        for &(name, stride) in taps {
            let t = p[g.tap(name).unwrap()];
            assert_eq!((t.stride, t.offset), (stride, 0.0), "{name}");
        }
    }
}

/// With u8 activations (ranges from the tensors themselves) the int8 graph stays close to the
/// f32 one.
#[test]
fn int8_activations_stay_close_to_f32() {
    use firm_shared::quant::ActivationQuant;
    for (cfg, size) in [
        (EncoderConfig::new(Stem::Imagenet, 0.0625), 16),
        (EncoderConfig::new(Stem::Imagenet, 0.25), 64),
        (EncoderConfig::efficientnet(Features::Stage5), 64),
    ] {
        let vm = VarMap::new();
        Encoder::new(&cfg, VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu)).unwrap();
        params::init_params(&vm, 3).unwrap();
        params::randomize_batchnorm(&vm, 4).unwrap();
        let graph = cfg.graph();
        let get = |name: &str| -> firm_shared::Result<Vec<f32>> {
            Ok(params::find(&vm, name)
                .unwrap()
                .as_tensor()
                .flatten_all()?
                .to_vec1()?)
        };
        let (w, floats) = EncoderWeights::fold_and_quantize(&graph, get, &[]).unwrap();
        let folded: Vec<(Vec<f32>, Vec<f32>)> = w
            .layers
            .iter()
            .map(|l| (l.dequantized(), l.bias.clone()))
            .collect();
        let f = CandleGraph::folded(&graph, &folded).unwrap();
        let x = input(4, size, 9);
        let ts = w.int8_inputs(&graph);
        let q: std::collections::BTreeMap<_, _> = ts
            .iter()
            .zip(f.forward_tensors(&x, &ts).unwrap())
            .map(|(&t, v)| {
                let lo = v.min_all().unwrap().to_scalar::<f32>().unwrap();
                let hi = v.max_all().unwrap().to_scalar::<f32>().unwrap();
                (t, ActivationQuant::from_range(lo, hi).unwrap())
            })
            .collect();
        let a = CandleGraph::bundle(&graph, &w, &q)
            .unwrap()
            .forward(&x)
            .unwrap();
        let plain = f.forward(&x).unwrap();
        let unfolded = CandleGraph::unfolded(&graph, &w.unfolded(&floats).unwrap())
            .unwrap()
            .forward(&x)
            .unwrap();
        let dq = max_rel_diff(&a, &plain);
        let du = max_rel_diff(&unfolded, &plain);
        println!(
            "{}: u8 activations vs f32 {dq:.2e}; unfolded vs folded f32 {du:.2e}",
            cfg.describe()
        );
        assert!(dq > 1e-6 && dq < 5e-2, "{}: {dq}", cfg.describe());
        assert!(du < 1e-4, "{}: {du}", cfg.describe());
    }
}

/// Which tensors an int8 executor reads as u8: every dense convolution's input by default; a
/// layer kept in f32 makes its input f32, and its output (an f32 sum in an executor's own order)
/// is never quantized, so everything that depends on it stays f32 too.
#[test]
fn int8_inputs_follow_float_layers() {
    let cfg = EncoderConfig::new(Stem::Imagenet, 0.125);
    let graph = cfg.graph();
    let vm = VarMap::new();
    Encoder::new(&cfg, VarBuilder::from_varmap(&vm, DType::F32, &Device::Cpu)).unwrap();
    params::init_params(&vm, 3).unwrap();
    let get = |name: &str| -> firm_shared::Result<Vec<f32>> {
        Ok(params::find(&vm, name)
            .unwrap()
            .as_tensor()
            .flatten_all()?
            .to_vec1()?)
    };
    let inputs = |float: &[&str]| {
        let float: Vec<String> = float.iter().map(|s| s.to_string()).collect();
        let (w, _) = EncoderWeights::fold_and_quantize(&graph, get, &float).unwrap();
        w.int8_inputs(&graph)
    };
    let dense_inputs: BTreeSet<usize> = graph.convs().map(|c| c.input).collect();
    assert_eq!(
        inputs(&[]),
        dense_inputs.iter().copied().collect::<Vec<_>>()
    );
    // The last convolution in f32: only its own input stays f32.
    let last = graph.convs().last().unwrap();
    let got = inputs(&["layer4.1.conv2"]);
    assert_eq!(got.len(), dense_inputs.len() - 1);
    assert!(!got.contains(&last.input));
    // The stem in f32: its output feeds the residual stream, so nothing is quantized but the
    // image itself... which the stem alone reads, in f32.
    assert!(inputs(&["conv1"]).is_empty());
}
