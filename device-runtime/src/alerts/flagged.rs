//! Flagged frames saved as PNG within a disk budget: `FLAGGED/<time>-<seq>.png` with a JSON
//! sidecar (`.json`: the verdict) and a thumbnail (`.thumb.jpg`, [`THUMBNAIL_SIZE`] px on the long
//! side, a few KB against the PNG's hundreds: what the status page's alert list loads). File names
//! start with the capture time; when the folder exceeds its budget the sets written first are
//! deleted first. Each file is written atomically, so a power cut leaves no half image; the
//! temporary file such a cut leaves behind is deleted at the next start.
//!
//! Write order, not name order: on a board without a real-time clock the wall clock may jump back
//! (to 1970, or to the image's build date) until NTP answers, and the frames captured meanwhile
//! carry the oldest names while being the newest. So each PNG's modification time is stamped with
//! a write clock that never goes back (the wall clock, or 1 us after the last stamp when the wall
//! clock is behind it), and [`FlaggedFrames::open`] orders the sets by that stamp (then by name);
//! at run time they are kept in the order they were written.
//!
//! The frames are the plant's product images: files are 0640 and the folder 0750 (an existing
//! folder loses its permissions for others at start), and [`read_saved`] refuses anything in the
//! folder that is not a plain file (a symlink placed there is not followed).
//!
//! A set that cannot be written whole (a full state filesystem) is removed again, so no frame
//! without its sidecar stays outside the budget; the loss is counted by the pipeline and, for
//! want of space, reported to [`StateFs`] (one error for the device, not one per frame).
//!
//! The thumbnail costs ~5 ms for a 640 x 480 frame (image's `thumbnail` 4.1 ms, JPEG 0.5 ms),
//! beside the PNG's ~12 ms (2 AMD EPYC cores). Frames saved before thumbnails existed get theirs
//! on first request ([`thumbnail_for`]): decoded once, then served from the file. Such
//! thumbnails join the budget at the next start.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use firm_shared::fsutil::write_atomic_mode;

use super::AlertSink;
use crate::capture::Frame;
use crate::state::{AlertEntry, StateFs};

#[derive(Debug)]
pub struct FlaggedFrames {
    dir: PathBuf,
    budget: u64,
    /// (name stem, bytes of the set's files), in write order: the first written first.
    files: std::collections::VecDeque<(String, u64)>,
    total: u64,
    /// The last write stamp (module docs): the next one is later than this.
    last_stamp: SystemTime,
    /// Where a full filesystem is reported (none: every failure is an ordinary sink error).
    state_fs: Option<std::sync::Arc<StateFs>>,
}

/// Permission bits of the saved files and of the folder.
pub const FILE_MODE: u32 = 0o640;
pub const DIR_MODE: u32 = 0o750;

/// Per stem, while opening: the PNG's stamp, the latest time of any of the set's files, bytes.
#[derive(Default)]
struct SetOnDisk {
    png: Option<SystemTime>,
    latest: Option<SystemTime>,
    len: u64,
}

