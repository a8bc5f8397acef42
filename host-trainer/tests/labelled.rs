//! Loaders of labelled classification sets, on small files written here in the published formats
//! (IDX for Fashion-MNIST, the CIFAR binary versions, class folders of PNGs), plus the real
//! Fashion-MNIST when Debian's package is installed.

use std::io::Write;
use std::path::Path;
use std::time::Instant;

use flate2::Compression;
use flate2::write::GzEncoder;
use host_trainer::Error;
use host_trainer::data::labelled::*;
use image::{DynamicImage, GrayImage, Rgb, RgbImage};

// ---------------------------------------------------------------------------------------------
// Fashion-MNIST (IDX)

/// Pixel (x, y) of test image `i`: distinct at every place, so a transposed or shifted read fails.
fn px(i: usize, x: u32, y: u32) -> u8 {
    ((i * 31 + y as usize * 28 + x as usize) % 251) as u8
}

fn idx_images(n: usize) -> Vec<u8> {
    let mut b = vec![0, 0, 8, 3];
    for d in [n as u32, 28, 28] {
        b.extend(d.to_be_bytes());
    }
    for i in 0..n {
        for y in 0..28 {
            for x in 0..28 {
                b.push(px(i, x, y));
            }
        }
    }
    b
}

fn idx_labels(labels: &[u8]) -> Vec<u8> {
    let mut b = vec![0, 0, 8, 1];
    b.extend((labels.len() as u32).to_be_bytes());
    b.extend(labels);
    b
}

fn gz(bytes: &[u8]) -> Vec<u8> {
    let mut e = GzEncoder::new(Vec::new(), Compression::fast());
    e.write_all(bytes).unwrap();
    e.finish().unwrap()
}

const TRAIN_LABELS: [u8; 3] = [3, 0, 9];
const TEST_LABELS: [u8; 2] = [9, 8];

/// The four Fashion-MNIST files in `dir`, gzipped or not.
fn write_fmnist(dir: &Path, gzipped: bool) {
    let files = [
        ("train-images-idx3-ubyte", idx_images(3)),
        ("train-labels-idx1-ubyte", idx_labels(&TRAIN_LABELS)),
        ("t10k-images-idx3-ubyte", idx_images(2)),
        ("t10k-labels-idx1-ubyte", idx_labels(&TEST_LABELS)),
    ];
    for (name, bytes) in files {
        write_idx(dir, name, &bytes, gzipped);
    }
}

fn write_idx(dir: &Path, stem: &str, bytes: &[u8], gzipped: bool) {
    if gzipped {
        std::fs::write(dir.join(format!("{stem}.gz")), gz(bytes)).unwrap();
    } else {
        std::fs::write(dir.join(stem), bytes).unwrap();
    }
}

fn check_fmnist(s: &Splits) {
    for (set, labels) in [(&s.train, &TRAIN_LABELS[..]), (&s.test, &TEST_LABELS[..])] {
        assert_eq!(set.class_names, FASHION_MNIST_CLASSES);
        assert_eq!(
            set.labels,
            labels.iter().map(|&l| l as u16).collect::<Vec<_>>()
        );
        assert_eq!(set.images.len(), labels.len());
        for (i, img) in set.images.iter().enumerate() {
            let DynamicImage::ImageLuma8(g) = img else {
                panic!("image {i} is {:?}, expected Luma8", img.color());
            };
            assert_eq!(g.dimensions(), (28, 28));
            for (x, y) in [(0, 0), (27, 0), (0, 27), (5, 17), (27, 27)] {
                assert_eq!(
                    g.get_pixel(x, y).0[0],
                    px(i, x, y),
                    "image {i} at ({x}, {y})"
                );
            }
        }
    }
}

fn layout_msg(e: Error) -> String {
    assert!(
        matches!(e, Error::Layout { .. }),
        "expected a Layout error, got {e:?}"
    );
    e.to_string()
}

#[test]
fn fmnist_gzipped_idx_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    write_fmnist(dir.path(), true);
    check_fmnist(&fashion_mnist(dir.path()).unwrap());
}

