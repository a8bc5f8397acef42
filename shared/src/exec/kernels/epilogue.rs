//! The fused epilogue every convolution kernel applies to its accumulators before it stores them
//! (DESIGN section 5): per output channel `j` of output row `i`,
//!
//! ```text
//! y = acc * scale[j] + bias[j]          (scale = 1 when absent: the f32 path)
//! y += residual[i * ld + j]             (when the residual is added before the clamp)
//! y = min(max(y, lo), hi)               (none: (-inf, inf), ReLU: (0, inf), ReLU6: (0, 6))
//! y += residual[i * ld + j]             (when it is added after the clamp)
//! ```
//!
//! For the int8 path `acc` is the exact i32 sum `sum_k a_u8 * w_i8` converted to f32, `scale[j]` is
//! `s_w[j] * s_x` and `bias[j]` already holds the zero-point correction `- scale[j] * zp * colsum[j]`,
//! so every kernel applies the same four steps whatever its precision. [`Epilogue::apply`] is the
//! scalar definition the SIMD kernels are tested against.

/// The clamp of an activation: `(lo, hi)`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Clamp {
    pub lo: f32,
    pub hi: f32,
}

impl Clamp {
    pub const NONE: Clamp = Clamp {
        lo: f32::NEG_INFINITY,
        hi: f32::INFINITY,
    };
    pub const RELU: Clamp = Clamp {
        lo: 0.0,
        hi: f32::INFINITY,
    };
    pub const RELU6: Clamp = Clamp { lo: 0.0, hi: 6.0 };

    #[inline(always)]
    pub fn apply(self, y: f32) -> f32 {
        y.max(self.lo).min(self.hi)
    }
}

/// A residual tensor added in the epilogue: element `(i, j)` is `data[i * ld + j]`.
#[derive(Debug, Clone, Copy)]
pub struct Residual<'a> {
    pub data: &'a [f32],
    pub ld: usize,
    /// True: added before the clamp (ResNet: `relu(conv + shortcut)`); false: after it.
    pub before_clamp: bool,
}

/// What happens to an accumulator between the dot product and the store.
#[derive(Debug, Clone, Copy)]
pub struct Epilogue<'a> {
    /// Per output channel multiplier of the accumulator; `None` means 1.
    pub scale: Option<&'a [f32]>,
    /// Per output channel addend.
    pub bias: &'a [f32],
    pub residual: Option<Residual<'a>>,
    pub clamp: Clamp,
}

impl<'a> Epilogue<'a> {
    /// Bias and clamp only.
    pub fn new(bias: &'a [f32], clamp: Clamp) -> Self {
        Self {
            scale: None,
            bias,
            residual: None,
            clamp,
        }
    }

    /// The scalar definition: output `(i, j)` from its accumulator.
    #[inline(always)]
    pub fn apply(&self, acc: f32, i: usize, j: usize) -> f32 {
        let mut y = match self.scale {
            Some(s) => acc * s[j] + self.bias[j],
            None => acc + self.bias[j],
        };
        match self.residual {
            Some(r) if r.before_clamp => {
                y += r.data[i * r.ld + j];
                self.clamp.apply(y)
            }
            Some(r) => self.clamp.apply(y) + r.data[i * r.ld + j],
            None => self.clamp.apply(y),
        }
    }

    /// Check that every index the epilogue reads for `m` rows and `n` columns exists.
    pub fn check(&self, m: usize, n: usize) {
        assert!(
            self.bias.len() >= n,
            "bias has {} < {n} values",
            self.bias.len()
        );
        if let Some(s) = self.scale {
            assert!(s.len() >= n, "scale has {} < {n} values", s.len());
        }
        if let Some(r) = self.residual
            && m > 0
            && n > 0
        {
            assert!(r.ld >= n, "residual stride {} < {n}", r.ld);
            assert!(
                r.data.len() >= (m - 1) * r.ld + n,
                "residual has {} values for {m} x {n} (stride {})",
                r.data.len(),
                r.ld
            );
        }
    }
}
