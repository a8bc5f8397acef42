//! Where each activation lives: offsets into one buffer, assigned once when a bundle loads from
//! the tensors' lifetimes (a tensor is live from the op that writes it to the last op that reads
//! it), so tensors that are never live together share memory. Greedy first fit in write order,
//! aligned to 64 bytes: small arenas keep the working set in cache. What a bundle's executor
//! plans (arenas plus im2col buffers) is `activation_bytes` in `device-runtime bench --json`;
//! measured 2026-12-03 with `device-runtime selfcheck --json`: ResNet-18 at 224 px 6.5 MB with u8
//! activations, 11.4 MB with f32; EfficientNet-Lite0 at 224 px 8.0 MB; bottle's 64 px `cpu`
//! bundle 0.36 MB.

/// Alignment of every region, in elements of 4 bytes (64 bytes: one cache line, one AVX-512
/// vector).
pub const ALIGN: usize = 16;

/// A region of `len` elements, live over the op indices `first..=last` (`first` writes it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Interval {
    pub len: usize,
    pub first: usize,
    pub last: usize,
}

/// Offsets (in elements, multiples of `align`) for `intervals`, and the total length needed.
/// Regions whose lifetimes overlap never overlap in memory.
pub fn assign(intervals: &[Interval], align: usize) -> (Vec<usize>, usize) {
    let align = align.max(1);
    let mut order: Vec<usize> = (0..intervals.len()).collect();
    order.sort_by_key(|&i| (intervals[i].first, std::cmp::Reverse(intervals[i].len)));
    let mut offsets = vec![0usize; intervals.len()];
    let mut placed: Vec<usize> = Vec::new();
    let mut total = 0;
    for i in order {
        let me = intervals[i];
        let len = me.len.div_ceil(align) * align;
        // Regions alive at the same time as `me`, by offset.
        let mut busy: Vec<(usize, usize)> = placed
            .iter()
            .filter(|&&j| intervals[j].first <= me.last && me.first <= intervals[j].last)
            .map(|&j| {
                (
                    offsets[j],
                    offsets[j] + intervals[j].len.div_ceil(align) * align,
                )
            })
            .collect();
        busy.sort_unstable();
        let mut at = 0;
        for (s, e) in busy {
            if at + len <= s {
                break;
            }
            at = at.max(e);
        }
        offsets[i] = at;
        total = total.max(at + len);
        placed.push(i);
    }
    (offsets, total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overlapping_lifetimes_never_share_memory_and_disjoint_ones_do() {
        let iv = [
            Interval {
                len: 100,
                first: 0,
                last: 1,
            },
            Interval {
                len: 50,
                first: 1,
                last: 2,
            },
            Interval {
                len: 100,
                first: 2,
                last: 3,
            },
            Interval {
                len: 10,
                first: 0,
                last: 3,
            },
            Interval {
                len: 30,
                first: 3,
                last: 3,
            },
        ];
        let (off, total) = assign(&iv, 16);
        for a in 0..iv.len() {
            assert_eq!(off[a] % 16, 0);
            for b in 0..a {
                let live = iv[a].first <= iv[b].last && iv[b].first <= iv[a].last;
                let mem = off[a] < off[b] + iv[b].len && off[b] < off[a] + iv[a].len;
                assert!(!(live && mem), "{a} and {b} overlap: {off:?}");
            }
        }
        // Tensor 2 reuses tensor 0's memory (0 is dead when 2 is written).
        assert_eq!(off[2], off[0]);
        assert!(total < iv.iter().map(|i| i.len.div_ceil(16) * 16).sum::<usize>());
    }
}
