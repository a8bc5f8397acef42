//! The whole per-frame path allocates nothing after warm-up: `Detector::score_image` on a
//! decoded 640x480 camera frame (test transform, rotation + normalisation of each view, the CPU
//! executor with its int8 kernels on both threads, the kNN scan, the verdict's score; and the
//! patch score's features, nearest rows and map), counted by
//! a global allocator over every thread. Run as the device runs it: inside a rayon pool (joins
//! from a pool's own thread need no allocation; from outside, rayon's global queue allocates a
//! block now and then).
//!
//! Its own test binary with one test: other tests' threads would allocate meanwhile.

use std::sync::atomic::{AtomicUsize, Ordering};

use firm_shared::detect::Detector;
use firm_shared::detect::synthetic::{
    SyntheticSpec, pattern, random_bundle, random_bundle_with_patch,
};
use firm_shared::model::efficientnet::Features;
use firm_shared::model::{EncoderConfig, Stem};
use firm_shared::score::patch::PatchSpec;
use rand::SeedableRng;

struct Counting;

static ALLOCATIONS: AtomicUsize = AtomicUsize::new(0);

// SAFETY: forwards every call to the system allocator unchanged; only counts.
#[allow(unsafe_code)]
unsafe impl std::alloc::GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: std::alloc::Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: the caller's contract, forwarded.
        unsafe { std::alloc::System.alloc(l) }
    }
    unsafe fn alloc_zeroed(&self, l: std::alloc::Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: the caller's contract, forwarded.
        unsafe { std::alloc::System.alloc_zeroed(l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: std::alloc::Layout, n: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: the caller's contract, forwarded.
        unsafe { std::alloc::System.realloc(p, l, n) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: std::alloc::Layout) {
        // SAFETY: the caller's contract, forwarded.
        unsafe { std::alloc::System.dealloc(p, l) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

#[test]
fn scoring_a_frame_allocates_nothing_after_warm_up() {
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(2)
        .build()
        .unwrap();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(1);
    let frames: Vec<_> = (0..3).map(|_| pattern(640, 480, &mut rng)).collect();
    let spec = |encoder, score: &str| SyntheticSpec {
        encoder,
        size: 64,
        score: score.parse().unwrap(),
        int8_activations: true,
        bank: 40,
        seed: 2,
    };
    // Patch scoring too: EfficientNet-Lite0 with a tap finer than the grid (its means taken at
    // the sampled cells), the int8 nearest-row search and the map.
    let lite = spec(EncoderConfig::efficientnet(Features::Stage5), "cos_1");
    let patch = PatchSpec {
        taps: vec!["stage3".into(), "stage2".into(), "stage1".into()],
        bank: 64,
        ..PatchSpec::for_graph(&lite.encoder.graph()).unwrap()
    };
    let bundles = [
        (
            "ResNet-18, cos_1+rot".to_string(),
            random_bundle(&spec(EncoderConfig::new(Stem::Imagenet, 0.25), "cos_1+rot")).unwrap(),
        ),
        (
            "EfficientNet-Lite0, cos_5".to_string(),
            random_bundle(&spec(
                EncoderConfig::efficientnet(Features::Stage5),
                "cos_5",
            ))
            .unwrap(),
        ),
        (
            "EfficientNet-Lite0, patch score".to_string(),
            random_bundle_with_patch(&lite, &patch, true).unwrap(),
        ),
    ];
    for (what, bundle) in bundles {
        let (allocs, int8) = pool.install(|| {
            let mut det = Detector::cpu(&bundle).unwrap();
            let int8 = det.embedder().executor().int8_convs();
            for f in &frames {
                det.score_image(f).unwrap();
            }
            let before = ALLOCATIONS.load(Ordering::SeqCst);
            let mut sum = 0.0;
            for f in frames.iter().cycle().take(12) {
                sum += det.score_image(f).unwrap().distance;
            }
            assert_eq!(det.map().is_some(), what.contains("patch"), "{what}: a map");
            let allocs = ALLOCATIONS.load(Ordering::SeqCst) - before;
            assert!(sum.is_finite());
            (allocs, int8)
        });
        println!("{what}: {allocs} allocations in 12 frames; int8 convolutions {int8:?}");
        assert!(int8.0 > 0, "{what}: the int8 kernels ran");
        assert_eq!(allocs, 0, "{what}: allocations per frame after warm-up");
    }
}
