//! Which instruction set a kernel runs with, detected once at run time. Every kernel has a
//! portable path; the others are used only where the CPU reports the features (x86:
//! `is_x86_feature_detected!`; aarch64: `is_aarch64_feature_detected!`, SDOT is `dotprod`).
//! Packed weights are laid out for one ISA, so the choice is made when a bundle loads and kept.

/// An instruction set the kernels are written for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Isa {
    /// Plain Rust, every target.
    Portable,
    /// x86-64 AVX2 + FMA (256-bit).
    Avx2,
    /// x86-64 AVX-512 F + BW + VL (512-bit).
    Avx512,
    /// AVX-512 with VNNI (`vpdpbusd`: u8 x i8 dot products of four).
    Avx512Vnni,
    /// aarch64 Advanced SIMD (128-bit).
    Neon,
    /// aarch64 NEON with the dot-product extension (`sdot`).
    NeonDot,
}

impl Isa {
    /// Every ISA, slowest first (the order of [`Isa::supported`]).
    pub const ALL: [Isa; 6] = [
        Isa::Portable,
        Isa::Avx2,
        Isa::Avx512,
        Isa::Avx512Vnni,
        Isa::Neon,
        Isa::NeonDot,
    ];

    /// Every ISA this CPU can run, `Portable` first and the fastest last.
    pub fn supported() -> Vec<Isa> {
        Self::ALL.into_iter().filter(|i| i.is_supported()).collect()
    }

    /// Whether this CPU can run `self` (allocation-free: kernels assert it on every call path that
    /// executes SIMD instructions; the feature tests are cached by `std`).
    pub fn is_supported(self) -> bool {
        match self {
            Isa::Portable => true,
            #[cfg(target_arch = "x86_64")]
            Isa::Avx2 => {
                std::arch::is_x86_feature_detected!("avx2")
                    && std::arch::is_x86_feature_detected!("fma")
            }
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512 => {
                Isa::Avx2.is_supported()
                    && std::arch::is_x86_feature_detected!("avx512f")
                    && std::arch::is_x86_feature_detected!("avx512bw")
                    && std::arch::is_x86_feature_detected!("avx512vl")
            }
            #[cfg(target_arch = "x86_64")]
            Isa::Avx512Vnni => {
                Isa::Avx512.is_supported() && std::arch::is_x86_feature_detected!("avx512vnni")
            }
            #[cfg(target_arch = "aarch64")]
            Isa::Neon => std::arch::is_aarch64_feature_detected!("neon"),
            #[cfg(target_arch = "aarch64")]
            Isa::NeonDot => {
                std::arch::is_aarch64_feature_detected!("neon")
                    && std::arch::is_aarch64_feature_detected!("dotprod")
            }
            #[allow(unreachable_patterns)]
            _ => false,
        }
    }

    /// The fastest ISA of this CPU; `FIRM_ISA=portable|avx2|avx512|avx512-vnni|neon|neon-dot`
    /// caps it (for comparisons and for testing a slower path on a fast machine).
    pub fn best() -> Isa {
        let all = Self::supported();
        if let Ok(want) = std::env::var("FIRM_ISA")
            && let Some(cap) = all.iter().copied().find(|i| i.name() == want)
        {
            return cap;
        }
        *all.last().expect("portable is always supported")
    }

    pub fn name(self) -> &'static str {
        match self {
            Isa::Portable => "portable",
            Isa::Avx2 => "avx2",
            Isa::Avx512 => "avx512",
            Isa::Avx512Vnni => "avx512-vnni",
            Isa::Neon => "neon",
            Isa::NeonDot => "neon-dot",
        }
    }
}

impl std::fmt::Display for Isa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}
