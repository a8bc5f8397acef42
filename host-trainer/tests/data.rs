//! Datasets as a user meets them: every bad-input case gets a message naming the path and what was
//! expected; a few corrupt files are skipped and counted unless --strict; formats are converted.

use std::path::{Path, PathBuf};

use host_trainer::data::images::{ImageCache, LoadOptions};
use host_trainer::data::{DataArgs, DataSource, Dataset};
use host_trainer::error::Error;
use image::{DynamicImage, ImageBuffer, Luma, Rgb, Rgba};

fn png(path: &Path, seed: u8) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let img = ImageBuffer::from_fn(24, 20, |x, y| Rgb([seed, (x * 9) as u8, (y * 11) as u8]));
    img.save(path).unwrap();
}

fn mvtec(root: &Path, class: &str, n_train: usize) -> PathBuf {
    let dir = root.join(class);
    for i in 0..n_train {
        png(&dir.join(format!("train/good/{i:03}.png")), i as u8);
    }
    png(&dir.join("test/good/000.png"), 1);
    png(&dir.join("test/crack/000.png"), 2);
    png(&dir.join("test/crack/001.png"), 3);
    png(&dir.join("ground_truth/crack/000_mask.png"), 0);
    dir
}

fn args(f: impl FnOnce(&mut DataArgs)) -> DataArgs {
    let mut a = DataArgs {
        holdout: 0.2,
        ..DataArgs::default()
    };
    f(&mut a);
    a
}

fn open(a: &DataArgs, cwd: &Path) -> Result<Dataset, Error> {
    a.resolve(cwd, 0)?.open(cwd)
}

fn load(ds: &Dataset, strict: bool) -> Result<ImageCache, Error> {
    let opts = LoadOptions {
        strict,
        ..LoadOptions::default()
    };
    ImageCache::load(&ds.train, &ds.unsupported, 64, opts, 2, &ds.train_dir)
}

#[test]
fn mvtec_layout_is_read_with_masks() {
    let tmp = tempfile::tempdir().unwrap();
    mvtec(tmp.path(), "bottle", 5);
    let a = args(|a| {
        a.data = Some(tmp.path().into());
        a.class = Some("bottle".into());
    });
    let ds = open(&a, tmp.path()).unwrap();
    assert_eq!(ds.train.len(), 5);
    assert_eq!(ds.test.len(), 3);
    assert_eq!(ds.test_good(), 1);
    assert_eq!(ds.defect_types(), vec![("crack".to_string(), 2)]);
    let with_mask = ds.test.iter().filter(|t| t.mask.is_some()).count();
    assert_eq!(with_mask, 1, "000 has a mask, 001 does not");
    let cache = load(&ds, false).unwrap();
    assert_eq!(cache.len(), 5);
}

#[test]
fn missing_root_names_it() {
    let tmp = tempfile::tempdir().unwrap();
    let a = args(|a| {
        a.data = Some(tmp.path().join("nope"));
        a.class = Some("bottle".into());
    });
    let e = open(&a, tmp.path()).unwrap_err().to_string();
    assert!(
        e.contains("nope") && e.contains("MVTec-AD style root"),
        "{e}"
    );
}

#[test]
fn unknown_class_lists_the_available_ones() {
    let tmp = tempfile::tempdir().unwrap();
    mvtec(tmp.path(), "bottle", 2);
    mvtec(tmp.path(), "screw", 2);
    let a = args(|a| {
        a.data = Some(tmp.path().into());
        a.class = Some("bottel".into());
    });
    let e = open(&a, tmp.path()).unwrap_err();
    assert_eq!(e.exit_code(), 3);
    let e = e.to_string();
    assert!(
        e.contains("`bottel` not found") && e.contains("available classes: bottle, screw"),
        "{e}"
    );
}

#[test]
fn wrong_layout_says_what_is_expected() {
    let tmp = tempfile::tempdir().unwrap();
    png(&tmp.path().join("bottle/good/000.png"), 0);
    let a = args(|a| {
        a.data = Some(tmp.path().into());
        a.class = Some("bottle".into());
    });
    let e = open(&a, tmp.path()).unwrap_err().to_string();
    assert!(e.contains("train/good") && e.contains("bottle"), "{e}");
}

#[test]
fn empty_training_folder() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(tmp.path().join("bottle/train/good")).unwrap();
    std::fs::write(tmp.path().join("bottle/train/good/notes.txt"), "x").unwrap();
    let a = args(|a| {
        a.data = Some(tmp.path().into());
        a.class = Some("bottle".into());
    });
    let e = open(&a, tmp.path()).unwrap_err().to_string();
    assert!(
        e.contains("no PNG or JPEG images in") && e.contains("train/good"),
        "{e}"
    );
}

