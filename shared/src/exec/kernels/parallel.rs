//! Splitting one kernel call over the executor's threads without allocating: the output is a grid
//! of `rows x cols` elements; [`for_each_tile`] cuts it into at most `threads` rectangles (whole
//! multiples of the kernel's row and column blocks, except at the edges) and runs them with
//! `rayon::join`, whose jobs live on the stack. [`SharedOut`] lets the tiles write their disjoint
//! parts of one output slice.

use std::marker::PhantomData;
use std::ops::Range;

/// An output slice shared by tiles that write disjoint elements.
#[derive(Debug)]
pub struct SharedOut<'a, T> {
    ptr: *mut T,
    len: usize,
    _borrow: PhantomData<&'a mut [T]>,
}

// SAFETY: tiles write disjoint elements (the contract of `for_each_tile`'s callers), and the
// borrow keeps the slice alive and unaliased for `'a`.
unsafe impl<T: Send> Send for SharedOut<'_, T> {}
unsafe impl<T: Send> Sync for SharedOut<'_, T> {}

impl<'a, T> SharedOut<'a, T> {
    pub fn new(s: &'a mut [T]) -> Self {
        Self {
            ptr: s.as_mut_ptr(),
            len: s.len(),
            _borrow: PhantomData,
        }
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The base pointer, for kernels that store through raw pointers.
    ///
    /// # Safety
    /// Callers write only inside `0..len`, only elements no other tile writes.
    pub unsafe fn ptr(&self) -> *mut T {
        self.ptr
    }

    /// `len` elements from `start`.
    ///
    /// # Safety
    /// No other tile may access any element of the returned range while it lives.
    #[allow(clippy::mut_from_ref)]
    pub unsafe fn slice(&self, start: usize, len: usize) -> &mut [T] {
        assert!(start + len <= self.len, "{start}+{len} > {}", self.len);
        // SAFETY: in bounds (checked), disjoint from other tiles (the caller's contract).
        unsafe { std::slice::from_raw_parts_mut(self.ptr.add(start), len) }
    }
}

/// Run `f(rows, cols)` over a partition of `0..rows x 0..cols` into at most `threads`
/// rectangles. Cuts fall on multiples of `row_block` / `col_block`; rows are split first (each
/// thread then reads its own part of the left operand), columns when there are fewer row blocks
/// than threads.
pub fn for_each_tile<F>(
    rows: usize,
    cols: usize,
    row_block: usize,
    col_block: usize,
    threads: usize,
    f: &F,
) where
    F: Fn(Range<usize>, Range<usize>) + Sync,
{
    if rows == 0 || cols == 0 {
        return;
    }
    split(
        0..rows,
        0..cols,
        row_block.max(1),
        col_block.max(1),
        threads.max(1),
        f,
    );
}

fn split<F>(r: Range<usize>, c: Range<usize>, rb: usize, cb: usize, threads: usize, f: &F)
where
    F: Fn(Range<usize>, Range<usize>) + Sync,
{
    if threads <= 1 {
        f(r, c);
        return;
    }
    let row_blocks = r.len().div_ceil(rb);
    let col_blocks = c.len().div_ceil(cb);
    let left = threads / 2;
    if row_blocks >= threads || (row_blocks >= 2 && row_blocks >= col_blocks) {
        let at = r.start + (row_blocks * left / threads).max(1) * rb;
        rayon::join(
            || split(r.start..at, c.clone(), rb, cb, left, f),
            || split(at..r.end, c.clone(), rb, cb, threads - left, f),
        );
    } else if col_blocks >= 2 {
        let at = c.start + (col_blocks * left / threads).max(1) * cb;
        rayon::join(
            || split(r.clone(), c.start..at, rb, cb, left, f),
            || split(r.clone(), at..c.end, rb, cb, threads - left, f),
        );
    } else {
        f(r, c);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex;

    #[test]
    fn tiles_cover_the_grid_once_on_block_boundaries() {
        for &(rows, cols, rb, cb, threads) in &[
            (1, 1, 8, 16, 2),
            (7, 100, 8, 16, 2),
            (64, 5, 8, 16, 2),
            (49, 512, 6, 32, 2),
            (100, 100, 4, 4, 3),
            (4, 1280, 8, 16, 4),
            (3000, 64, 8, 16, 1),
        ] {
            let seen = Mutex::new(vec![0u8; rows * cols]);
            let tiles = Mutex::new(0usize);
            for_each_tile(
                rows,
                cols,
                rb,
                cb,
                threads,
                &|r: Range<usize>, c: Range<usize>| {
                    assert!(
                        r.start.is_multiple_of(rb) && c.start.is_multiple_of(cb),
                        "{r:?} {c:?}"
                    );
                    *tiles.lock().unwrap() += 1;
                    let mut s = seen.lock().unwrap();
                    for i in r {
                        for j in c.clone() {
                            s[i * cols + j] += 1;
                        }
                    }
                },
            );
            assert!(seen.into_inner().unwrap().iter().all(|&v| v == 1));
            let t = tiles.into_inner().unwrap();
            assert!(t >= 1 && t <= threads, "{t} tiles for {threads} threads");
        }
    }
}