#[test]
fn fmnist_uncompressed_and_mixed_idx() {
    let dir = tempfile::tempdir().unwrap();
    write_fmnist(dir.path(), false);
    check_fmnist(&fashion_mnist(dir.path()).unwrap());
    // A gzipped file wins over a plain one of the same name; both may be mixed.
    write_idx(
        dir.path(),
        "t10k-labels-idx1-ubyte",
        &idx_labels(&TEST_LABELS),
        true,
    );
    std::fs::write(dir.path().join("t10k-labels-idx1-ubyte"), b"junk").unwrap();
    check_fmnist(&fashion_mnist(dir.path()).unwrap());
}

#[test]
fn fmnist_missing_file_names_path_and_package() {
    let dir = tempfile::tempdir().unwrap();
    let e = fashion_mnist(dir.path()).unwrap_err();
    let Error::NotFound { path, .. } = &e else {
        panic!("expected NotFound, got {e:?}")
    };
    assert_eq!(path, &dir.path().join("train-images-idx3-ubyte.gz"));
    let msg = e.to_string();
    assert!(msg.contains(&path.display().to_string()), "{msg}");
    assert!(msg.contains("apt install dataset-fashion-mnist"), "{msg}");
    // Only the last file missing: that one is named.
    write_fmnist(dir.path(), true);
    std::fs::remove_file(dir.path().join("t10k-labels-idx1-ubyte.gz")).unwrap();
    let msg = fashion_mnist(dir.path()).unwrap_err().to_string();
    assert!(
        msg.contains("t10k-labels-idx1-ubyte.gz does not exist"),
        "{msg}"
    );
}

#[test]
fn fmnist_wrong_magic() {
    let dir = tempfile::tempdir().unwrap();
    write_fmnist(dir.path(), true);
    // A labels file where the images belong.
    write_idx(
        dir.path(),
        "train-images-idx3-ubyte",
        &idx_labels(&[1, 2, 3]),
        true,
    );
    let msg = layout_msg(fashion_mnist(dir.path()).unwrap_err());
    assert!(msg.contains("train-images-idx3-ubyte.gz"), "{msg}");
    assert!(
        msg.contains("magic number 0x00000803 at byte 0, found 0x00000801"),
        "{msg}"
    );
}

#[test]
fn fmnist_truncated_or_trailing_bytes() {
    let dir = tempfile::tempdir().unwrap();
    write_fmnist(dir.path(), true);
    let full = idx_images(3);
    write_idx(
        dir.path(),
        "train-images-idx3-ubyte",
        &full[..full.len() - 5],
        true,
    );
    let msg = layout_msg(fashion_mnist(dir.path()).unwrap_err());
    assert!(
        msg.contains("truncated") && msg.contains("5 bytes missing"),
        "{msg}"
    );

    let mut long = full.clone();
    long.extend([0; 3]);
    write_idx(dir.path(), "train-images-idx3-ubyte", &long, true);
    let msg = layout_msg(fashion_mnist(dir.path()).unwrap_err());
    assert!(
        msg.contains(&format!("3 trailing bytes from byte offset {}", full.len())),
        "{msg}"
    );

    // A cut gzip stream.
    let packed = gz(&full);
    let path = dir.path().join("train-images-idx3-ubyte.gz");
    std::fs::write(&path, &packed[..packed.len() / 2]).unwrap();
    let msg = layout_msg(fashion_mnist(dir.path()).unwrap_err());
    assert!(msg.contains("corrupt or truncated gzip data"), "{msg}");
}

#[test]
fn fmnist_count_mismatch() {
    let dir = tempfile::tempdir().unwrap();
    write_fmnist(dir.path(), true);
    write_idx(
        dir.path(),
        "t10k-labels-idx1-ubyte",
        &idx_labels(&[1, 2, 3]),
        true,
    );
    let msg = layout_msg(fashion_mnist(dir.path()).unwrap_err());
    assert!(msg.contains("t10k-labels-idx1-ubyte.gz"), "{msg}");
    assert!(msg.contains("3 labels for the 2 images"), "{msg}");
}

#[test]
fn fmnist_label_out_of_range() {
    let dir = tempfile::tempdir().unwrap();
    write_fmnist(dir.path(), false);
    write_idx(
        dir.path(),
        "train-labels-idx1-ubyte",
        &idx_labels(&[1, 10, 2]),
        false,
    );
    let msg = layout_msg(fashion_mnist(dir.path()).unwrap_err());
    assert!(
        msg.contains("label 10 of item 1 (byte offset 9); expected labels 0-9"),
        "{msg}"
    );
}

