//! ResNet-18 speed on this machine, in the same terms as ../shared/bench/peer_resnet18.py, so the
//! two tables can be put side by side:
//!
//! ```text
//! cargo bench -p host-trainer --bench resnet18                  # ImageNet stem, the default table
//! cargo bench -p host-trainer --bench resnet18 -- --stem cifar  # the reference's stem
//! cargo bench -p host-trainer --bench resnet18 -- --iters 5 --res 224 --batch 1 --train-res 64
//! ```
//!
//! Inference: eval mode (BatchNorm with running statistics, randomised so no layer is a no-op),
//! median over `--iters` runs after warm-up. Training step: forward in train mode, loss =
//! mean(features^2) (as the peer script), backward, PyTorch-style SGD (momentum 0.9, weight decay
//! 3e-4), batch 32. Weights are random; no data is read.

// The same allocator as the host-trainer binary, so the figures match what `fit` sees.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use firm_shared::model::{ResNet18, Stem, params};
use host_trainer::optim::Sgd;

struct Opts {
    stem: Stem,
    res: Vec<usize>,
    batch: Vec<usize>,
    train_res: Vec<usize>,
    train_batch: usize,
    iters: usize,
}

fn parse() -> Opts {
    let mut o = Opts {
        stem: Stem::Imagenet,
        res: vec![224, 256],
        batch: vec![1, 8],
        train_res: vec![64, 128],
        train_batch: 32,
        iters: 10,
    };
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mut i = 0;
    let list = |args: &[String], i: &mut usize| -> Vec<usize> {
        let mut v = Vec::new();
        while *i + 1 < args.len() && !args[*i + 1].starts_with("--") {
            *i += 1;
            v.push(args[*i].parse().expect("a number"));
        }
        v
    };
    while i < args.len() {
        match args[i].as_str() {
            "--stem" => {
                i += 1;
                o.stem = match args[i].as_str() {
                    "cifar" => Stem::Cifar,
                    _ => Stem::Imagenet,
                };
            }
            "--res" => o.res = list(&args, &mut i),
            "--batch" => o.batch = list(&args, &mut i),
            "--train-res" => o.train_res = list(&args, &mut i),
            "--train-batch" => o.train_batch = list(&args, &mut i)[0],
            "--iters" => o.iters = list(&args, &mut i)[0],
            _ => {} // cargo passes --bench
        }
        i += 1;
    }
    o
}

fn median_ms(mut f: impl FnMut(), warmup: usize, iters: usize) -> (f64, f64) {
    for _ in 0..warmup {
        f();
    }
    let mut t: Vec<f64> = (0..iters.max(1))
        .map(|_| {
            let s = Instant::now();
            f();
            s.elapsed().as_secs_f64() * 1e3
        })
        .collect();
    t.sort_by(f64::total_cmp);
    (t[t.len() / 2], t[0])
}

fn main() {
    // The same process settings as the binaries (see firm_shared::process).
    firm_shared::process::tune();
    let o = parse();
    let dev = Device::Cpu;
    let stem = match o.stem {
        Stem::Cifar => "cifar",
        Stem::Imagenet => "imagenet",
    };
    println!(
        "# firm-inspect ResNet-18 (candle 0.11, CPU, {} threads)",
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );
    println!(
        "{:<26} {:<9} {:>5} {:>6} {:>16} {:>16} {:>12}",
        "what", "stem", "res", "batch", "median_ms/batch", "median_ms/image", "images/s"
    );
    let vm = VarMap::new();
    let enc = ResNet18::new(
        &firm_shared::model::ResNetConfig {
            stem: o.stem,
            ..Default::default()
        },
        VarBuilder::from_varmap(&vm, DType::F32, &dev),
    )
    .unwrap();
    params::init_params(&vm, 0).unwrap();
    params::randomize_batchnorm(&vm, 1).unwrap();
    for &r in &o.res {
        for &b in &o.batch {
            let x = Tensor::randn(0f32, 1.0, (b, 3, r, r), &dev).unwrap();
            let (med, _) = median_ms(
                || {
                    enc.forward_t(&x, false).unwrap();
                },
                2,
                o.iters,
            );
            println!(
                "{:<26} {:<9} {:>5} {:>6} {:>16.2} {:>16.2} {:>12.1}",
                "inference (eval)",
                stem,
                r,
                b,
                med,
                med / b as f64,
                b as f64 * 1e3 / med
            );
        }
    }
    let mut opt = Sgd::new(params::trainable_vars(&vm), 0.01, 0.9, 3e-4);
    for &r in &o.train_res {
        let x = Tensor::randn(0f32, 1.0, (o.train_batch, 3, r, r), &dev).unwrap();
        let (med, _) = median_ms(
            || {
                let loss = enc
                    .forward_t(&x, true)
                    .unwrap()
                    .sqr()
                    .unwrap()
                    .mean_all()
                    .unwrap();
                opt.step(&loss.backward().unwrap()).unwrap();
            },
            1,
            (o.iters / 3).max(3),
        );
        let b = o.train_batch;
        println!(
            "{:<26} {:<9} {:>5} {:>6} {:>16.1} {:>16.2} {:>12.1}",
            "train step (fwd+bwd+sgd)",
            stem,
            r,
            b,
            med,
            med / b as f64,
            b as f64 * 1e3 / med
        );
    }
}
