//! Per-query cost of the allocation-free kNN path ([`Bank::score_into`]): a plain timing loop
//! (no harness, no new dependencies) over a 10,000 x 512 bank (20 MB of f32, the size the device
//! targets: under 1 ms per frame) and a 209 x 512 bank (MVTec's bottle: 209 good images), one
//! thread and two, every score.
//!
//! `cargo bench -p firm-shared --bench knn` (optionally `-- --quick`). Each line is the best of
//! 5 rounds of the mean over many queries, in microseconds per query; queries are distinct
//! random features, so the bank streams from cache or memory as in use (the 20 MB bank does not
//! stay in a 2 MiB L2; whether it stays in L3 depends on what else runs). On a shared 2-core
//! machine the figures are noisy: run it twice and keep the better run.
//!
//! Measured (2-core Zen 4, load average 6-9 from other builds; the better of two runs per line):
//! 10,000 x 512: cos_1 1148 µs, cos_5 1028, kde 796, center 1203 on one thread; 781, 824, 780,
//! 968 on two. 209 x 512: 15-17 µs whatever the score or threads (below the threading threshold).
//!
//! The binary counts heap allocations (a counting wrapper around the system allocator) and prints
//! how many the timed queries made; 0 is the design. With two threads the scan forks through
//! `rayon::join`. Called from outside rayon's pool, a join injects its job through the pool's
//! global queue, which allocates a block now and then, so the bench also runs the queries inside
//! `ThreadPool::install` (the executor's pattern), where a join only pushes onto the worker's deque.

use std::alloc::{GlobalAlloc, Layout, System};
use std::hint::black_box;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use firm_shared::score::{Bank, ScoreFn, ScoreScratch};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// The system allocator, counting allocations.
struct Counting;

static ALLOCATIONS: AtomicUsize = AtomicUsize::new(0);

fn allocations() -> usize {
    ALLOCATIONS.load(Ordering::Relaxed)
}

// SAFETY: forwards to `System` unchanged; the counter does not affect the memory handed out.
#[allow(unsafe_code)]
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: the caller's contract, passed on.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: the caller's contract, passed on.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: the caller's contract, passed on.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let dim = 512;
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    // Made once, as the executor's (its threads allocate here, not per query).
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(2)
        .build()
        .expect("pool");
    println!("kNN score_into, dim {dim}, µs per query (best of 5 rounds)");
    for &n in &[10_000usize, 209] {
        let raw: Vec<f32> = (0..n * dim)
            .map(|_| rng.random_range(0.0f32..1.0).powi(3))
            .collect();
        let bank = Bank::from_raw(&raw, dim).expect("bank");
        let queries: Vec<Vec<f32>> = (0..64)
            .map(|_| {
                (0..dim)
                    .map(|_| rng.random_range(0.0f32..1.0).powi(3))
                    .collect()
            })
            .collect();
        let per_round = match (n, quick) {
            (10_000, false) => 400,
            (10_000, true) => 50,
            (_, false) => 20_000,
            (_, true) => 2_000,
        };
        for threads in [1, 2] {
            for f in [
                ScoreFn::CosK { k: 1 },
                ScoreFn::CosK { k: 5 },
                ScoreFn::Kde,
                ScoreFn::Center,
            ] {
                let mut s = ScoreScratch::new(&bank, 5).with_threads(threads);
                // Warm-up: rayon's global pool, the caches.
                for q in queries.iter().take(8) {
                    black_box(bank.score_into(f, q, &mut s).expect("score"));
                }
                let mut best = f64::INFINITY;
                let before = allocations();
                for _ in 0..5 {
                    let t0 = Instant::now();
                    for q in queries.iter().cycle().take(per_round) {
                        black_box(bank.score_into(f, black_box(q), &mut s).expect("score"));
                    }
                    best = best.min(t0.elapsed().as_secs_f64() / per_round as f64);
                }
                let outside = allocations() - before;
                let before = allocations();
                pool.install(|| {
                    for q in queries.iter().cycle().take(per_round) {
                        black_box(bank.score_into(f, black_box(q), &mut s).expect("score"));
                    }
                });
                let inside = allocations() - before;
                let gbs = (n * dim * 4) as f64 / best / 1e9;
                println!(
                    "{n:>6} x {dim}  threads {threads}  {:<8} {:>8.1} µs  ({gbs:>5.1} GB/s)  \
                     allocations: {outside} in {} queries, {inside} in {per_round} in the pool",
                    f.to_string(),
                    best * 1e6,
                    5 * per_round,
                );
            }
        }
    }
}
