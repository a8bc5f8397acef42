//! BatchNorm folding and int8 weight quantization: how a trained encoder becomes the bundle's
//! weights (DESIGN section 4).
//!
//! * **Folding.** A convolution `W` (no bias) followed by an evaluation-mode BatchNorm with
//!   weight `g`, bias `b`, running mean `m`, running variance `v` and `eps` is one convolution with
//!   bias: per output channel `c`, with `f_c = g_c / sqrt(v_c + eps)`,
//!   `W'_c = f_c * W_c` and `b'_c = b_c - m_c * f_c`. Computed in f64, stored in f32.
//! * **Quantization.** Symmetric, per output channel: `s_c = max |W'_c| / 127`,
//!   `q = clamp(round(W' / s_c), -127, 127)` as `i8`, dequantized as `q * s_c`. -128 is never
//!   used, so the range is symmetric and `-q` always exists. A channel of zeros has `s_c = 0`.
//!   The rounding error of one weight is at most `s_c / 2`.
//! * **Unfolding** (the self-test's reference path): the dequantized folded weights divided by
//!   `f_c` again, so that the *unfolded* float graph (convolution, then the original BatchNorm)
//!   computes the same function as the folded int8 graph. Channels with `f_c = 0` have all-zero
//!   folded weights, so any weight is right there; the original one is kept.
//!
//! * **Activations** ([`ActivationQuant`]): affine u8 per tensor, `q = clamp(round(x / s) + zp,
//!   0, 255)` with ties to even, `x ~ (q - zp) * s`. The range always includes 0, so zero (the
//!   convolutions' padding) is exact. The exporter calibrates `s` and `zp` on the good training
//!   images; executors and the reference path use [`ActivationQuant::quantize`]'s arithmetic.
//!
//! All functions take row-major `[c_out, rest]` weights (a `[c_out, c_in, k, k]` convolution is
//! `rest = c_in * k * k` values per channel).

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// The largest magnitude an int8 weight takes.
pub const INT8_MAX: f32 = 127.0;

/// BatchNorm parameters of one layer, per channel.
#[derive(Debug, Clone, PartialEq)]
pub struct BnParams {
    pub weight: Vec<f32>,
    pub bias: Vec<f32>,
    pub running_mean: Vec<f32>,
    pub running_var: Vec<f32>,
    pub eps: f64,
}

impl BnParams {
    pub fn channels(&self) -> usize {
        self.weight.len()
    }

    /// `f_c = g_c / sqrt(v_c + eps)`, the per-channel factor folding multiplies weights by.
    pub fn factors(&self) -> Vec<f64> {
        self.weight
            .iter()
            .zip(&self.running_var)
            .map(|(&g, &v)| g as f64 / (v as f64 + self.eps).sqrt())
            .collect()
    }

    fn check(&self, c_out: usize) -> Result<()> {
        let lens = [
            self.weight.len(),
            self.bias.len(),
            self.running_mean.len(),
            self.running_var.len(),
        ];
        if lens.iter().any(|&l| l != c_out) {
            return Err(Error::invalid(
                "batch-norm parameters",
                format!("lengths {lens:?} do not all equal the {c_out} output channels"),
            ));
        }
        if self
            .running_var
            .iter()
            .any(|&v| (v as f64 + self.eps).is_nan() || v as f64 + self.eps <= 0.0)
        {
            return Err(Error::invalid(
                "batch-norm parameters",
                "running variance + eps must be positive",
            ));
        }
        Ok(())
    }
}

/// A convolution with its BatchNorm folded in: weight `[c_out, rest]` and bias `[c_out]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Folded {
    pub weight: Vec<f32>,
    pub bias: Vec<f32>,
}

fn per_channel(weight: &[f32], c_out: usize) -> Result<usize> {
    if c_out == 0 || weight.is_empty() || !weight.len().is_multiple_of(c_out) {
        return Err(Error::invalid(
            "weight",
            format!(
                "{} values do not form {c_out} non-empty output channels",
                weight.len()
            ),
        ));
    }
    if weight.iter().any(|w| !w.is_finite()) {
        return Err(Error::invalid("weight", "contains NaN or infinity"));
    }
    Ok(weight.len() / c_out)
}

/// Fold `bn` into the bias-free convolution `weight` (`[c_out, rest]`).
pub fn fold(weight: &[f32], bn: &BnParams) -> Result<Folded> {
    let c_out = bn.channels();
    let rest = per_channel(weight, c_out)?;
    bn.check(c_out)?;
    let f = bn.factors();
    let mut w = Vec::with_capacity(weight.len());
    for (c, row) in weight.chunks(rest).enumerate() {
        w.extend(row.iter().map(|&x| (x as f64 * f[c]) as f32));
    }
    let bias = (0..c_out)
        .map(|c| (bn.bias[c] as f64 - bn.running_mean[c] as f64 * f[c]) as f32)
        .collect();
    Ok(Folded { weight: w, bias })
}

/// Int8 weights with one f32 scale per output channel.
#[derive(Debug, Clone, PartialEq)]
pub struct Int8Weights {
    pub q: Vec<i8>,
    pub scale: Vec<f32>,
}

