//! The k largest values of a stream, with their indices, in storage fixed at construction: the
//! per-query top-k of the kNN scores ([`super::scan`]) allocates nothing.
//!
//! Order: descending by value; among equal values the lower index comes first (and wins the last
//! place), so pushing `values[i]` for `i = 0, 1, ...` keeps exactly the entries of a stable
//! descending sort's first k, and [`TopK::mean`] equals [`super::mean_top_k`] bit for bit (same
//! values, summed in the same descending order, divided by the same k). NaN is never kept.
//!
//! Algorithm: a sorted array of at most k entries; a push compares with the current last entry
//! (one comparison for almost every value of a large bank) and otherwise inserts by shifting,
//! O(k). For the k of FIRM's scores (1 to ~50) this beats a heap.

use super::Real;

/// The `k` best `(value, index)` pairs pushed since the last [`TopK::clear`] / [`TopK::reset`].
#[derive(Debug, Clone)]
pub struct TopK<T = f32> {
    /// Entries `0..len` in order (module header); the rest unused. Never reallocated.
    items: Box<[(T, usize)]>,
    len: usize,
    /// How many are kept, `1..=items.len()`.
    k: usize,
}

impl<T: Real> TopK<T> {
    /// Room for the `k` best entries (the only allocation).
    ///
    /// # Panics
    /// When `k == 0`.
    pub fn new(k: usize) -> Self {
        assert!(k >= 1, "a top-k needs k >= 1");
        Self {
            items: vec![(T::neg_infinity(), 0); k].into_boxed_slice(),
            len: 0,
            k,
        }
    }

    /// The largest `k` [`TopK::reset`] accepts.
    pub fn capacity(&self) -> usize {
        self.items.len()
    }

    /// How many entries are kept.
    pub fn k(&self) -> usize {
        self.k
    }

    /// Empty, keeping the `k` best from now on, without allocating.
    ///
    /// # Panics
    /// Unless `1 <= k <= capacity`.
    pub fn reset(&mut self, k: usize) {
        assert!(
            k >= 1 && k <= self.items.len(),
            "k = {k} for a top-k of capacity {}",
            self.items.len()
        );
        self.k = k;
        self.len = 0;
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    pub fn clear(&mut self) {
        self.len = 0;
    }

    /// Whether `(value, index)` would rank before `(v, i)`.
    #[inline(always)]
    fn beats(value: T, index: usize, (v, i): (T, usize)) -> bool {
        value > v || (value == v && index < i)
    }

    /// Offer one entry; kept when fewer than `k` are held or it beats the last one.
    #[inline]
    pub fn push(&mut self, value: T, index: usize) {
        let k = self.k;
        if self.len == k {
            if !Self::beats(value, index, self.items[k - 1]) {
                return; // the common case: one comparison
            }
        } else if value.is_nan() {
            return;
        } else {
            self.len += 1;
        }
        // Entries 0..len - 1 are the ones kept (the last is dropped or was free); shift those
        // the newcomer beats one place right and put it before them.
        let mut p = self.len - 1;
        while p > 0 && Self::beats(value, index, self.items[p - 1]) {
            self.items[p] = self.items[p - 1];
            p -= 1;
        }
        self.items[p] = (value, index);
    }

    /// The kept entries, best first.
    pub fn as_slice(&self) -> &[(T, usize)] {
        &self.items[..self.len]
    }

    /// The best entry.
    pub fn first(&self) -> Option<(T, usize)> {
        self.as_slice().first().copied()
    }

    /// Mean of the kept values, summed best first; `None` when empty.
    pub fn mean(&self) -> Option<T> {
        if self.len == 0 {
            return None;
        }
        let sum = self.as_slice().iter().map(|&(v, _)| v).sum::<T>();
        Some(sum / T::from(self.len).expect("k"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::score::mean_top_k;
    use proptest::prelude::*;

    /// The reference order: a stable sort by value descending keeps lower indices first.
    fn reference(values: &[f32], k: usize) -> Vec<(f32, usize)> {
        let mut v: Vec<(f32, usize)> = values
            .iter()
            .copied()
            .enumerate()
            .map(|(i, x)| (x, i))
            .collect();
        v.retain(|p| !p.0.is_nan());
        v.sort_by(|a, b| b.0.partial_cmp(&a.0).unwrap());
        v.truncate(k);
        v
    }

    #[test]
    fn keeps_the_best_with_lower_index_on_ties() {
        let mut t = TopK::new(3);
        for (i, &v) in [0.5f32, 0.9, 0.5, 0.9, 0.1, 0.5, f32::NAN]
            .iter()
            .enumerate()
        {
            t.push(v, i);
        }
        assert_eq!(t.as_slice(), &[(0.9, 1), (0.9, 3), (0.5, 0)]);
        // Pushed out of order, ties still go to the lower index.
        let mut t = TopK::new(2);
        for &(v, i) in &[(1.0f32, 7), (1.0, 3), (1.0, 5), (0.0, 0)] {
            t.push(v, i);
        }
        assert_eq!(t.as_slice(), &[(1.0, 3), (1.0, 5)]);
        t.clear();
        assert!(t.is_empty() && t.mean().is_none());
        t.push(f32::NAN, 0);
        assert!(t.is_empty());
        // A smaller k in the same storage.
        let mut t = TopK::new(4);
        t.reset(1);
        for (i, &v) in [0.2f32, 0.7, 0.7, 0.1].iter().enumerate() {
            t.push(v, i);
        }
        assert_eq!((t.k(), t.as_slice()), (1, &[(0.7, 1)][..]));
    }

    proptest! {
        #[test]
        fn matches_a_stable_sort_and_mean_top_k(
            raw in proptest::collection::vec(0u8..12, 1..300),
            k in 1usize..20,
        ) {
            // Few distinct values: many ties.
            let values: Vec<f32> = raw.iter().map(|&r| r as f32 / 7.0 - 0.5).collect();
            let mut t = TopK::new(k + 3);
            t.reset(k);
            for (i, &v) in values.iter().enumerate() {
                t.push(v, i);
            }
            let want = reference(&values, k);
            prop_assert_eq!(t.as_slice(), &want[..]);
            prop_assert_eq!(t.mean().unwrap().to_bits(), mean_top_k(&values, k).unwrap().to_bits());
        }
    }
}