/// The real set, where Debian's `dataset-fashion-mnist` is installed.
#[test]
fn fmnist_installed_package() {
    let dir = Path::new(FASHION_MNIST_DIR);
    if !dir.is_dir() {
        println!("skipped: {FASHION_MNIST_DIR} is absent (apt install dataset-fashion-mnist)");
        return;
    }
    let t = Instant::now();
    let s = fashion_mnist(Path::new(FASHION_MNIST_DIR)).unwrap();
    println!("loaded Fashion-MNIST in {:.2?}", t.elapsed());
    assert_eq!(s.train.len(), 60_000);
    assert_eq!(s.test.len(), 10_000);
    assert_eq!(s.train.class_counts(), [6_000; 10]);
    assert_eq!(s.test.class_counts(), [1_000; 10]);
    for img in s.train.images.iter().chain(&s.test.images) {
        assert!(matches!(img, DynamicImage::ImageLuma8(g) if g.dimensions() == (28, 28)));
    }
}

// ---------------------------------------------------------------------------------------------
// CIFAR binary versions

/// A CIFAR record: label bytes, then the R, G, B planes, each filled with `fill` except that
/// pixel (x, y) of plane `dot.0` is `dot.1`.
fn record(labels: &[u8], fill: [u8; 3], dot: Option<(usize, u8, u32, u32)>) -> Vec<u8> {
    let mut r = labels.to_vec();
    for (c, &v) in fill.iter().enumerate() {
        let mut plane = [v; 1024];
        if let Some((dc, dv, x, y)) = dot
            && dc == c
        {
            plane[(y * 32 + x) as usize] = dv;
        }
        r.extend(plane);
    }
    r
}

/// Red record, then a black one with a green pixel at (5, 2).
fn cifar_records(labels: [&[u8]; 2]) -> Vec<u8> {
    let mut b = record(labels[0], [255, 0, 0], None);
    b.extend(record(labels[1], [0, 0, 0], Some((1, 77, 5, 2))));
    b
}

fn check_cifar_pixels(images: &[DynamicImage]) {
    let rgb: Vec<&RgbImage> = images
        .iter()
        .map(|i| match i {
            DynamicImage::ImageRgb8(i) => i,
            other => panic!("expected Rgb8, got {:?}", other.color()),
        })
        .collect();
    assert_eq!(rgb[0].dimensions(), (32, 32));
    assert!(
        rgb[0].pixels().all(|p| p.0 == [255, 0, 0]),
        "R plane must decode to red"
    );
    assert_eq!(rgb[1].get_pixel(5, 2).0, [0, 77, 0]);
    assert_eq!(
        rgb[1].get_pixel(2, 5).0,
        [0, 0, 0],
        "row-major: (x, y), not (y, x)"
    );
    assert_eq!(rgb[1].pixels().filter(|p| p.0 != [0, 0, 0]).count(), 1);
}

fn write_cifar10_bin(dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    for i in 1..=5u8 {
        let bytes = cifar_records([&[i], &[9]]);
        std::fs::write(dir.join(format!("data_batch_{i}.bin")), bytes).unwrap();
    }
    std::fs::write(dir.join("test_batch.bin"), cifar_records([&[0], &[7]])).unwrap();
}

#[test]
fn cifar10_binary_planes_and_labels() {
    let dir = tempfile::tempdir().unwrap();
    write_cifar10_bin(dir.path());
    let s = cifar10(dir.path()).unwrap();
    assert_eq!(s.train.labels, [1, 9, 2, 9, 3, 9, 4, 9, 5, 9]);
    assert_eq!(s.test.labels, [0, 7]);
    assert_eq!(s.train.class_names, CIFAR10_CLASSES);
    assert_eq!(s.test.class_names[0], "airplane");
    assert_eq!(s.test.class_names[9], "truck");
    check_cifar_pixels(&s.train.images[..2]);
    check_cifar_pixels(&s.test.images);
}

