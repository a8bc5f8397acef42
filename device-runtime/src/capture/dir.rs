//! `dir:PATH`: replays the PNG/JPEG files under a folder as if they came from a camera.
//!
//! The folder is listed once, at open, recursively, and sorted by relative path (component-wise,
//! so `test/broken_large/000.png` < `test/good/000.png`), which replays an MVTec `test/` folder
//! defect type by defect type. Extensions `png`, `jpg`, `jpeg` in any case; other files are
//! ignored; symbolic links to files are followed, links to folders are not (no cycles).
//! [`Frame::source`] is the relative path with `/` separators, so results map back to files.
//!
//! A file that cannot be read or decoded is reported once as [`CaptureError::BadFile`] (kind
//! `BadFrame`) and the next call continues with the next file. A missing folder, or one without a
//! single image, is a Fatal [`CaptureError::Folder`].

use std::fs;
use std::path::{Path, PathBuf};

use firm_shared::preprocess::decode_bytes;

use super::pacer::Pacer;
use super::{CaptureError, CaptureOptions, Frame, FrameSource, SourceStatus, Tally};

/// File extensions replayed (compared case-insensitively).
pub const IMAGE_EXTENSIONS: [&str; 3] = ["png", "jpg", "jpeg"];

/// Replays the images of one folder tree.
#[derive(Debug)]
pub struct DirSource {
    root: PathBuf,
    /// Relative paths, sorted.
    files: Vec<PathBuf>,
    next: usize,
    looping: bool,
    pacer: Pacer,
    tally: Tally,
}

impl DirSource {
    pub fn open(root: &Path, opts: &CaptureOptions) -> Result<Self, CaptureError> {
        let folder_error = |path: &Path, reason: String| CaptureError::Folder {
            path: path.to_path_buf(),
            reason,
        };
        let meta = fs::metadata(root).map_err(|e| folder_error(root, e.to_string()))?;
        if !meta.is_dir() {
            return Err(folder_error(root, "not a folder".into()));
        }
        let mut files = Vec::new();
        list_images(root, Path::new(""), &mut files)?;
        if files.is_empty() {
            return Err(folder_error(
                root,
                "no .png, .jpg or .jpeg files in it or its subfolders".into(),
            ));
        }
        files.sort();
        tracing::info!(folder = %root.display(), images = files.len(), looping = opts.looping, "replaying folder");
        Ok(Self {
            root: root.to_path_buf(),
            files,
            next: 0,
            looping: opts.looping,
            pacer: Pacer::new(opts.fps),
            tally: Tally::default(),
        })
    }

    /// The replayed files, relative to the folder, in replay order.
    pub fn files(&self) -> &[PathBuf] {
        &self.files
    }

    fn read(&self, rel: &Path) -> Result<image::RgbImage, CaptureError> {
        let path = self.root.join(rel);
        let bad = |reason: String| CaptureError::BadFile {
            path: path.clone(),
            reason,
        };
        let bytes = fs::read(&path).map_err(|e| bad(e.to_string()))?;
        let decoded = decode_bytes(&bytes, &path).map_err(|e| bad(e.to_string()))?;
        Ok(decoded.rgb)
    }
}

impl FrameSource for DirSource {
    fn next_frame(&mut self) -> Result<Frame, CaptureError> {
        if self.next == self.files.len() {
            if !self.looping {
                return Err(CaptureError::EndOfStream {
                    origin: format!("dir:{}", self.root.display()),
                    frames: self.tally.frames,
                });
            }
            self.next = 0;
        }
        // A bad file takes its slot in the schedule, as a broken camera frame would.
        self.pacer.wait();
        let rel = self.files[self.next].clone();
        self.next += 1;
        let image = self.read(&rel);
        self.tally
            .deliver(image, || rel.to_string_lossy().into_owned())
    }

    fn status(&self) -> SourceStatus {
        self.tally.status(format!(
            "dir:{} ({} images{})",
            self.root.display(),
            self.files.len(),
            if self.looping { ", looping" } else { "" }
        ))
    }
}

fn is_image(name: &Path) -> bool {
    name.extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| IMAGE_EXTENSIONS.iter().any(|x| e.eq_ignore_ascii_case(x)))
}

