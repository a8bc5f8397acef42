//! The one test macro every kernel family uses: the kernel under test runs on every ISA this CPU
//! supports ([`super::Isa::supported`]) and is compared with its plain scalar reference, first on
//! hand-picked edge cases (odd sizes, stride 2, padding, channel counts that are not multiples of
//! any SIMD width), then on random cases from a proptest strategy.
//!
//! ```text
//! kernel_tests! {
//!     family: gemm_i8,
//!     case: GemmCase,                 // Debug + Clone
//!     strategy: gemm_case(),          // impl Strategy<Value = GemmCase>
//!     edge: edge_cases(),             // Vec<GemmCase>
//!     check: check_case,              // fn(Isa, &GemmCase) -> Result<(), String>
//! }
//! ```
//!
//! [`CountingAlloc`] lets a benchmark or test binary show that kernel calls allocate nothing.

/// Generates `mod $family { fn edge_cases(); fn random_cases() }` as described above.
#[macro_export]
macro_rules! kernel_tests {
    (family: $family:ident, case: $case:ty, strategy: $strategy:expr, edge: $edge:expr, check: $check:path $(,)?) => {
        #[cfg(test)]
        mod $family {
            #[allow(unused_imports)]
            use super::*;
            use $crate::exec::kernels::Isa;

            #[test]
            fn edge_cases() {
                let cases: Vec<$case> = $edge;
                assert!(!cases.is_empty());
                for isa in Isa::supported() {
                    for c in &cases {
                        if let Err(e) = $check(isa, c) {
                            panic!("{} on {isa}: {e}\ncase: {c:?}", stringify!($family));
                        }
                    }
                }
            }

            proptest::proptest! {
                #![proptest_config(proptest::test_runner::Config { cases: 48, ..Default::default() })]
                #[test]
                fn random_cases(c in $strategy) {
                    for isa in Isa::supported() {
                        if let Err(e) = $check(isa, &c) {
                            return Err(proptest::test_runner::TestCaseError::fail(format!(
                                "{} on {isa}: {e}", stringify!($family)
                            )));
                        }
                    }
                }
            }
        }
    };
}

/// Seconds per call of `f`, the best of 5 rounds of `reps` calls: `(wall, on_cpu)`. `on_cpu`
/// is the CPU time of the calling thread (`CLOCK_THREAD_CPUTIME_ID`, Linux), which leaves out the
/// time other processes held the core: the figure to trust on a busy machine for single-threaded
/// calls (with more threads it counts only the caller's share; `None` off Linux). For the `speed`
/// timing tests.
pub fn time_per_call(reps: usize, mut f: impl FnMut()) -> (f64, Option<f64>) {
    #[cfg(target_os = "linux")]
    fn on_cpu_ns() -> Option<u64> {
        #[repr(C)]
        struct Timespec {
            sec: i64,
            nsec: i64,
        }
        unsafe extern "C" {
            fn clock_gettime(clock: i32, ts: *mut Timespec) -> i32;
        }
        const CLOCK_THREAD_CPUTIME_ID: i32 = 3;
        let mut ts = Timespec { sec: 0, nsec: 0 };
        // SAFETY: glibc's clock_gettime writes one `struct timespec` (two 64-bit fields on the
        // 64-bit Linux targets this project builds for) through the pointer, which is valid.
        let rc = unsafe { clock_gettime(CLOCK_THREAD_CPUTIME_ID, &mut ts) };
        (rc == 0).then(|| ts.sec as u64 * 1_000_000_000 + ts.nsec as u64)
    }
    #[cfg(not(target_os = "linux"))]
    fn on_cpu_ns() -> Option<u64> {
        None
    }
    let reps = reps.max(1);
    f(); // warm-up
    let (mut wall, mut cpu) = (f64::INFINITY, None::<f64>);
    for _ in 0..5 {
        let (t0, c0) = (std::time::Instant::now(), on_cpu_ns());
        for _ in 0..reps {
            f();
        }
        wall = wall.min(t0.elapsed().as_secs_f64() / reps as f64);
        if let (Some(c0), Some(c1)) = (c0, on_cpu_ns()) {
            let c = (c1 - c0) as f64 * 1e-9 / reps as f64;
            cpu = Some(cpu.map_or(c, |b: f64| b.min(c)));
        }
    }
    (wall, cpu)
}

/// `"1.23 ms (cpu 1.01 ms)"` for [`time_per_call`]'s result.
pub fn show_time((wall, cpu): (f64, Option<f64>)) -> String {
    let ms = |t: f64| {
        if t < 1e-3 {
            format!("{:.1} µs", t * 1e6)
        } else {
            format!("{:.3} ms", t * 1e3)
        }
    };
    match cpu {
        Some(c) => format!("{} (on cpu {})", ms(wall), ms(c)),
        None => ms(wall),
    }
}

/// The system allocator, counting allocations: install it with `#[global_allocator]` in a bench
/// or test binary and compare [`CountingAlloc::count`] around a call (all threads count).
#[derive(Debug, Default)]
pub struct CountingAlloc;

static ALLOCATIONS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

impl CountingAlloc {
    /// Allocations so far (alloc, alloc_zeroed and realloc each count one).
    pub fn count() -> usize {
        ALLOCATIONS.load(std::sync::atomic::Ordering::Relaxed)
    }
}

// SAFETY: every method forwards to `System` with the caller's arguments; counting has no effect
// on the memory handed out.
unsafe impl std::alloc::GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: std::alloc::Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        // SAFETY: the caller's contract, forwarded.
        unsafe { std::alloc::System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: std::alloc::Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        // SAFETY: the caller's contract, forwarded.
        unsafe { std::alloc::System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: std::alloc::Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        // SAFETY: the caller's contract, forwarded.
        unsafe { std::alloc::System.realloc(ptr, layout, new_size) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: std::alloc::Layout) {
        // SAFETY: the caller's contract, forwarded.
        unsafe { std::alloc::System.dealloc(ptr, layout) }
    }
}