#[test]
fn cifar10_binary_meta_names_and_tar_folder() {
    let root = tempfile::tempdir().unwrap();
    let bin = root.path().join("cifar-10-batches-bin");
    write_cifar10_bin(&bin);
    let names = "Plane\nCar\nbird\ncat\ndeer\ndog\nfrog\nhorse\nship\nLorry Truck\n\n\n";
    std::fs::write(bin.join("batches.meta.txt"), names).unwrap();
    // The folder holding the unpacked tarball works as well as the tarball's folder.
    let s = cifar10(root.path()).unwrap();
    assert_eq!(s.test.class_names[0], "plane");
    assert_eq!(s.test.class_names[1], "car");
    assert_eq!(s.test.class_names[9], "lorry_truck");
    assert_eq!(s.train.len(), 10);

    std::fs::write(bin.join("batches.meta.txt"), "a\nb\n").unwrap();
    let msg = layout_msg(cifar10(&bin).unwrap_err());
    assert!(
        msg.contains("10 class names, one per line; found 2"),
        "{msg}"
    );
}

#[test]
fn cifar10_binary_errors() {
    let dir = tempfile::tempdir().unwrap();
    write_cifar10_bin(dir.path());
    let batch = dir.path().join("data_batch_2.bin");
    let mut bytes = cifar_records([&[0], &[1]]);
    bytes.truncate(bytes.len() - 1);
    std::fs::write(&batch, &bytes).unwrap();
    let msg = layout_msg(cifar10(dir.path()).unwrap_err());
    assert!(
        msg.contains("data_batch_2.bin") && msg.contains("3073-byte records"),
        "{msg}"
    );
    assert!(
        msg.contains("1 whole records and 3072 bytes left over"),
        "{msg}"
    );

    std::fs::write(&batch, cifar_records([&[0], &[10]])).unwrap();
    let msg = layout_msg(cifar10(dir.path()).unwrap_err());
    assert!(
        msg.contains("record 1 (byte offset 3073): label 10; expected 0-9"),
        "{msg}"
    );

    std::fs::remove_file(&batch).unwrap();
    let e = cifar10(dir.path()).unwrap_err();
    assert!(
        matches!(&e, Error::NotFound { path, .. } if *path == batch),
        "{e:?}"
    );

    let empty = tempfile::tempdir().unwrap();
    let msg = cifar10(empty.path()).unwrap_err().to_string();
    assert!(
        msg.contains("data_batch_1.bin") && msg.contains("cifar-10-binary.tar.gz"),
        "{msg}"
    );
    assert!(msg.contains("train/<class>"), "{msg}");
}

#[test]
fn cifar100_binary_uses_coarse_label() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(d.join("train.bin"), cifar_records([&[19, 99], &[0, 4]])).unwrap();
    std::fs::write(d.join("test.bin"), cifar_records([&[4, 0], &[13, 44]])).unwrap();
    let s = cifar100(d).unwrap();
    assert_eq!(s.train.labels, [19, 0]);
    assert_eq!(s.test.labels, [4, 13]);
    assert_eq!(s.train.class_names.len(), 20);
    assert_eq!(s.train.class_names[4], "fruit_and_vegetables");
    assert_eq!(s.test.class_names[19], "vehicles_2");
    check_cifar_pixels(&s.train.images);
    check_cifar_pixels(&s.test.images);

    std::fs::write(d.join("test.bin"), cifar_records([&[4, 0], &[20, 44]])).unwrap();
    let msg = layout_msg(cifar100(d).unwrap_err());
    assert!(
        msg.contains("record 1 (byte offset 3074): coarse label 20; expected 0-19"),
        "{msg}"
    );
    std::fs::write(d.join("test.bin"), cifar_records([&[4, 100], &[2, 44]])).unwrap();
    let msg = layout_msg(cifar100(d).unwrap_err());
    assert!(
        msg.contains("record 0 (byte offset 1): fine label 100; expected 0-99"),
        "{msg}"
    );
    // A CIFAR-10 file is not a whole number of CIFAR-100 records.
    std::fs::write(d.join("test.bin"), cifar_records([&[1], &[2]])).unwrap();
    let msg = layout_msg(cifar100(d).unwrap_err());
    assert!(
        msg.contains("3074-byte records") && msg.contains("test.bin"),
        "{msg}"
    );

    let empty = tempfile::tempdir().unwrap();
    let msg = cifar100(empty.path()).unwrap_err().to_string();
    assert!(
        msg.contains("train.bin") && msg.contains("cifar-100-binary.tar.gz"),
        "{msg}"
    );
}

