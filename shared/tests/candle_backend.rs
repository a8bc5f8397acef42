//! The `cuda` backend's code on candle's CPU device: everything but the device itself.
//! - The on-device quantization equals [`ActivationQuant::quantize`] bit for bit, ties included.
//! - [`CudaEmbedder`] passes each random bundle's self-test (both backbones, u8 and f32
//!   activations), and its features equal the CPU executor's within the self-test tolerance.

use candle_core::{Device, Tensor};
use firm_shared::detect::Detector;
use firm_shared::detect::cuda::CudaEmbedder;
use firm_shared::detect::synthetic::{SyntheticSpec, random_bundle};
use firm_shared::model::efficientnet::Features;
use firm_shared::model::graph::candle::quantize_centered;
use firm_shared::model::{EncoderConfig, Stem};
use firm_shared::quant::ActivationQuant;
use rand::{Rng, SeedableRng};

#[test]
fn device_quantization_is_the_cpu_one_bit_for_bit() {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
    for (min, max) in [(-1.0f32, 1.0), (0.0, 6.0), (-3.7, 0.2), (-0.001, 250.0)] {
        let q = ActivationQuant::from_range(min, max).unwrap();
        let s = q.scale;
        let mut xs: Vec<f32> = (0..20_000)
            .map(|_| rng.random_range(2.0 * min - 1.0..2.0 * max + 1.0))
            .collect();
        // Exact ties of x / s (x = (k + 0.5) s where that is representable) and their
        // neighbours, both signs, and the clamping edges.
        for k in -300i32..300 {
            let t = (k as f32 + 0.5) * s;
            xs.extend([t, t.next_up(), t.next_down(), k as f32 * s]);
        }
        xs.extend([0.0, -0.0, min, max, f32::MAX, f32::MIN, 1e-30, -1e-30]);
        let got = quantize_centered(
            &Tensor::from_slice(&xs, xs.len(), &Device::Cpu).unwrap(),
            &q,
        )
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
        let mut ties = 0;
        for (&x, &g) in xs.iter().zip(&got) {
            let want = q.quantize(x) as f32 - q.zero_point as f32;
            assert_eq!(
                g, want,
                "x = {x:e} with scale {s:e}, zero point {}",
                q.zero_point
            );
            let y = x * q.inv_scale();
            ties += usize::from(y - y.floor() == 0.5);
        }
        assert!(
            ties > 100,
            "only {ties} exact ties were exercised for scale {s:e}"
        );
    }
}

#[test]
fn the_cuda_backend_code_passes_the_self_test_on_the_cpu_device() {
    for (encoder, int8) in [
        (EncoderConfig::new(Stem::Imagenet, 0.25), true),
        (EncoderConfig::new(Stem::Cifar, 0.125), false),
        (EncoderConfig::efficientnet(Features::Stage5), true),
        (EncoderConfig::efficientnet(Features::Stage5), false),
    ] {
        let what = format!(
            "{} with {} activations",
            encoder.describe(),
            if int8 { "u8" } else { "f32" }
        );
        let bundle = random_bundle(&SyntheticSpec {
            encoder,
            size: 64,
            score: "cos_1".parse().unwrap(),
            int8_activations: int8,
            bank: 16,
            seed: 5,
        })
        .unwrap();
        let e = CudaEmbedder::on(&bundle, Device::Cpu, "cpu".into()).unwrap();
        let mut det = Detector::new(&bundle, e).unwrap();
        let r = det.self_test(&bundle).unwrap();
        assert!(r.passed, "{what}: {r:?}");
        println!(
            "{what}: max embedding error {:e}, max distance error {:e}",
            r.max_embedding_rel_err, r.max_distance_err
        );
    }
}
