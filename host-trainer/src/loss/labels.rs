//! Per-sample labels and the positive masks each loss derives from them.
//!
//! A batch of N samples is embedded as `z = [view 1 of samples 0..N; view 2 of samples 0..N]`
//! (`[2N, d]`, sample `i` at rows `i` and `i + N`), the layout of the FIRM reference and of the
//! golden vectors. Pairwise losses use view-1 rows as anchors against the N view-2 rows as keys;
//! 2N ("concat") losses use all 2N rows as anchors and keys, the anchor itself excluded.

use super::LossKind;

/// What a training sample is, in the terms every loss needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SampleLabel {
    /// In-distribution, of ID class `c` (one class in one-class training; several in pkg_01).
    Id(u16),
    /// Synthetic outlier made by shift transformation `k >= 1` (rot90 = 1, rot180 = 2, rot270 = 3;
    /// MVTec: CutPaste/NSA = 1, scar = 2; outlier exposure = 1).
    Outlier(u16),
}

impl SampleLabel {
    pub fn is_id(self) -> bool {
        matches!(self, SampleLabel::Id(_))
    }

    /// From the reference's multiclass encoding (0 = ID, k = k-th shift).
    pub fn from_shift(label: u16) -> Self {
        if label == 0 {
            SampleLabel::Id(0)
        } else {
            SampleLabel::Outlier(label)
        }
    }

    /// From the FIRM package encoding (-1 = outlier, c >= 0 = ID class c); the shift of such an
    /// outlier is unknown and recorded as 1.
    pub fn from_package(label: i64) -> Option<Self> {
        match label {
            -1 => Some(SampleLabel::Outlier(1)),
            c if (0..=u16::MAX as i64).contains(&c) => Some(SampleLabel::Id(c as u16)),
            _ => None,
        }
    }

    /// Reference encodings, for checks and logs: multiclass (0 / k), binary (1 / -1),
    /// SupCon binary (1 / 0), package (c / -1).
    pub fn shift_label(self) -> u16 {
        match self {
            SampleLabel::Id(_) => 0,
            SampleLabel::Outlier(k) => k,
        }
    }
    pub fn bin_label(self) -> i8 {
        if self.is_id() { 1 } else { -1 }
    }
    pub fn supcon_binary_label(self) -> u8 {
        u8::from(self.is_id())
    }
    pub fn package_label(self) -> i64 {
        match self {
            SampleLabel::Id(c) => c as i64,
            SampleLabel::Outlier(_) => -1,
        }
    }
}

/// Anchor/key arrangement of a loss.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// N view-1 anchors x N view-2 keys; every key is in the softmax.
    Pairwise,
    /// 2N anchors x 2N keys; the anchor itself is excluded from the softmax.
    Concat,
}

impl LossKind {
    pub fn layout(self) -> Layout {
        match self {
            LossKind::Firm | LossKind::NtXent => Layout::Pairwise,
            LossKind::FirmConcat | LossKind::NtXent2n | LossKind::SupCon | LossKind::SupConStar => {
                Layout::Concat
            }
        }
    }

    /// Row-major 0/1 positive mask: `[N, N]` for pairwise losses, `[2N, 2N]` for concat ones.
    pub fn positive_mask(self, labels: &[SampleLabel]) -> Vec<u8> {
        let n = labels.len();
        match self.layout() {
            Layout::Pairwise => {
                let mut m = vec![0u8; n * n];
                for i in 0..n {
                    for j in 0..n {
                        m[i * n + j] = u8::from(self.pairwise_positive(labels, i, j));
                    }
                }
                m
            }
            Layout::Concat => {
                let two = 2 * n;
                let mut m = vec![0u8; two * two];
                for a in 0..two {
                    for b in 0..two {
                        if a != b {
                            m[a * two + b] = u8::from(self.concat_positive(labels, a, b));
                        }
                    }
                }
                m
            }
        }
    }

    fn pairwise_positive(self, labels: &[SampleLabel], i: usize, j: usize) -> bool {
        match self {
            // ID anchors: every key of the same ID class (own view included); outliers: own view.
            LossKind::Firm => i == j || same_id_class(labels[i], labels[j]),
            LossKind::NtXent => i == j,
            _ => unreachable!("not a pairwise loss"),
        }
    }

    fn concat_positive(self, labels: &[SampleLabel], a: usize, b: usize) -> bool {
        let n = labels.len();
        let (sa, sb) = (a % n, b % n);
        let (la, lb) = (labels[sa], labels[sb]);
        match self {
            LossKind::FirmConcat => sa == sb || same_id_class(la, lb),
            LossKind::NtXent2n => sa == sb,
            // Two classes: ID and outlier (every outlier a positive of every other: the collapse
            // the paper describes).
            LossKind::SupCon => la.is_id() == lb.is_id(),
            // One class per shift transformation, and per ID class.
            LossKind::SupConStar => la == lb,
            _ => unreachable!("not a concat loss"),
        }
    }
}

fn same_id_class(a: SampleLabel, b: SampleLabel) -> bool {
    matches!((a, b), (SampleLabel::Id(x), SampleLabel::Id(y)) if x == y)
}

#[cfg(test)]
mod tests {
    use super::*;
    use SampleLabel::{Id, Outlier};

    #[test]
    fn firm_pairwise_mask() {
        let l = [Id(0), Id(0), Outlier(1), Outlier(2)];
        let m = LossKind::Firm.positive_mask(&l);
        assert_eq!(
            m,
            vec![1, 1, 0, 0, 1, 1, 0, 0, 0, 0, 1, 0, 0, 0, 0, 1],
            "ID rows see every ID key, outliers only their own view"
        );
    }

    #[test]
    fn concat_masks_exclude_self() {
        let l = [Id(0), Outlier(1), Outlier(1)];
        for kind in [
            LossKind::FirmConcat,
            LossKind::NtXent2n,
            LossKind::SupCon,
            LossKind::SupConStar,
        ] {
            let m = kind.positive_mask(&l);
            assert_eq!(m.len(), 36);
            for a in 0..6 {
                assert_eq!(m[a * 6 + a], 0, "{kind:?}");
                assert_eq!(
                    m[a * 6 + (a + 3) % 6],
                    1,
                    "{kind:?}: other view is positive"
                );
            }
        }
        // SupCon (binary) pairs the two outliers; FIRM concat does not.
        assert_eq!(LossKind::SupCon.positive_mask(&l)[6 + 2], 1);
        assert_eq!(LossKind::FirmConcat.positive_mask(&l)[6 + 2], 0);
    }

    #[test]
    fn encodings() {
        for (l, shift, bin, sc, pkg) in [(Id(0), 0, 1, 1, 0), (Outlier(3), 3, -1, 0, -1)] {
            assert_eq!(
                (
                    l.shift_label(),
                    l.bin_label(),
                    l.supcon_binary_label(),
                    l.package_label()
                ),
                (shift, bin, sc, pkg)
            );
        }
        assert_eq!(SampleLabel::from_shift(2), Outlier(2));
        assert_eq!(SampleLabel::from_package(2), Some(Id(2)));
        assert_eq!(SampleLabel::from_package(-7), None);
    }
}