impl FlaggedFrames {
    pub fn open(dir: &Path, budget: u64) -> Result<Self, String> {
        use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
        let err = |e: io::Error| format!("{}: {e}", dir.display());
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(DIR_MODE)
            .create(dir)
            .map_err(err)?;
        // A folder made by an earlier version (0755): close it to others.
        let mode = std::fs::metadata(dir).map_err(err)?.permissions().mode();
        if mode & 0o007 != 0 {
            std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode & 0o770))
                .map_err(err)?;
        }
        let mut stems: std::collections::HashMap<String, SetOnDisk> = Default::default();
        let rd = std::fs::read_dir(dir).map_err(err)?;
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.starts_with('.') && name.contains(".tmp-") {
                // A write cut short by a crash or power loss (write_atomic's temporary file).
                let _ = std::fs::remove_file(e.path());
                continue;
            }
            let Some(stem) = name
                .strip_suffix(HEAT_THUMBNAIL_SUFFIX)
                .or_else(|| name.strip_suffix(HEAT_SUFFIX))
                .or_else(|| name.strip_suffix(".png"))
                .or_else(|| name.strip_suffix(".json"))
                .or_else(|| name.strip_suffix(THUMBNAIL_SUFFIX))
            else {
                continue;
            };
            // DirEntry::metadata does not follow symlinks.
            let Ok(meta) = e.metadata() else { continue };
            let set = stems.entry(stem.to_string()).or_default();
            set.len += meta.len();
            let time = meta.modified().ok();
            set.latest = set.latest.max(time);
            if name.ends_with(".png") {
                set.png = time;
            }
        }
        let mut sets: Vec<(SystemTime, String, u64)> = stems
            .into_iter()
            .map(|(stem, s)| {
                let stamp = s.png.or(s.latest).unwrap_or(SystemTime::UNIX_EPOCH);
                (stamp, stem, s.len)
            })
            .collect();
        sets.sort();
        let total = sets.iter().map(|s| s.2).sum();
        let last_stamp = sets.last().map_or(SystemTime::UNIX_EPOCH, |s| s.0);
        Ok(Self {
            dir: dir.to_path_buf(),
            budget,
            files: sets.into_iter().map(|(_, stem, len)| (stem, len)).collect(),
            total,
            last_stamp,
            state_fs: None,
        })
    }

    /// The next write stamp: now, unless the wall clock is at or behind the last stamp.
    fn next_stamp(&mut self) -> SystemTime {
        let now = SystemTime::now();
        self.last_stamp = if now > self.last_stamp {
            now
        } else {
            self.last_stamp + Duration::from_micros(1)
        };
        self.last_stamp
    }

    /// Report sets lost to a full filesystem to `state_fs` (the appliance's state).
    pub fn with_state_fs(mut self, state_fs: std::sync::Arc<StateFs>) -> Self {
        self.state_fs = Some(state_fs);
        self
    }

    /// A write of `stem`'s set failed with `e`: remove what was written of the set (it is not
    /// in the budget's list) and say why for the pipeline; a full filesystem goes to StateFs.
    fn lost(&self, stem: &str, e: &(dyn std::error::Error + 'static)) -> String {
        for ext in SET_SUFFIXES {
            let _ = std::fs::remove_file(self.dir.join(format!("{stem}{ext}")));
        }
        match &self.state_fs {
            Some(fs) if StateFs::caused_by_full(e) => {
                fs.write_failed(SINK, &e.to_string());
                StateFs::FULL.into()
            }
            _ => e.to_string(),
        }
    }

    /// Bytes in use.
    pub fn total(&self) -> u64 {
        self.total
    }

    fn evict(&mut self) {
        while self.total > self.budget {
            let Some((stem, len)) = self.files.pop_front() else {
                break;
            };
            for ext in [
                ".png",
                ".json",
                THUMBNAIL_SUFFIX,
                HEAT_SUFFIX,
                HEAT_THUMBNAIL_SUFFIX,
            ] {
                let _ = std::fs::remove_file(self.dir.join(format!("{stem}{ext}")));
            }
            self.total -= len;
        }
    }
}

impl AlertSink for FlaggedFrames {
    fn name(&self) -> &'static str {
        SINK
    }

    fn alert(&mut self, alert: &mut AlertEntry, frame: &Frame) -> Result<(), String> {
        let stem = stem_of(&alert.verdict);
        let mut png = std::io::Cursor::new(Vec::new());
        image::DynamicImage::ImageRgb8(frame.image.clone())
            .write_to(&mut png, image::ImageFormat::Png)
            .map_err(|e| format!("PNG encoding: {e}"))?;
        let png = png.into_inner();
        let json = serde_json::to_vec_pretty(&alert.verdict).expect("verdict serialises");
        let thumb = thumbnail_jpeg(&frame.image)?;
        let png_path = self.dir.join(format!("{stem}.png"));
        write_atomic_mode(&png_path, &png, FILE_MODE).map_err(|e| self.lost(&stem, &e))?;
        let stamp = self.next_stamp();
        std::fs::File::open(&png_path)
            .and_then(|f| f.set_modified(stamp))
            .map_err(|e| format!("{}: setting its write stamp: {e}", png_path.display()))?;
        write_atomic_mode(&self.dir.join(format!("{stem}.json")), &json, FILE_MODE)
            .map_err(|e| self.lost(&stem, &e))?;
        // No fsync: a lost thumbnail is made again from the PNG when it is asked for.
        write_cache(&self.dir.join(format!("{stem}{THUMBNAIL_SUFFIX}")), &thumb)
            .map_err(|e| self.lost(&stem, &e))?;
        let mut len = (png.len() + json.len() + thumb.len()) as u64;
        if let Some(o) = &alert.overlay {
            // The heat map over the frame, as JPEG (it is for eyes, not for measurements).
            let mut jpeg = Vec::new();
            image::codecs::jpeg::JpegEncoder::new_with_quality(&mut jpeg, 90)
                .encode_image(&**o)
                .map_err(|e| format!("JPEG encoding: {e}"))?;
            let name = format!("{stem}{HEAT_SUFFIX}");
            write_atomic_mode(&self.dir.join(&name), &jpeg, FILE_MODE)
                .map_err(|e| self.lost(&stem, &e))?;
            len += jpeg.len() as u64;
            alert.heat_image = Some(name);
        }
        self.files.push_back((stem.clone(), len));
        self.total += len;
        self.evict();
        alert.image = Some(format!("{stem}.png"));
        if let Some(fs) = &self.state_fs {
            fs.wrote(SINK);
        }
        Ok(())
    }
}