#[test]
fn fewer_than_two_training_images() {
    let tmp = tempfile::tempdir().unwrap();
    mvtec(tmp.path(), "bottle", 1);
    let a = args(|a| {
        a.data = Some(tmp.path().into());
        a.class = Some("bottle".into());
    });
    let ds = open(&a, tmp.path()).unwrap();
    let e = load(&ds, false).unwrap_err().to_string();
    assert!(
        e.contains("1 usable training image(s); at least 2 are needed"),
        "{e}"
    );
}

fn folder_with_bad_files(dir: &Path, good: usize) {
    for i in 0..good {
        png(&dir.join(format!("{i:03}.png")), i as u8);
    }
}

#[test]
fn a_few_corrupt_files_are_skipped_unless_strict() {
    let tmp = tempfile::tempdir().unwrap();
    let good = tmp.path().join("good");
    folder_with_bad_files(&good, 12);
    std::fs::write(good.join("zero.png"), b"").unwrap();
    let a = args(|a| {
        a.good = Some(good.clone());
        a.holdout = 0.0;
    });
    let ds = open(&a, tmp.path()).unwrap();
    let cache = load(&ds, false).unwrap();
    assert_eq!(cache.len(), 12, "the zero-byte file is skipped");
    let e = load(&ds, true).unwrap_err().to_string();
    assert!(
        e.contains("zero.png") && e.contains("empty") && e.contains("--strict"),
        "{e}"
    );
}

#[test]
fn truncated_and_corrupt_files_name_the_path() {
    let tmp = tempfile::tempdir().unwrap();
    let good = tmp.path().join("good");
    folder_with_bad_files(&good, 3);
    let full = std::fs::read(good.join("000.png")).unwrap();
    std::fs::write(good.join("trunc.png"), &full[..full.len() / 2]).unwrap();
    let a = args(|a| {
        a.good = Some(good.clone());
        a.holdout = 0.0;
    });
    let ds = open(&a, tmp.path()).unwrap();
    let e = load(&ds, true).unwrap_err().to_string();
    assert!(
        e.contains("trunc.png") && e.contains("corrupt or truncated"),
        "{e}"
    );
    std::fs::remove_file(good.join("trunc.png")).unwrap();
    std::fs::write(good.join("junk.jpg"), b"\xFF\xD8\xFFnot really a jpeg").unwrap();
    let ds = open(&a, tmp.path()).unwrap();
    let e = load(&ds, true).unwrap_err().to_string();
    assert!(e.contains("junk.jpg"), "{e}");
}

#[test]
fn unsupported_formats_are_reported() {
    let tmp = tempfile::tempdir().unwrap();
    let good = tmp.path().join("good");
    folder_with_bad_files(&good, 3);
    ImageBuffer::from_fn(4, 4, |_, _| Rgb([1u8, 2, 3]))
        .save(good.join("scan.bmp"))
        .unwrap_or_else(|_| std::fs::write(good.join("scan.bmp"), b"BM....").unwrap());
    let a = args(|a| {
        a.good = Some(good.clone());
        a.holdout = 0.0;
    });
    let ds = open(&a, tmp.path()).unwrap();
    assert_eq!(ds.unsupported.len(), 1);
    let e = load(&ds, true).unwrap_err().to_string();
    assert!(
        e.contains("scan.bmp") && e.contains("BMP files are not supported; expected PNG or JPEG"),
        "{e}"
    );
}

#[test]
fn many_bad_files_are_an_error_even_without_strict() {
    let tmp = tempfile::tempdir().unwrap();
    let good = tmp.path().join("good");
    folder_with_bad_files(&good, 4);
    for i in 0..3 {
        std::fs::write(good.join(format!("bad{i}.png")), b"\x89PNG\r\n\x1a\nxx").unwrap();
    }
    let a = args(|a| {
        a.good = Some(good.clone());
        a.holdout = 0.0;
    });
    let ds = open(&a, tmp.path()).unwrap();
    let e = load(&ds, false).unwrap_err().to_string();
    assert!(
        e.contains("3 of 7 images could not be used") && e.contains("bad0.png"),
        "{e}"
    );
}

#[test]
fn no_dataset_given_says_what_was_looked_for() {
    let tmp = tempfile::tempdir().unwrap();
    let e = args(|_| {}).resolve(tmp.path(), 0).unwrap_err();
    let msg = e.to_string();
    assert!(
        msg.contains(&tmp.path().join("data/mvtec").display().to_string()),
        "{msg}"
    );
    assert!(msg.contains("--demo") && msg.contains("--data"), "{msg}");
    // With ./data/mvtec present, --data may be omitted but --class is needed.
    mvtec(&tmp.path().join("data/mvtec"), "bottle", 2);
    let e = args(|_| {}).resolve(tmp.path(), 0).unwrap_err().to_string();
    assert!(e.contains("--class"), "{e}");
    let a = args(|a| a.class = Some("bottle".into()));
    assert_eq!(open(&a, tmp.path()).unwrap().train.len(), 2);
}

