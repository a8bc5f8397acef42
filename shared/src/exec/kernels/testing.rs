//! The one test macro every kernel family uses: the kernel under test runs on every ISA this CPU
//! supports ([`super::Isa::supported`]) and is compared with its plain scalar reference, first on
//! hand-picked edge cases (odd sizes, stride 2, padding, channel counts that are not multiples of
//! any SIMD width), then on random cases from a proptest strategy.
//!
//! ```ignore
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
