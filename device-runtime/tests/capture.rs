//! Frame sources through the public API only: spec strings -> `open` / `open_with_retry`, as
//! the pipeline uses them. The MVTec test replays ../shared/data/mvtec/bottle/test when present.

use std::path::Path;
use std::time::Instant;

use device_runtime::capture::{
    Backoff, CaptureOptions, DirSource, ErrorKind, FrameSource, SourceSpec, open, open_with_retry,
    synthetic,
};
use image::{Rgb, RgbImage};

#[test]
fn mvtec_test_folder_replays_defect_type_by_defect_type() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/data/mvtec/bottle/test");
    if !root.is_dir() {
        eprintln!("skipped: {} not found", root.display());
        return;
    }
    let opts = CaptureOptions::default();
    let src = DirSource::open(&root, &opts).unwrap();
    let files: Vec<String> = src
        .files()
        .iter()
        .map(|p| p.to_string_lossy().into_owned())
        .collect();
    // 63 defective + 20 good (DESIGN.md section 7).
    assert_eq!(files.len(), 83);
    assert_eq!(files[0], "broken_large/000.png");
    assert_eq!(files.last().unwrap(), "good/019.png");
    let spec: SourceSpec = format!("dir:{}", root.display()).parse().unwrap();
    let mut src = open(&spec, &opts).unwrap();
    let frame = src.next_frame().unwrap();
    assert_eq!(frame.source, "broken_large/000.png");
    assert_eq!(frame.image.dimensions(), (900, 900));
}

#[test]
fn a_replay_with_a_corrupt_file_skips_it_and_ends() {
    let dir = tempfile::tempdir().unwrap();
    for (name, v) in [("good/000.png", 10u8), ("good/002.png", 30)] {
        let path = dir.path().join(name);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        RgbImage::from_pixel(8, 8, Rgb([v; 3])).save(path).unwrap();
    }
    std::fs::write(dir.path().join("good/001.png"), b"not a png").unwrap();
    let spec: SourceSpec = format!("dir:{}", dir.path().display()).parse().unwrap();
    let mut src = open_with_retry(&spec, &CaptureOptions::default(), Backoff::default()).unwrap();
    let a = src.next_frame().unwrap();
    let b = src.next_frame().unwrap();
    assert_eq!((a.source.as_str(), a.seq), ("good/000.png", 0));
    assert_eq!((b.source.as_str(), b.seq), ("good/002.png", 1));
    assert_eq!(src.next_frame().unwrap_err().kind(), ErrorKind::EndOfStream);
    let st = src.status();
    assert_eq!((st.frames, st.bad_frames, st.reconnects), (2, 1, 0));
    assert!(st.last_error.unwrap().contains("001.png"));
}

#[test]
fn synthetic_is_paced_and_tags_its_defects() {
    let opts = CaptureOptions {
        fps: Some(50.0),
        width: 64,
        height: 48,
        defect_every: 2,
        seed: 3,
        ..CaptureOptions::default()
    };
    let mut src = open_with_retry(&SourceSpec::Synthetic, &opts, Backoff::default()).unwrap();
    let t = Instant::now();
    let tags: Vec<String> = (0..5).map(|_| src.next_frame().unwrap().source).collect();
    let ms = t.elapsed().as_secs_f64() * 1e3;
    assert!(
        (79.0..1000.0).contains(&ms),
        "5 frames at 50 fps took {ms:.1} ms"
    );
    let d = synthetic::SOURCE_DEFECT;
    let g = synthetic::SOURCE_GOOD;
    assert_eq!(tags, [g, d, g, d, g]);
}

#[test]
fn v4l_errors_are_clear_without_a_camera() {
    let spec: SourceSpec = "v4l:/dev/video99".parse().unwrap();
    let e = open(&spec, &CaptureOptions::default()).err().unwrap();
    let msg = e.to_string();
    eprintln!("{msg}");
    assert!(msg.contains("/dev/video99"), "{msg}");
    if cfg!(feature = "v4l") {
        assert_eq!(e.kind(), ErrorKind::Disconnected);
    } else {
        assert_eq!(e.kind(), ErrorKind::Fatal);
        assert!(msg.contains("built without the v4l feature"), "{msg}");
    }
}