/// Append the images under `root/rel` (as paths relative to `root`) to `out`.
fn list_images(root: &Path, rel: &Path, out: &mut Vec<PathBuf>) -> Result<(), CaptureError> {
    let dir = root.join(rel);
    let unreadable = |e: std::io::Error| CaptureError::Folder {
        path: dir.clone(),
        reason: format!("cannot list it: {e}"),
    };
    for entry in fs::read_dir(&dir).map_err(unreadable)? {
        let entry = entry.map_err(unreadable)?;
        let child = rel.join(entry.file_name());
        let kind = entry.file_type().map_err(unreadable)?;
        if kind.is_dir() {
            list_images(root, &child, out)?;
        } else if is_image(&child) {
            // Follows a symlink; a dangling one is skipped now rather than failing every loop.
            if kind.is_file() || fs::metadata(root.join(&child)).is_ok_and(|m| m.is_file()) {
                out.push(child);
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::capture::ErrorKind;
    use image::{Rgb, RgbImage};
    use std::time::Instant;

    /// A 4x3 image whose every pixel is `v`: the frame says which file it came from.
    fn write_png(path: &Path, v: u8) {
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        RgbImage::from_pixel(4, 3, Rgb([v, v, v]))
            .save(path)
            .unwrap();
    }

    fn opts(looping: bool) -> CaptureOptions {
        CaptureOptions {
            looping,
            ..CaptureOptions::default()
        }
    }

    /// An MVTec-like tree: test/<type>/NNN.png plus files that must be ignored.
    fn tree() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        write_png(&root.join("good/001.png"), 4);
        write_png(&root.join("good/000.PNG"), 3);
        write_png(&root.join("broken_small/000.png"), 2);
        write_png(&root.join("a.png"), 1);
        image::RgbImage::from_pixel(2, 2, Rgb([5, 5, 5]))
            .save(root.join("good/002.jpg"))
            .unwrap();
        fs::write(root.join("notes.txt"), "not an image").unwrap();
        fs::write(root.join("good/000_mask.bmp"), "ignored extension").unwrap();
        dir
    }

    fn sources(src: &mut DirSource, n: usize) -> Vec<String> {
        (0..n).map(|_| src.next_frame().unwrap().source).collect()
    }

    #[test]
    fn replays_recursively_in_relative_path_order() {
        let dir = tree();
        let mut src = DirSource::open(dir.path(), &opts(false)).unwrap();
        let want = [
            "a.png",
            "broken_small/000.png",
            "good/000.PNG",
            "good/001.png",
            "good/002.jpg",
        ];
        let mut got = Vec::new();
        for (i, name) in want.iter().enumerate() {
            let f = src.next_frame().unwrap();
            assert_eq!(f.seq, i as u64);
            got.push(f.source.clone());
            if i < 4 {
                assert_eq!(f.image.get_pixel(0, 0).0, [i as u8 + 1; 3], "{name}");
            } else {
                assert_eq!(f.image.dimensions(), (2, 2));
            }
        }
        assert_eq!(got, want);
        let end = src.next_frame().unwrap_err();
        assert_eq!(end.kind(), ErrorKind::EndOfStream);
        assert!(end.to_string().contains("after 5 frames"), "{end}");
        // Stays at the end.
        assert_eq!(src.next_frame().unwrap_err().kind(), ErrorKind::EndOfStream);
        let st = src.status();
        assert_eq!((st.frames, st.bad_frames, st.connected), (5, 0, true));
        assert!(st.description.contains("5 images"), "{}", st.description);
    }

    #[test]
    fn looping_starts_again_after_the_last_file() {
        let dir = tempfile::tempdir().unwrap();
        write_png(&dir.path().join("b.png"), 2);
        write_png(&dir.path().join("a.png"), 1);
        let mut src = DirSource::open(dir.path(), &opts(true)).unwrap();
        assert_eq!(
            sources(&mut src, 5),
            ["a.png", "b.png", "a.png", "b.png", "a.png"]
        );
        assert_eq!(src.status().frames, 5);
    }

    #[test]
    fn a_corrupt_file_is_reported_with_its_path_counted_and_skipped() {
        let dir = tempfile::tempdir().unwrap();
        write_png(&dir.path().join("0.png"), 0);
        fs::write(dir.path().join("1.png"), b"\x89PNG\r\n\x1a\n truncated").unwrap();
        fs::write(dir.path().join("2.jpg"), b"").unwrap();
        write_png(&dir.path().join("3.png"), 3);
        let mut src = DirSource::open(dir.path(), &opts(false)).unwrap();
        assert_eq!(src.next_frame().unwrap().source, "0.png");
        for name in ["1.png", "2.jpg"] {
            let e = src.next_frame().unwrap_err();
            assert_eq!(e.kind(), ErrorKind::BadFrame);
            assert!(
                matches!(&e, CaptureError::BadFile { path, .. } if path.ends_with(name)),
                "{e}"
            );
            assert!(e.to_string().contains(name), "{e}");
        }
        let f = src.next_frame().unwrap();
        assert_eq!((f.source.as_str(), f.seq), ("3.png", 1));
        let st = src.status();
        assert_eq!((st.frames, st.bad_frames), (2, 2));
        assert!(st.last_error.unwrap().contains("2.jpg"));
    }

    #[test]
    fn missing_empty_or_non_folder_paths_are_fatal_and_named() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("readme.txt"), "no images").unwrap();
        fs::create_dir(dir.path().join("sub")).unwrap();
        let missing = dir.path().join("nope");
        for (path, what) in [
            (dir.path().to_path_buf(), "no .png"),
            (missing, "No such file"),
            (dir.path().join("readme.txt"), "not a folder"),
        ] {
            let e = DirSource::open(&path, &opts(false)).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::Fatal);
            let msg = e.to_string();
            assert!(msg.contains(&path.display().to_string()), "{msg}");
            assert!(msg.contains(what), "{msg}");
        }
    }

    #[test]
    fn fps_paces_the_replay() {
        let dir = tempfile::tempdir().unwrap();
        write_png(&dir.path().join("a.png"), 1);
        let o = CaptureOptions {
            fps: Some(50.0),
            looping: true,
            ..CaptureOptions::default()
        };
        let mut src = DirSource::open(dir.path(), &o).unwrap();
        let t = Instant::now();
        sources(&mut src, 5);
        // First frame at once, then 4 periods of 20 ms.
        let ms = t.elapsed().as_secs_f64() * 1e3;
        assert!(
            (79.0..1000.0).contains(&ms),
            "5 frames at 50 fps took {ms:.1} ms"
        );
    }
}