impl Int8Weights {
    /// `q * s_c` as f32.
    pub fn dequantize(&self) -> Vec<f32> {
        let rest = self.q.len() / self.scale.len().max(1);
        self.q
            .chunks(rest.max(1))
            .zip(&self.scale)
            .flat_map(|(row, &s)| row.iter().map(move |&q| q as f32 * s))
            .collect()
    }
}

/// Symmetric per-output-channel int8 quantization of `weight` (`[c_out, rest]`).
pub fn quantize_int8(weight: &[f32], c_out: usize) -> Result<Int8Weights> {
    let rest = per_channel(weight, c_out)?;
    let mut q = Vec::with_capacity(weight.len());
    let mut scale = Vec::with_capacity(c_out);
    for row in weight.chunks(rest) {
        let max = row.iter().fold(0f32, |m, &x| m.max(x.abs()));
        let s = max / INT8_MAX;
        scale.push(s);
        if s == 0.0 {
            q.extend(std::iter::repeat_n(0i8, rest));
            continue;
        }
        q.extend(
            row.iter()
                .map(|&x| (x / s).round().clamp(-INT8_MAX, INT8_MAX) as i8),
        );
    }
    Ok(Int8Weights { q, scale })
}

/// The reference path's weights: dequantized folded weights `folded` (`[c_out, rest]`) divided by
/// the BatchNorm factors again; `original` supplies the channels whose factor is zero.
pub fn unfold(folded: &[f32], bn: &BnParams, original: &[f32]) -> Result<Vec<f32>> {
    let c_out = bn.channels();
    let rest = per_channel(folded, c_out)?;
    if original.len() != folded.len() {
        return Err(Error::invalid(
            "weight",
            format!(
                "original has {} values, folded {}",
                original.len(),
                folded.len()
            ),
        ));
    }
    let f = bn.factors();
    let mut out = Vec::with_capacity(folded.len());
    for (c, (row, orig)) in folded.chunks(rest).zip(original.chunks(rest)).enumerate() {
        if f[c] == 0.0 {
            out.extend_from_slice(orig);
        } else {
            out.extend(row.iter().map(|&x| (x as f64 / f[c]) as f32));
        }
    }
    Ok(out)
}

/// The accumulator multiplier of an int8 convolution: weight scale times input scale, one f32
/// multiply (every executor and the reference path use this, so their products are identical).
pub fn combined_scale(weight_scale: f32, input_scale: f32) -> f32 {
    weight_scale * input_scale
}

/// Affine u8 quantization of one activation tensor.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct ActivationQuant {
    pub scale: f32,
    pub zero_point: u8,
}

impl ActivationQuant {
    /// The parameters that map `[min, max]` (widened to include 0) onto 0..=255.
    pub fn from_range(min: f32, max: f32) -> Result<Self> {
        if !(min.is_finite() && max.is_finite()) || min > max {
            return Err(Error::invalid(
                "activation range",
                format!("[{min}, {max}] is not a finite interval"),
            ));
        }
        let (lo, hi) = (min.min(0.0), max.max(0.0));
        if hi == lo {
            return Ok(Self {
                scale: 1.0,
                zero_point: 0,
            });
        }
        let scale = (hi - lo) / 255.0;
        let zero_point = (-lo / scale).round().clamp(0.0, 255.0) as u8;
        Ok(Self { scale, zero_point })
    }

    /// `1 / scale` as every quantizer multiplies with it.
    pub fn inv_scale(&self) -> f32 {
        1.0 / self.scale
    }

    /// `clamp(round_ties_even(x * (1 / s)) + zp, 0, 255)`; NaN gives `zp`.
    pub fn quantize(&self, x: f32) -> u8 {
        let r = (x * self.inv_scale()).round_ties_even() + self.zero_point as f32;
        if r.is_nan() {
            self.zero_point
        } else {
            r.clamp(0.0, 255.0) as u8
        }
    }

    /// `(q - zp) * s`.
    pub fn dequantize(&self, q: u8) -> f32 {
        (q as f32 - self.zero_point as f32) * self.scale
    }

