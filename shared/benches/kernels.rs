//! Timing of the executor's GEMM kernels ([`gemm_u8i8`], [`gemm_f32`]) on the convolution shapes
//! that matter (ResNet-18 and EfficientNet-Lite0 at 224 px, M = output pixels, N = c_out,
//! K = c_in * kh * kw), on every ISA this CPU supports, with 1 and 2 threads. A plain timing loop
//! (no harness): per cell the best of 5 batches of >= 40 ms, as ms per call and GMAC/s
//! (m * n * k multiply-accumulates per call). The epilogue is a typical convolution's: scale,
//! bias, ReLU6. A counting allocator checks that the calls allocate nothing.
//!
//! ```text
//! cargo bench -p firm-shared --bench kernels               # everything (~2 minutes)
//! cargo bench -p firm-shared --bench kernels -- i8 avx512-vnni   # filters: family, ISA names
//! FIRM_BENCH_SHAPES="784,128,1152;49,512,4608" cargo bench -p firm-shared --bench kernels
//! ```
//!
//! The 2-core Zen 4 of the development machine is shared with other builds: figures are noisy,
//! run it twice and take the better. Results are in the kernels' module headers.

use std::time::{Duration, Instant};

use firm_shared::exec::kernels::gemm_f32::{PackedF32, gemm_f32};
use firm_shared::exec::kernels::gemm_i8::{PackedI8, gemm_u8i8};
use firm_shared::exec::kernels::testing::CountingAlloc;
use firm_shared::exec::kernels::{Clamp, Epilogue, Isa};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

#[global_allocator]
static GLOBAL: CountingAlloc = CountingAlloc;

const SHAPES: [(usize, usize, usize); 22] = [
    // ResNet-18: 3x3 convolutions, 1x1 downsamples, the stem after im2col (k padded).
    (3136, 64, 576),
    (784, 128, 1152),
    (196, 256, 2304),
    (49, 512, 4608),
    (784, 128, 64),
    (196, 256, 128),
    (49, 512, 256),
    (12544, 64, 148),
    // EfficientNet-Lite0 pointwise: project / expand, then the other role.
    (12544, 16, 32),
    (12544, 32, 16),
    (3136, 144, 24),
    (3136, 24, 144),
    (784, 240, 40),
    (784, 40, 240),
    (196, 480, 80),
    (196, 80, 480),
    (196, 672, 112),
    (196, 112, 672),
    (49, 1152, 192),
    (49, 192, 1152),
    (49, 1280, 320),
    (49, 320, 1280),
];

/// Nanoseconds this thread has spent on a CPU (`/proc/thread-self/schedstat`, Linux): unlike
/// the wall clock, it does not count the time other processes hold the core.
fn thread_cpu_ns() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/thread-self/schedstat").ok()?;
    s.split_whitespace().next()?.parse().ok()
}

/// Per call: the best wall-clock seconds of 5 batches of at least 40 ms, the on-CPU seconds of
/// the calling thread over all 5 (a total: the kernel's counter is refreshed at scheduler ticks,
/// so short spans are off by up to a tick; with 2 threads it misses the other thread's share),
/// and the allocations of one call.
struct Timing {
    wall: f64,
    cpu: f64,
    allocs: usize,
}

fn time(mut f: impl FnMut()) -> Timing {
    f();
    let before = CountingAlloc::count();
    f();
    let allocs = CountingAlloc::count() - before;
    let t = Instant::now();
    f();
    let once = t.elapsed().max(Duration::from_micros(1));
    let reps = (Duration::from_millis(40).as_secs_f64() / once.as_secs_f64())
        .ceil()
        .max(1.0) as usize;
    let mut wall = f64::INFINITY;
    let c0 = thread_cpu_ns();
    for _ in 0..5 {
        let t = Instant::now();
        for _ in 0..reps {
            f();
        }
        wall = wall.min(t.elapsed().as_secs_f64() / reps as f64);
    }
    let cpu = match (c0, thread_cpu_ns()) {
        (Some(c0), Some(c1)) => (c1 - c0) as f64 * 1e-9 / (5 * reps) as f64,
        _ => f64::NAN,
    };
    Timing { wall, cpu, allocs }
}