const SINK: &str = "flagged-frames";
/// The files of a set, by suffix after its stem.
const SET_SUFFIXES: [&str; 5] = [
    ".png",
    ".json",
    THUMBNAIL_SUFFIX,
    HEAT_SUFFIX,
    HEAT_THUMBNAIL_SUFFIX,
];

/// Long side of a flagged frame's thumbnail, pixels (twice the page's 64 px, for dense screens).
pub const THUMBNAIL_SIZE: u32 = 128;
const THUMBNAIL_SUFFIX: &str = ".thumb.jpg";
/// The frame with its heat map blended on (bundles that score patches).
pub const HEAT_SUFFIX: &str = ".heat.jpg";
/// The heat map's thumbnail, made on first request.
pub const HEAT_THUMBNAIL_SUFFIX: &str = ".heat.thumb.jpg";
const THUMBNAIL_QUALITY: u8 = 80;

/// The stem of a verdict's saved files: its capture time and frame seq
/// (2026-12-01T12:50:00.123Z, frame 42 -> `20261201T125000123Z-00000042`).
pub fn stem_of(v: &crate::state::Verdict) -> String {
    let t: String = v
        .time
        .chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .collect();
    format!("{t}-{:08}", v.seq)
}

/// The thumbnail file of the saved frame `png` (`<stem>.png` -> `<stem>.thumb.jpg`), or of its
/// heat map (`<stem>.heat.jpg` -> `<stem>.heat.thumb.jpg`).
pub fn thumbnail_name(png: &str) -> Option<String> {
    png.strip_suffix(".png")
        .or_else(|| {
            png.strip_suffix(".jpg")
                .filter(|_| png.ends_with(HEAT_SUFFIX))
        })
        .map(|stem| format!("{stem}{THUMBNAIL_SUFFIX}"))
}

/// `img` shrunk to [`THUMBNAIL_SIZE`] on its long side (never enlarged), as JPEG.
pub fn thumbnail_jpeg(img: &image::RgbImage) -> Result<Vec<u8>, String> {
    let (w, h) = img.dimensions();
    let long = w.max(h).max(1);
    let small = if long > THUMBNAIL_SIZE {
        let scale = |x: u32| {
            ((u64::from(x) * u64::from(THUMBNAIL_SIZE)).div_ceil(u64::from(long))).max(1) as u32
        };
        image::imageops::thumbnail(img, scale(w), scale(h))
    } else {
        img.clone()
    };
    let mut out = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, THUMBNAIL_QUALITY)
        .encode_image(&small)
        .map_err(|e| format!("JPEG encoding: {e}"))?;
    Ok(out)
}

/// The thumbnail of the saved frame `png` in `dir`: read from its file, or made from the PNG
/// (once: it is written beside it). NotFound when the frame is not there (never saved, or
/// deleted for the budget).
pub fn thumbnail_for(dir: &Path, png: &str) -> io::Result<Vec<u8>> {
    let name = thumbnail_name(png).ok_or_else(|| io::Error::from(io::ErrorKind::NotFound))?;
    let path = dir.join(&name);
    match read_saved(&path) {
        Ok(b) => return Ok(b),
        Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
        Err(_) => {}
    }
    let bytes = read_saved(&dir.join(png))?;
    let format = if png.ends_with(".png") {
        image::ImageFormat::Png
    } else {
        image::ImageFormat::Jpeg
    };
    let img = image::load_from_memory_with_format(&bytes, format)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("{png}: {e}")))?
        .to_rgb8();
    let jpeg = thumbnail_jpeg(&img).map_err(io::Error::other)?;
    if let Err(e) = write_cache(&path, &jpeg) {
        tracing::warn!("cannot keep the thumbnail {}: {e}", path.display());
    }
    Ok(jpeg)
}