#[test]
fn greyscale_rgba_and_16_bit_are_converted_and_counted() {
    let tmp = tempfile::tempdir().unwrap();
    let good = tmp.path().join("good");
    std::fs::create_dir_all(&good).unwrap();
    DynamicImage::ImageLuma8(ImageBuffer::from_fn(8, 8, |x, _| Luma([x as u8 * 20])))
        .save(good.join("a_grey.png"))
        .unwrap();
    DynamicImage::ImageRgba8(ImageBuffer::from_fn(8, 8, |_, _| Rgba([9u8, 8, 7, 100])))
        .save(good.join("b_rgba.png"))
        .unwrap();
    DynamicImage::ImageLuma16(ImageBuffer::from_fn(8, 8, |_, _| Luma([65535u16])))
        .save(good.join("c_grey16.png"))
        .unwrap();
    png(&good.join("d_rgb.png"), 5);
    let paths: Vec<PathBuf> = (0..4)
        .map(|i| good.join(["a_grey.png", "b_rgba.png", "c_grey16.png", "d_rgb.png"][i]))
        .collect();
    let loaded =
        host_trainer::data::images::load(&paths, &[], LoadOptions::default(), |img| img).unwrap();
    assert_eq!(loaded.items.len(), 4);
    let counts: Vec<(String, usize)> = loaded.converted.into_iter().collect();
    assert_eq!(
        counts,
        vec![
            ("RGBA 8-bit".to_string(), 1),
            ("grey 16-bit".to_string(), 1),
            ("grey 8-bit".to_string(), 1)
        ]
    );
    assert_eq!(loaded.items[2].get_pixel(0, 0).0, [255, 255, 255]);
}

#[test]
fn plain_folder_holds_out_a_seeded_share() {
    let tmp = tempfile::tempdir().unwrap();
    let good = tmp.path().join("good");
    folder_with_bad_files(&good, 10);
    let bad = tmp.path().join("scratch");
    png(&bad.join("s1.png"), 1);
    let a = args(|a| {
        a.good = Some(good.clone());
        a.test_bad = vec![bad.clone()];
    });
    let ds = open(&a, tmp.path()).unwrap();
    assert_eq!((ds.train.len(), ds.test_good()), (8, 2));
    assert_eq!(ds.defect_types(), vec![("scratch".to_string(), 1)]);
    for t in &ds.test {
        assert!(
            !ds.train.contains(&t.path),
            "held-out images are never trained on"
        );
    }
    let again = open(&a, tmp.path()).unwrap();
    assert_eq!(again.train, ds.train, "same seed, same split");
    let other = a.resolve(tmp.path(), 7).unwrap().open(tmp.path()).unwrap();
    assert_ne!(other.train, ds.train, "another seed, another split");
}

#[test]
fn plain_folder_argument_mistakes() {
    let tmp = tempfile::tempdir().unwrap();
    let good = tmp.path().join("good");
    folder_with_bad_files(&good, 3);
    let e = args(|a| {
        a.good = Some(good.clone());
        a.test_good = Some(good.clone());
    })
    .resolve(tmp.path(), 0)
    .unwrap_err();
    assert_eq!(e.exit_code(), 2);
    assert!(e.to_string().contains("is the training folder"), "{e}");
    let e = args(|a| {
        a.good = Some(good.clone());
        a.class = Some("x".into());
    })
    .resolve(tmp.path(), 0)
    .unwrap_err()
    .to_string();
    assert!(e.contains("--class"), "{e}");
    let e = open(
        &args(|a| a.good = Some(tmp.path().join("missing"))),
        tmp.path(),
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("missing") && e.contains("folder of PNG or JPEG images"),
        "{e}"
    );
    let e = args(|a| {
        a.demo = true;
        a.class = Some("carpet".into());
    })
    .resolve(tmp.path(), 0)
    .unwrap_err()
    .to_string();
    assert!(e.contains("bottle, weave, grid"), "{e}");
}

#[test]
fn demo_writes_once_and_opens_as_mvtec() {
    let tmp = tempfile::tempdir().unwrap();
    let a = args(|a| {
        a.demo = true;
        a.class = Some("grid".into());
    });
    let ds = open(&a, tmp.path()).unwrap();
    assert!(ds.train.len() >= 2 && !ds.defect_types().is_empty());
    assert!(ds.origin.contains("generated demo data"));
    assert_eq!(
        a.resolve(tmp.path(), 0).unwrap(),
        DataSource::Demo {
            class: "grid".into()
        }
    );
    let marker = tmp.path().join("data/demo/grid/.synth-complete");
    let t0 = std::fs::metadata(&marker).unwrap().modified().unwrap();
    open(&a, tmp.path()).unwrap();
    let t1 = std::fs::metadata(&marker).unwrap().modified().unwrap();
    assert_eq!(t0, t1, "the second run reuses the data");
}