fn print_row(family: &str, (m, n, k): (usize, usize, usize), isa: Isa, t: &[Timing; 2]) {
    let gmac = |s: f64| (m * n * k) as f64 / s / 1e9;
    println!(
        "{family:<4} {m:>6} {n:>5} {k:>5}  {:<12} {:>8.3} {:>7.1} {:>7.1} {:>8.3} {:>7.1} {:>6}",
        isa.name(),
        t[0].wall * 1e3,
        gmac(t[0].wall),
        gmac(t[0].cpu),
        t[1].wall * 1e3,
        gmac(t[1].wall),
        format!("{}/{}", t[0].allocs, t[1].allocs),
    );
}

fn main() {
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let want = |s: &str| args.is_empty() || args.iter().any(|a| a == s);
    let want_family = |f: &str| want(f) || !args.iter().any(|a| a == "i8" || a == "f32");
    let isas: Vec<Isa> = Isa::supported()
        .into_iter()
        .filter(|i| want(i.name()) || !args.iter().any(|a| Isa::ALL.iter().any(|x| x.name() == a)))
        .collect();
    println!(
        "GEMM kernels, best of 5 batches: wall-clock ms per call and GMAC/s with 1 and 2 threads;"
    );
    println!(
        "cpu: GMAC/s per second on a CPU of the one thread (robust when other work shares the"
    );
    println!("cores); allocs: allocations of one call with 1 / 2 threads.");
    println!(
        "{:<4} {:>6} {:>5} {:>5}  {:<12} {:>8} {:>7} {:>7} {:>8} {:>7} {:>6}",
        "", "M", "N", "K", "isa", "ms t=1", "GMAC/s", "cpu", "ms t=2", "GMAC/s", "allocs"
    );
    // FIRM_BENCH_SHAPES="m,n,k;m,n,k" replaces the shape list.
    let shapes: Vec<(usize, usize, usize)> = match std::env::var("FIRM_BENCH_SHAPES") {
        Ok(list) => list
            .split(';')
            .map(|s| {
                let v: Vec<usize> = s
                    .split(',')
                    .map(|x| x.trim().parse().expect("m,n,k"))
                    .collect();
                (v[0], v[1], v[2])
            })
            .collect(),
        Err(_) => SHAPES.to_vec(),
    };
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    for family in ["i8", "f32"] {
        if !want_family(family) {
            continue;
        }
        for &(m, n, k) in &shapes {
            let scale: Vec<f32> = (0..n).map(|_| rng.random_range(1e-4..1e-3)).collect();
            let bias: Vec<f32> = (0..n).map(|_| rng.random_range(-1.0..1.0)).collect();
            let ep = Epilogue {
                scale: Some(&scale),
                ..Epilogue::new(&bias, Clamp::RELU6)
            };
            let mut out = vec![0f32; m * n];
            for &isa in &isas {
                let mut row: [Timing; 2] = std::array::from_fn(|_| Timing {
                    wall: 0.0,
                    cpu: 0.0,
                    allocs: 0,
                });
                if family == "i8" {
                    let w: Vec<i8> = (0..n * k).map(|_| rng.random_range(-127..=127)).collect();
                    let b = PackedI8::new(isa, &w, n, k);
                    let kp = b.k_padded();
                    let a: Vec<u8> = (0..m * kp).map(|_| rng.random()).collect();
                    for (t, threads) in [1, 2].into_iter().enumerate() {
                        row[t] = time(|| gemm_u8i8(&a, kp, m, &b, &ep, &mut out, n, threads));
                    }
                } else {
                    let w: Vec<f32> = (0..n * k).map(|_| rng.random_range(-1.0..1.0)).collect();
                    let b = PackedF32::new(isa, &w, n, k);
                    let a: Vec<f32> = (0..m * k).map(|_| rng.random_range(0.0..1.0)).collect();
                    for (t, threads) in [1, 2].into_iter().enumerate() {
                        row[t] = time(|| gemm_f32(&a, k, m, &b, &ep, &mut out, n, threads));
                    }
                }
                print_row(family, (m, n, k), isa, &row);
                assert_eq!(row[0].allocs, 0, "a one-thread call allocated");
            }
        }
    }
}