/// The bytes of a saved file, if `path` names a plain file (NotFound otherwise): a symlink
/// placed in the folder is not followed, nor is a FIFO or a device opened. The name is checked
/// before opening (lstat), and after, the open file must be the one the name held (same device
/// and inode), so swapping in a symlink in between is caught.
pub fn read_saved(path: &Path) -> io::Result<Vec<u8>> {
    use std::io::Read;
    use std::os::unix::fs::MetadataExt;
    let not_ours = || io::Error::from(io::ErrorKind::NotFound);
    let named = std::fs::symlink_metadata(path)?;
    if !named.file_type().is_file() {
        return Err(not_ours());
    }
    let mut f = std::fs::File::open(path)?;
    let opened = f.metadata()?;
    if !opened.is_file() || (opened.dev(), opened.ino()) != (named.dev(), named.ino()) {
        return Err(not_ours());
    }
    let mut out = Vec::with_capacity(opened.len() as usize);
    f.read_to_end(&mut out)?;
    Ok(out)
}

/// Write through a temporary file (named as [`write_atomic`] names them, so a start after a crash
/// deletes a leftover) renamed into place, without fsync: for files that can be made again.
/// Unique per call, so two requests making the same thumbnail do not write one temporary file.
fn write_cache(path: &Path, bytes: &[u8]) -> io::Result<()> {
    static N: AtomicU64 = AtomicU64::new(0);
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    let tmp = path.with_file_name(format!(
        ".{name}.tmp-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(FILE_MODE)
            .open(&tmp)?;
        f.write_all(bytes).inspect_err(|_| {
            let _ = std::fs::remove_file(&tmp);
        })?;
    }
    std::fs::rename(&tmp, path).inspect_err(|_| {
        let _ = std::fs::remove_file(&tmp);
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn heat_maps_have_thumbnails_too() {
        assert_eq!(
            thumbnail_name("20261201T1-00000042.heat.jpg").as_deref(),
            Some("20261201T1-00000042.heat.thumb.jpg")
        );
        assert_eq!(thumbnail_name("x.jpg"), None);
        let dir = tempfile::tempdir().unwrap();
        let img = image::RgbImage::from_fn(320, 240, |x, _| image::Rgb([(x % 256) as u8, 40, 200]));
        let mut jpeg = Vec::new();
        image::codecs::jpeg::JpegEncoder::new(&mut jpeg)
            .encode_image(&img)
            .unwrap();
        std::fs::write(dir.path().join("a-00000001.heat.jpg"), &jpeg).unwrap();
        let t = thumbnail_for(dir.path(), "a-00000001.heat.jpg").unwrap();
        let small = image::load_from_memory(&t).unwrap();
        assert!(small.width() <= THUMBNAIL_SIZE && small.width() < 320);
        assert!(dir.path().join("a-00000001.heat.thumb.jpg").is_file());
        // Counted and evicted with its frame.
        let mut f = FlaggedFrames::open(dir.path(), 0).unwrap();
        assert_eq!(f.files.len(), 1, "{:?}", f.files);
        f.evict();
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
    }

    #[test]
    fn thumbnails_are_small_made_once_and_budgeted() {
        let dir = tempfile::tempdir().unwrap();
        let img = image::RgbImage::from_fn(640, 480, |x, y| {
            image::Rgb([(x % 256) as u8, (y % 256) as u8, ((x * y) % 251) as u8])
        });
        let mut png = std::io::Cursor::new(Vec::new());
        image::DynamicImage::ImageRgb8(img)
            .write_to(&mut png, image::ImageFormat::Png)
            .unwrap();
        let png = png.into_inner();
        let name = "20261201T125000123Z-00000042.png";
        std::fs::write(dir.path().join(name), &png).unwrap();
        let t = thumbnail_for(dir.path(), name).unwrap();
        let thumb = image::load_from_memory(&t).unwrap();
        assert_eq!((thumb.width(), thumb.height()), (128, 96));
        assert!(t.len() * 10 < png.len(), "{} vs {}", t.len(), png.len());
        let cached = dir.path().join("20261201T125000123Z-00000042.thumb.jpg");
        assert_eq!(std::fs::read(&cached).unwrap(), t);
        // Served from the file from now on: a changed file is what comes back.
        std::fs::write(&cached, b"cached").unwrap();
        assert_eq!(thumbnail_for(dir.path(), name).unwrap(), b"cached");
        let missing = thumbnail_for(dir.path(), "20261201T125000123Z-00000043.png");
        assert_eq!(missing.unwrap_err().kind(), io::ErrorKind::NotFound);
        // The thumbnail belongs to its frame's set in the budget.
        let f = FlaggedFrames::open(dir.path(), 1 << 30).unwrap();
        assert_eq!(f.total(), png.len() as u64 + 6);
        assert_eq!(f.files.len(), 1);
    }
}
