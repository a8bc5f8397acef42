//! An MJPEG frame whose header declares a huge size is a bad frame, refused before its pixels
//! are allocated: checked with a counting `#[global_allocator]` (hence its own test binary) that
//! notes the largest single allocation made on the test's thread.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::time::{Duration, Instant};

use device_runtime::capture::decode::{PixelError, mjpeg_to_rgb};

/// The system allocator, noting per thread the largest single allocation asked for.
struct Counting;

thread_local! {
    static LARGEST: Cell<usize> = const { Cell::new(0) };
}

fn note(size: usize) {
    // try_with: a thread being torn down has no thread-locals left.
    let _ = LARGEST.try_with(|l| l.set(l.get().max(size)));
}

// The workspace denies unsafe code; a global allocator cannot be written without it, so this
// one impl is allowed. SAFETY: every method forwards to `System` unchanged; noting touches only a
// const-initialised thread-local, which never allocates.
#[allow(unsafe_code)]
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note(layout.size());
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note(new_size);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// `f()` and the largest single allocation it made (on this thread).
fn largest_allocation<T>(f: impl FnOnce() -> T) -> (T, usize) {
    LARGEST.with(|l| l.set(0));
    let out = f();
    (out, LARGEST.with(Cell::get))
}

/// A small real JPEG with the frame size in its SOF0 header replaced by `w` x `h`.
fn jpeg_declaring(w: u16, h: u16) -> Vec<u8> {
    let img = image::RgbImage::from_fn(16, 16, |x, y| image::Rgb([x as u8 * 16, y as u8 * 16, 0]));
    let mut jpeg = Vec::new();
    image::codecs::jpeg::JpegEncoder::new(&mut jpeg)
        .encode_image(&img)
        .unwrap();
    // SOF0: FF C0, length (2), precision (1), height (2), width (2).
    let sof = jpeg.windows(2).position(|b| b == [0xff, 0xc0]).unwrap();
    jpeg[sof + 5..sof + 7].copy_from_slice(&h.to_be_bytes());
    jpeg[sof + 7..sof + 9].copy_from_slice(&w.to_be_bytes());
    jpeg
}

#[test]
fn an_mjpeg_frame_declaring_a_huge_size_is_a_bad_frame_without_allocating_it() {
    // 60000 x 60000 (10.8 GB of RGB) and 8000 x 8000 (192 MB: under image's default 512 MiB
    // allocation cap, so decoded without limits it is allocated) on a 640 x 480 stream.
    for (w, h) in [(8000, 8000), (60000, 60000)] {
        let jpeg = jpeg_declaring(w, h);
        let t = Instant::now();
        let (result, largest) = largest_allocation(|| mjpeg_to_rgb(&jpeg, 640, 480));
        assert!(
            largest < 1 << 20,
            "{w}x{h}: allocated {largest} bytes at once"
        );
        let e = result.unwrap_err();
        assert!(
            matches!(&e, PixelError::Mjpeg { reason } if reason.contains(&format!("{w}x{h}"))),
            "{e}"
        );
        assert!(t.elapsed() < Duration::from_secs(1), "{:?}", t.elapsed());
    }
    // The frame itself, at its own size, decodes; an unknown stream size caps at MAX_SIDE.
    let ok = jpeg_declaring(16, 16);
    assert_eq!(mjpeg_to_rgb(&ok, 640, 480).unwrap().dimensions(), (16, 16));
    assert_eq!(mjpeg_to_rgb(&ok, 0, 0).unwrap().dimensions(), (16, 16));
    let e = mjpeg_to_rgb(&jpeg_declaring(60000, 60000), 0, 0).unwrap_err();
    assert!(matches!(e, PixelError::Mjpeg { .. }), "{e}");
}
