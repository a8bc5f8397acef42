//! The per-frame preprocessing path (`FramePreprocessor`) makes no heap allocation once it has
//! seen a frame of the size: test transform, then every rotation normalised in both layouts.
//!
//! Its own test binary because it installs a counting `#[global_allocator]`. Only allocations
//! made on the test's own thread while counting is switched on are counted (the harness and
//! other tests allocate on other threads).

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use firm_shared::preprocess::{FramePreprocessor, PreprocessSpec, ResizeFilter};
use image::RgbImage;

struct Counting;

thread_local! {
    static COUNTING: Cell<bool> = const { Cell::new(false) };
    static COUNT: Cell<usize> = const { Cell::new(0) };
}

fn note() {
    // try_with: a thread being torn down has no thread-locals left; it is not counting.
    if COUNTING.try_with(|c| c.get()).unwrap_or(false) {
        let _ = COUNT.try_with(|n| n.set(n.get() + 1));
    }
}

// The workspace denies unsafe code; a global allocator cannot be written without it, so this
// one impl is allowed. SAFETY: every method forwards to `System` unchanged; counting touches
// only const-initialised thread-locals, which never allocate.
#[allow(unsafe_code)]
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note();
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note();
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note();
        unsafe { System.realloc(ptr, layout, new_size) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

/// Allocations `f` makes on this thread.
fn allocations(f: impl FnOnce()) -> usize {
    COUNT.with(|n| n.set(0));
    COUNTING.with(|c| c.set(true));
    f();
    COUNTING.with(|c| c.set(false));
    COUNT.with(|n| n.get())
}

fn frame(w: u32, h: u32, seed: u32) -> RgbImage {
    RgbImage::from_fn(w, h, |x, y| {
        let v = x.wrapping_mul(31) ^ y.wrapping_mul(17) ^ seed;
        image::Rgb([v as u8, (v >> 3) as u8, (v >> 6) as u8])
    })
}

/// One frame through the whole path, every angle, both layouts; then an image that already went
/// through the test transform (`square`, the detector's other entry point).
fn run(
    pre: &mut FramePreprocessor,
    f: &RgbImage,
    square: &[u8],
    chw: &mut [f32],
    nhwc: &mut [f32],
) {
    let t = pre.test_transform(f).expect("test transform");
    for q in 0..4 {
        t.normalize_into(q, chw);
        t.normalize_nhwc_into(q, nhwc);
    }
    for q in 0..4 {
        pre.normalize_into(square, q, chw);
        pre.normalize_nhwc_into(square, q, nhwc);
    }
}

#[test]
fn no_allocation_after_warm_up() {
    let size = 224u32;
    let square = frame(size, size, 5).into_raw();
    for filter in [
        ResizeFilter::Bilinear,
        ResizeFilter::Bicubic,
        ResizeFilter::Nearest,
    ] {
        let spec = PreprocessSpec {
            filter,
            ..PreprocessSpec::new(size)
        };
        let mut pre = FramePreprocessor::new(&spec).unwrap();
        let mut chw = vec![0f32; pre.input_len()];
        let mut nhwc = vec![0f32; pre.input_len()];
        for (w, h) in [(640, 480), (1920, 1080), (252, 252), (300, 252)] {
            let frames = [frame(w, h, 1), frame(w, h, 2), frame(w, h, 3)];
            // The first frame of a size builds the resize plan.
            run(&mut pre, &frames[0], &square, &mut chw, &mut nhwc);
            let n = allocations(|| {
                for f in &frames {
                    run(&mut pre, f, &square, &mut chw, &mut nhwc);
                }
            });
            assert_eq!(n, 0, "{filter:?} {w}x{h}: {n} allocations after warm-up");
        }
    }
}

#[test]
fn identity_transform_does_not_allocate_or_copy() {
    let spec = PreprocessSpec {
        resize_ratio: 1.0,
        ..PreprocessSpec::new(64)
    };
    let mut pre = FramePreprocessor::new(&spec).unwrap();
    let f = frame(64, 64, 9);
    let mut chw = vec![0f32; pre.input_len()];
    let n = allocations(|| {
        let square = pre.test_transform(&f).unwrap();
        assert_eq!(square.pixels().as_ptr(), f.as_raw().as_ptr());
        square.normalize_into(3, &mut chw);
    });
    assert_eq!(n, 0);
}

#[test]
fn the_counter_counts() {
    let n = allocations(|| {
        std::hint::black_box(vec![1u8; 100]);
    });
    assert_eq!(n, 1);
}
