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
//! 3e-4), batch 32. Weights are random; no data is read. The step runs as `fit` runs it: the
//! encoder's own backward pass ([`firm_shared::model::resnet::ResNetTape`]) after autograd's
//! through the loss. `--autograd` also times the same step with candle's autograd throughout,
//! the two alternating step by step.

// The same allocator as the host-trainer binary, so the figures match what `fit` sees.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::time::Instant;

use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use firm_shared::model::{ResNet18, Stem, params, profile};
use host_trainer::optim::Sgd;

struct Opts {
    stem: Stem,
    res: Vec<usize>,
    batch: Vec<usize>,
    train_res: Vec<usize>,
    train_batch: usize,
    iters: usize,
    /// Also print where a training step's time goes, op by op.
    ops: bool,
    /// Also time the step with candle's autograd through the encoder.
    autograd: bool,
}

fn parse() -> Opts {
    let mut o = Opts {
        stem: Stem::Imagenet,
        res: vec![224, 256],
        batch: vec![1, 8],
        train_res: vec![64, 128],
        train_batch: 32,
        iters: 10,
        ops: false,
        autograd: false,
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
            "--ops" => o.ops = true,
            "--autograd" => o.autograd = true,
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
        // Each phase timed on its own (wall clock): forward + loss, backward, optimizer. With
        // `--autograd` the two ways alternate step by step, so both see the same machine.
        let ways: &[bool] = if o.autograd { &[true, false] } else { &[true] };
        let steps = (o.iters / 3).max(3);
        let mut phases: Vec<[Vec<f64>; 3]> = vec![Default::default(); ways.len()];
        for it in 0..=steps {
            for (phases, &taped) in phases.iter_mut().zip(ways) {
                // The op table counts the taped way's timed steps only (after a warm-up step).
                profile::enable(o.ops && it > 0 && taped);
                let t0 = Instant::now();
                let (features, tape) = if taped {
                    let (f, t) = enc.forward_taped(&x).unwrap();
                    (f, Some(t))
                } else {
                    (enc.forward_t(&x, true).unwrap(), None)
                };
                let loss = features.sqr().unwrap().mean_all().unwrap();
                let t1 = Instant::now();
                let mut grads = loss.backward().unwrap();
                if let Some(tape) = tape {
                    tape.backward(&mut grads).unwrap();
                }
                let t2 = Instant::now();
                opt.step(&grads).unwrap();
                drop(grads);
                let t3 = Instant::now();
                profile::enable(false);
                if it > 0 {
                    for (p, (a, b)) in phases.iter_mut().zip([(t0, t1), (t1, t2), (t2, t3)]) {
                        p.push((b - a).as_secs_f64() * 1e3);
                    }
                }
            }
        }
        let median = |v: &[f64]| {
            let mut v = v.to_vec();
            v.sort_by(f64::total_cmp);
            v[v.len() / 2]
        };
        let b = o.train_batch;
        for (p, &taped) in phases.iter().zip(ways) {
            let totals: Vec<f64> = (0..steps).map(|i| p[0][i] + p[1][i] + p[2][i]).collect();
            let med = median(&totals);
            println!(
                "{:<26} {:<9} {:>5} {:>6} {:>16.1} {:>16.2} {:>12.1}",
                if taped {
                    "train step (fwd+bwd+sgd)"
                } else {
                    "  same, candle autograd"
                },
                stem,
                r,
                b,
                med,
                med / b as f64,
                b as f64 * 1e3 / med
            );
            println!(
                "  phases (median ms): forward + loss {:.1}, backward {:.1}, sgd {:.1}",
                median(&p[0]),
                median(&p[1]),
                median(&p[2])
            );
        }
        if o.ops {
            print_ops(&phases[0], steps);
        }
    }
}

/// Per step: each custom op's time, and what is left of each phase (candle's element-wise ops,
/// autograd's bookkeeping and gradient sums, allocation). `phases` are the timed steps' forward,
/// backward and optimizer times.
fn print_ops(phases: &[Vec<f64>; 3], steps: usize) {
    let rows = profile::take();
    let per_step = |d: std::time::Duration| d.as_secs_f64() * 1e3 / steps as f64;
    let mean = |v: &Vec<f64>| v.iter().sum::<f64>() / v.len().max(1) as f64;
    let total: f64 = phases.iter().map(mean).sum();
    let (mut fwd_ops, mut bwd_ops) = (0.0, 0.0);
    println!(
        "  {:<34} {:>10} {:>8} {:>7}",
        "where a step goes (mean)", "ms/step", "calls", "share"
    );
    for (name, d, calls) in &rows {
        let ms = per_step(*d);
        if name.ends_with("bwd") {
            bwd_ops += ms;
        } else {
            fwd_ops += ms;
        }
        let calls = *calls as f64 / steps as f64;
        println!(
            "  {name:<34} {ms:>10.1} {calls:>8.0} {:>6.1}%",
            100.0 * ms / total
        );
    }
    for (name, ms) in [
        ("rest of forward (candle ops)", mean(&phases[0]) - fwd_ops),
        (
            "rest of backward (candle, autograd)",
            mean(&phases[1]) - bwd_ops,
        ),
        ("sgd", mean(&phases[2])),
    ] {
        println!(
            "  {name:<34} {ms:>10.1} {:>8} {:>6.1}%",
            "",
            100.0 * ms / total
        );
    }
}
