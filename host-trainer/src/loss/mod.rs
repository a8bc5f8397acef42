//! Contrastive losses of the FIRM paper and its baselines, on candle tensors (any float dtype,
//! differentiable).
//!
//! Every loss here is one computation, a masked softmax cross-entropy over cosine logits:
//! for anchor `i`, `loss_i = logsumexp_{j allowed}(s_ij) - mean_{j positive}(s_ij)` with
//! `s = anchors . keys^T / tau`, which equals `-mean_{j positive} log softmax(s_i)_j`. The losses
//! differ only in the layout (pairwise N x N or concat 2N x 2N without self) and in which keys are
//! positive ([`LossKind::positive_mask`]):
//!
//! | loss          | layout   | positives of an ID anchor    | positives of an outlier anchor |
//! |---------------|----------|------------------------------|--------------------------------|
//! | `firm`        | pairwise | every ID key (same class)    | its own view 2                 |
//! | `firm-concat` | concat   | every other ID row (same cl.)| its other view                 |
//! | `ntxent`      | pairwise | its own view 2               | its own view 2                 |
//! | `ntxent-2n`   | concat   | its other view (SimCLR)      | its other view                 |
//! | `supcon`      | concat   | every other ID row           | every other outlier row        |
//! | `supcon-star` | concat   | every other ID row           | every row of the same shift    |
//!
//! Stability: the log-sum-exp subtracts the row maximum, and excluded entries are selected away
//! (`where_cond`), never multiplied by zero after a `-inf`, which is what made the reference's early
//! 2N variant return NaN. Positive terms use the raw logits, so no `0 * -inf` can arise.
//! Golden values from the reference code: host-trainer/tests/golden/.

mod labels;

pub use labels::{Layout, SampleLabel};

use candle_core::{D, DType, Result, Tensor};
use serde::{Deserialize, Serialize};

/// The training objectives (`--loss`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum LossKind {
    /// FIRM, pairwise N x N: the paper's experiments.
    Firm,
    /// FIRM, symmetric 2N x 2N (self excluded).
    FirmConcat,
    /// NT-Xent, pairwise N x N (cross-entropy with the diagonal as target).
    #[value(name = "ntxent")]
    #[serde(rename = "ntxent")]
    NtXent,
    /// NT-Xent as SimCLR: 2N x 2N, positive = the other view.
    #[value(name = "ntxent-2n")]
    #[serde(rename = "ntxent-2n")]
    NtXent2n,
    /// SupCon with two classes, ID and outlier (Khosla et al., no tau/base-tau factor).
    #[value(name = "supcon")]
    #[serde(rename = "supcon")]
    SupCon,
    /// SupCon* with one label per shift transformation.
    #[value(name = "supcon-star")]
    #[serde(rename = "supcon-star")]
    SupConStar,
}

/// The command-line name (`firm`, `supcon-star`).
impl std::fmt::Display for LossKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let v = clap::ValueEnum::to_possible_value(self).expect("no loss is skipped");
        f.write_str(v.get_name())
    }
}

impl LossKind {
    pub const ALL: [LossKind; 6] = [
        LossKind::Firm,
        LossKind::FirmConcat,
        LossKind::NtXent,
        LossKind::NtXent2n,
        LossKind::SupCon,
        LossKind::SupConStar,
    ];

    /// Per-anchor losses `[N]` (pairwise) or `[2N]` (concat) for embeddings `z` `[2N, d]` laid out
    /// as `[view 1; view 2]`; rows are expected L2-normalised (the model's output).
    pub fn per_anchor(self, z: &Tensor, labels: &[SampleLabel], tau: f64) -> Result<Tensor> {
        let n = labels.len();
        let (rows, _) = z.dims2()?;
        if n == 0 || rows != 2 * n {
            candle_core::bail!(
                "loss {self:?}: embeddings have {rows} rows; expected 2 x {n} (two views of {n} samples)"
            );
        }
        if !(tau > 0.0 && tau.is_finite()) {
            candle_core::bail!("loss temperature must be positive and finite, got {tau}");
        }
        let mask = self.positive_mask(labels);
        let dtype = z.dtype();
        let dev = z.device();
        match self.layout() {
            Layout::Pairwise => {
                let pos = Tensor::from_vec(mask, (n, n), dev)?.to_dtype(dtype)?;
                masked_nll(&z.narrow(0, 0, n)?, &z.narrow(0, n, n)?, tau, None, &pos)
            }
            Layout::Concat => {
                let two = 2 * n;
                let pos = Tensor::from_vec(mask, (two, two), dev)?.to_dtype(dtype)?;
                let not_self: Vec<u8> = (0..two * two)
                    .map(|k| u8::from(k / two != k % two))
                    .collect();
                let allowed = Tensor::from_vec(not_self, (two, two), dev)?;
                masked_nll(z, z, tau, Some(&allowed), &pos)
            }
        }
    }

    /// Mean over anchors of [`Self::per_anchor`]: the training loss, a scalar.
    pub fn loss(self, z: &Tensor, labels: &[SampleLabel], tau: f64) -> Result<Tensor> {
        self.per_anchor(z, labels, tau)?.mean_all()
    }
}

/// `logsumexp_{allowed}(s_i) - mean_{positive}(s_i)` per anchor row, `s = a . k^T / tau`.
fn masked_nll(
    anchors: &Tensor,
    keys: &Tensor,
    tau: f64,
    allowed: Option<&Tensor>,
    positives: &Tensor,
) -> Result<Tensor> {
    let logits = (anchors.matmul(&keys.t()?)? / tau)?;
    let in_softmax = match allowed {
        Some(allowed) => {
            // A large finite filler rather than -inf: exp() of it is exactly 0 after the max
            // shift, and no infinity can meet a zero anywhere in the forward or backward pass.
            let filler = Tensor::full(-1e30f64, logits.shape(), logits.device())?
                .to_dtype(logits.dtype())?;
            allowed.where_cond(&logits, &filler)?
        }
        None => logits.clone(),
    };
    let row_max = in_softmax.max_keepdim(D::Minus1)?.detach();
    let lse = (in_softmax
        .broadcast_sub(&row_max)?
        .exp()?
        .sum_keepdim(D::Minus1)?
        .log()?
        + row_max)?
        .squeeze(D::Minus1)?;
    let n_pos = positives.sum(D::Minus1)?;
    let pos_mean = (positives * &logits)?.sum(D::Minus1)?.div(&n_pos)?;
    lse - pos_mean
}

/// dtype-independent helper for tests and logs: the loss as f64.
pub fn scalar_f64(t: &Tensor) -> Result<f64> {
    t.to_dtype(DType::F64)?.to_scalar::<f64>()
}