// ---------------------------------------------------------------------------------------------
// Class folders

fn write_png(path: &Path, color: [u8; 3]) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    RgbImage::from_pixel(32, 32, Rgb(color)).save(path).unwrap();
}

#[test]
fn cifar10_class_folders() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    write_png(&d.join("train/cat/b.png"), [1, 2, 3]);
    write_png(&d.join("train/cat/a.png"), [4, 5, 6]);
    write_png(&d.join("train/airplane/x.png"), [7, 8, 9]);
    write_png(&d.join("train/dog/z.png"), [10, 11, 12]);
    std::fs::write(d.join("train/dog/notes.txt"), "not an image").unwrap();
    write_png(&d.join("test/dog/t.png"), [13, 14, 15]);
    // A grey image becomes RGB.
    std::fs::create_dir_all(d.join("test/cat")).unwrap();
    GrayImage::from_pixel(32, 32, image::Luma([99]))
        .save(d.join("test/cat/g.png"))
        .unwrap();

    let s = cifar10(d).unwrap();
    assert_eq!(s.train.class_names, ["airplane", "cat", "dog"]);
    assert_eq!(s.test.class_names, s.train.class_names);
    assert_eq!(s.train.labels, [0, 1, 1, 2]);
    let first_px: Vec<[u8; 3]> = s
        .train
        .images
        .iter()
        .map(|i| i.to_rgb8().get_pixel(0, 0).0)
        .collect();
    assert_eq!(first_px, [[7, 8, 9], [4, 5, 6], [1, 2, 3], [10, 11, 12]]);
    assert_eq!(s.test.labels, [1, 2]);
    assert!(
        matches!(&s.test.images[0], DynamicImage::ImageRgb8(i) if i.get_pixel(3, 3).0 == [99; 3])
    );

    write_png(&d.join("test/bird/t.png"), [0, 0, 0]);
    let msg = layout_msg(cifar10(d).unwrap_err());
    assert!(
        msg.contains(&d.join("test/bird").display().to_string()),
        "{msg}"
    );
    assert!(msg.contains("(airplane, cat, dog); found `bird`"), "{msg}");
    std::fs::remove_dir_all(d.join("test/bird")).unwrap();

    std::fs::write(
        d.join("test/cat/broken.png"),
        b"\x89PNG\r\n\x1a\nnot really",
    )
    .unwrap();
    let e = cifar10(d).unwrap_err();
    assert!(
        matches!(&e, Error::BadImage { path, .. } if path.ends_with("test/cat/broken.png")),
        "{e:?}"
    );
}

#[test]
fn cifar100_class_folders_map_to_superclasses() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    for (i, fine) in ["beaver", "aquarium_fish", "tractor", "maple_tree", "whale"]
        .iter()
        .enumerate()
    {
        write_png(&d.join(format!("train/{fine}/{i}.png")), [i as u8; 3]);
    }
    write_png(&d.join("test/sweet_pepper/0.png"), [0; 3]);
    write_png(&d.join("test/lawn_mower/0.png"), [0; 3]);
    let s = cifar100(d).unwrap();
    // Folders in name order: aquarium_fish, beaver, maple_tree, tractor, whale.
    assert_eq!(s.train.labels, [1, 0, 17, 19, 0]);
    assert_eq!(s.test.labels, [19, 4]);
    assert_eq!(s.train.class_names.len(), 20);
    assert_eq!(s.train.class_names[9], "large_man-made_outdoor_things");
    assert!(
        s.train
            .images
            .iter()
            .all(|i| matches!(i, DynamicImage::ImageRgb8(_)))
    );

    write_png(&d.join("train/dolphins/0.png"), [0; 3]);
    let msg = layout_msg(cifar100(d).unwrap_err());
    assert!(
        msg.contains("`dolphins` is not a CIFAR-100 fine class"),
        "{msg}"
    );
    assert!(
        msg.contains(&d.join("train/dolphins").display().to_string()),
        "{msg}"
    );
}

