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