    pub fn validate(&self) -> Result<()> {
        if !(self.scale > 0.0 && self.scale.is_finite()) {
            return Err(Error::invalid(
                "activation quantization",
                format!("scale {} is not positive and finite", self.scale),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    fn rng() -> rand_chacha::ChaCha8Rng {
        rand_chacha::ChaCha8Rng::seed_from_u64(7)
    }

    fn bn(c: usize, r: &mut impl Rng) -> BnParams {
        BnParams {
            weight: (0..c).map(|_| r.random_range(-2.0..2.0)).collect(),
            bias: (0..c).map(|_| r.random_range(-1.0..1.0)).collect(),
            running_mean: (0..c).map(|_| r.random_range(-1.0..1.0)).collect(),
            running_var: (0..c).map(|_| r.random_range(0.01..3.0)).collect(),
            eps: 1e-5,
        }
    }

    /// A 1x1 "convolution" on one pixel is a matrix-vector product: conv then BN must equal the
    /// folded layer.
    #[test]
    fn folding_equals_conv_then_batchnorm() {
        let mut r = rng();
        let (c_out, c_in) = (6, 5);
        let w: Vec<f32> = (0..c_out * c_in)
            .map(|_| r.random_range(-1.0..1.0))
            .collect();
        let p = bn(c_out, &mut r);
        let folded = fold(&w, &p).unwrap();
        let x: Vec<f32> = (0..c_in).map(|_| r.random_range(-1.0..1.0)).collect();
        for c in 0..c_out {
            let y: f64 = (0..c_in)
                .map(|i| w[c * c_in + i] as f64 * x[i] as f64)
                .sum();
            let bn_y = (y - p.running_mean[c] as f64) / (p.running_var[c] as f64 + p.eps).sqrt()
                * p.weight[c] as f64
                + p.bias[c] as f64;
            let f_y: f64 = (0..c_in)
                .map(|i| folded.weight[c * c_in + i] as f64 * x[i] as f64)
                .sum::<f64>()
                + folded.bias[c] as f64;
            assert!((bn_y - f_y).abs() < 1e-5, "channel {c}: {bn_y} vs {f_y}");
        }
    }

    #[test]
    fn int8_error_is_at_most_half_a_step_and_the_max_is_exact() {
        let mut r = rng();
        let c_out = 4;
        let w: Vec<f32> = (0..c_out * 27).map(|_| r.random_range(-0.3..0.3)).collect();
        let q = quantize_int8(&w, c_out).unwrap();
        let d = q.dequantize();
        for c in 0..c_out {
            let row = &w[c * 27..(c + 1) * 27];
            let max = row.iter().fold(0f32, |m, &x| m.max(x.abs()));
            assert!((q.scale[c] - max / 127.0).abs() <= f32::EPSILON * max);
            for i in 0..27 {
                let err = (d[c * 27 + i] - row[i]).abs();
                assert!(
                    err <= q.scale[c] * 0.5 + 1e-7,
                    "{err} > {}",
                    q.scale[c] / 2.0
                );
            }
            // The largest weight maps to +-127 exactly.
            assert!(q.q[c * 27..(c + 1) * 27].iter().any(|&v| v.abs() == 127));
        }
        assert!(q.q.iter().all(|&v| v != -128));
    }

    #[test]
    fn zero_channels_and_bad_shapes() {
        let q = quantize_int8(&[0.0, 0.0, 1.0, -0.5], 2).unwrap();
        assert_eq!(q.scale[0], 0.0);
        assert_eq!(q.dequantize()[..2], [0.0, 0.0]);
        assert_eq!(q.q[2..], [127, -64]);
        assert!(quantize_int8(&[1.0, 2.0, 3.0], 2).is_err());
        assert!(quantize_int8(&[f32::NAN, 1.0], 1).is_err());
        let mut p = bn(2, &mut rng());
        p.running_var[1] = -1.0;
        assert!(fold(&[1.0, 2.0], &p).is_err());
    }

    #[test]
    fn activation_quant_keeps_zero_exact_and_rounds_to_even() {
        let q = ActivationQuant::from_range(0.0, 5.1).unwrap();
        assert_eq!(q.zero_point, 0);
        assert_eq!(q.quantize(0.0), 0);
        assert_eq!(q.quantize(5.1), 255);
        assert_eq!(q.quantize(100.0), 255);
        assert_eq!(q.quantize(-1.0), 0);
        assert_eq!(q.quantize(f32::NAN), 0);
        let q = ActivationQuant::from_range(-2.0, 3.1).unwrap();
        assert_eq!(q.dequantize(q.quantize(0.0)), 0.0);
        // Half a step rounds to the even neighbour.
        let h = ActivationQuant {
            scale: 1.0,
            zero_point: 10,
        };
        assert_eq!(h.quantize(0.5), 10);
        assert_eq!(h.quantize(1.5), 12);
        assert_eq!(h.quantize(-0.5), 10);
        // Every value is within half a step after the round trip.
        for i in 0..200 {
            let x = -2.0 + 5.1 * i as f32 / 199.0;
            assert!((q.dequantize(q.quantize(x)) - x).abs() <= q.scale * 0.5 + 1e-6);
        }
        assert!(ActivationQuant::from_range(1.0, 0.0).is_err());
        assert_eq!(ActivationQuant::from_range(0.0, 0.0).unwrap().scale, 1.0);
    }

    #[test]
    fn unfold_inverts_fold_and_keeps_dead_channels() {
        let mut r = rng();
        let (c_out, rest) = (3, 8);
        let w: Vec<f32> = (0..c_out * rest)
            .map(|_| r.random_range(-1.0..1.0))
            .collect();
        let mut p = bn(c_out, &mut r);
        p.weight[2] = 0.0;
        let folded = fold(&w, &p).unwrap();
        assert!(folded.weight[2 * rest..].iter().all(|&x| x == 0.0));
        let back = unfold(&folded.weight, &p, &w).unwrap();
        for (a, b) in back.iter().zip(&w) {
            assert!((a - b).abs() < 1e-5 * b.abs().max(1.0), "{a} vs {b}");
        }
        assert_eq!(back[2 * rest..], w[2 * rest..]);
    }
}