// ---------------------------------------------------------------------------------------------
// Superclass table and dispatch

const FINE_LABEL_NAMES: [&str; 100] = [
    "apple",
    "aquarium_fish",
    "baby",
    "bear",
    "beaver",
    "bed",
    "bee",
    "beetle",
    "bicycle",
    "bottle",
    "bowl",
    "boy",
    "bridge",
    "bus",
    "butterfly",
    "camel",
    "can",
    "castle",
    "caterpillar",
    "cattle",
    "chair",
    "chimpanzee",
    "clock",
    "cloud",
    "cockroach",
    "couch",
    "crab",
    "crocodile",
    "cup",
    "dinosaur",
    "dolphin",
    "elephant",
    "flatfish",
    "forest",
    "fox",
    "girl",
    "hamster",
    "house",
    "kangaroo",
    "keyboard",
    "lamp",
    "lawn_mower",
    "leopard",
    "lion",
    "lizard",
    "lobster",
    "man",
    "maple_tree",
    "motorcycle",
    "mountain",
    "mouse",
    "mushroom",
    "oak_tree",
    "orange",
    "orchid",
    "otter",
    "palm_tree",
    "pear",
    "pickup_truck",
    "pine_tree",
    "plain",
    "plate",
    "poppy",
    "porcupine",
    "possum",
    "rabbit",
    "raccoon",
    "ray",
    "road",
    "rocket",
    "rose",
    "sea",
    "seal",
    "shark",
    "shrew",
    "skunk",
    "skyscraper",
    "snail",
    "snake",
    "spider",
    "squirrel",
    "streetcar",
    "sunflower",
    "sweet_pepper",
    "table",
    "tank",
    "telephone",
    "television",
    "tiger",
    "tractor",
    "train",
    "trout",
    "tulip",
    "turtle",
    "wardrobe",
    "whale",
    "willow_tree",
    "wolf",
    "woman",
    "worm",
];

const COARSE_LABEL_NAMES: [&str; 20] = [
    "aquatic_mammals",
    "fish",
    "flowers",
    "food_containers",
    "fruit_and_vegetables",
    "household_electrical_devices",
    "household_furniture",
    "insects",
    "large_carnivores",
    "large_man-made_outdoor_things",
    "large_natural_outdoor_scenes",
    "large_omnivores_and_herbivores",
    "medium_mammals",
    "non-insect_invertebrates",
    "people",
    "reptiles",
    "small_mammals",
    "trees",
    "vehicles_1",
    "vehicles_2",
];

#[test]
fn cifar100_superclass_table() {
    let coarse: Vec<&str> = CIFAR100_SUPERCLASSES.iter().map(|(c, _)| *c).collect();
    assert_eq!(coarse, COARSE_LABEL_NAMES);
    let mut fine: Vec<&str> = CIFAR100_SUPERCLASSES.iter().flat_map(|(_, f)| *f).collect();
    assert_eq!(fine.len(), 100);
    fine.sort_unstable();
    fine.dedup();
    assert_eq!(
        fine, FINE_LABEL_NAMES,
        "each official fine class exactly once"
    );
    for (c, (_, fines)) in CIFAR100_SUPERCLASSES.iter().enumerate() {
        for f in fines {
            assert_eq!(cifar100_superclass(f), Some(c), "{f}");
        }
    }
    let counts = FINE_LABEL_NAMES.iter().fold([0; 20], |mut n, f| {
        n[cifar100_superclass(f).unwrap()] += 1;
        n
    });
    assert_eq!(counts, [5; 20]);
    for (fine, coarse) in [
        ("beaver", "aquatic_mammals"),
        ("ray", "fish"),
        ("orchid", "flowers"),
        ("keyboard", "household_electrical_devices"),
        ("possum", "medium_mammals"),
        ("worm", "non-insect_invertebrates"),
        ("pickup_truck", "vehicles_1"),
        ("streetcar", "vehicles_2"),
    ] {
        assert_eq!(
            COARSE_LABEL_NAMES[cifar100_superclass(fine).unwrap()],
            coarse
        );
    }
    assert_eq!(cifar100_superclass("orchids"), None);
    assert_eq!(cifar100_superclass(""), None);
}
