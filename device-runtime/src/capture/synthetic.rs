//! `synthetic`: a moving test pattern with injected defects, to demo and test the pipeline
//! without a camera.
//!
//! The scene is a top view of a bottle-like part: a bright rim around a ringed, speckled bottom on
//! a dark belt. Part and belt slide left and right together, 2 px per frame (a triangle wave of
//! amplitude width / 10), and every frame gets its own sensor noise (+-4 grey levels).
//! Every `defect-every`-th frame (sequence numbers `N-1, 2N-1, ...`) carries one dark defect on the
//! part: a round blob or a thin scratch, at a random position, size and angle. Such frames have
//! [`Frame::source`] = [`SOURCE_DEFECT`], all others [`SOURCE_GOOD`].
//!
//! Frame `n` is a pure function of (seed, n, width, height, defect-every): the texture comes from
//! the seed, the noise and the defect from per-frame ChaCha streams, so two sources with the same
//! options produce identical frames and tests can predict the defect schedule.

use std::time::SystemTime;

use image::RgbImage;
use rand::{Rng, RngCore, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::pacer::Pacer;
use super::{CaptureError, CaptureOptions, Frame, FrameSource, SourceStatus};

/// [`Frame::source`] of a frame without an injected defect.
pub const SOURCE_GOOD: &str = "synthetic";
/// [`Frame::source`] of a frame with an injected defect.
pub const SOURCE_DEFECT: &str = "synthetic:defect";

/// Pixels the part moves per frame.
const STEP: u64 = 2;
/// Keeps the defect streams apart from the noise streams of the same seed.
const DEFECT_SALT: u64 = 0x9e37_79b9_7f4a_7c15;
const BELT: [f32; 3] = [34.0, 35.0, 38.0];
const DEFECT: [f32; 3] = [14.0, 12.0, 10.0];

/// Whether frame `seq` carries a defect when every `every`-th frame does (0 = never).
pub fn is_defect_frame(seq: u64, every: u32) -> bool {
    every != 0 && seq % u64::from(every) == u64::from(every) - 1
}

/// The moving test pattern.
#[derive(Debug)]
pub struct SyntheticSource {
    width: u32,
    height: u32,
    seed: u64,
    defect_every: u32,
    /// Horizontal travel either side of the centre, pixels.
    amplitude: u32,
    /// The static scene, `width + 2 * amplitude` wide, RGB; frames are windows into it.
    scene: Vec<u8>,
    /// Per-frame noise, reused.
    noise: Vec<u8>,
    pacer: Pacer,
    frames: u64,
}

impl SyntheticSource {
    /// `opts` must be validated (sides of at least [`super::MIN_SYNTHETIC_SIDE`]).
    pub fn new(opts: &CaptureOptions) -> Self {
        let (width, height) = (opts.width, opts.height);
        let amplitude = width / 10;
        Self {
            width,
            height,
            seed: opts.seed,
            defect_every: opts.defect_every,
            amplitude,
            scene: render_scene(width, height, amplitude, opts.seed),
            noise: vec![0; width as usize * height as usize],
            pacer: Pacer::new(opts.fps),
            frames: 0,
        }
    }

    fn radius(&self) -> f32 {
        0.35 * self.width.min(self.height) as f32
    }

    /// Horizontal offset of the part in frame `seq`, in `-amplitude..=amplitude`.
    fn offset(&self, seq: u64) -> i64 {
        let a = u64::from(self.amplitude);
        if a == 0 {
            return 0;
        }
        let p = (seq % (4 * a)) * STEP % (4 * a);
        if p < 2 * a {
            p as i64 - a as i64
        } else {
            3 * a as i64 - p as i64
        }
    }

    /// Frame `seq`, with or without its defect.
    fn render(&mut self, seq: u64, defect: bool) -> RgbImage {
        let (w, h) = (self.width as usize, self.height as usize);
        let scene_w = w + 2 * self.amplitude as usize;
        let x0 = (i64::from(self.amplitude) - self.offset(seq)) as usize;
        let mut rng = ChaCha8Rng::seed_from_u64(self.seed);
        rng.set_stream(seq);
        rng.fill_bytes(&mut self.noise);
        let mut out = vec![0u8; w * h * 3];
        for y in 0..h {
            let src = &self.scene[(y * scene_w + x0) * 3..(y * scene_w + x0 + w) * 3];
            let dst = &mut out[y * w * 3..(y + 1) * w * 3];
            let noise = &self.noise[y * w..(y + 1) * w];
            for ((s, d), &n) in src.chunks_exact(3).zip(dst.chunks_exact_mut(3)).zip(noise) {
                let n = i16::from(n % 9) - 4;
                for c in 0..3 {
                    d[c] = (i16::from(s[c]) + n).clamp(0, 255) as u8;
                }
            }
        }
        let mut img = RgbImage::from_raw(self.width, self.height, out).expect("w * h * 3 bytes");
        if defect {
            let cx = self.width as f32 / 2.0 + self.offset(seq) as f32;
            let cy = self.height as f32 / 2.0;
            paint_defect(&mut img, cx, cy, self.radius(), self.seed, seq);
        }
        img
    }
}

impl FrameSource for SyntheticSource {
    fn next_frame(&mut self) -> Result<Frame, CaptureError> {
        self.pacer.wait();
        let seq = self.frames;
        let defect = is_defect_frame(seq, self.defect_every);
        let image = self.render(seq, defect);
        self.frames += 1;
        Ok(Frame {
            seq,
            time: SystemTime::now(),
            image,
            source: if defect { SOURCE_DEFECT } else { SOURCE_GOOD }.into(),
        })
    }

    fn status(&self) -> SourceStatus {
        let defects = match self.defect_every {
            0 => "no defects".to_string(),
            1 => "a defect in every frame".to_string(),
            n => format!("a defect every {n} frames"),
        };
        SourceStatus {
            connected: true,
            reconnects: 0,
            bad_frames: 0,
            frames: self.frames,
            last_error: None,
            description: format!(
                "synthetic {}x{}, {defects}, seed {}",
                self.width, self.height, self.seed
            ),
        }
    }
}

/// The static scene: belt, rim and ringed bottom, with seed-dependent speckle.
fn render_scene(width: u32, height: u32, amplitude: u32, seed: u64) -> Vec<u8> {
    let scene_w = (width + 2 * amplitude) as usize;
    let h = height as usize;
    let r = 0.35 * width.min(height) as f32;
    let (cx, cy) = ((amplitude as f32) + width as f32 / 2.0, height as f32 / 2.0);
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut scene = vec![0u8; scene_w * h * 3];
    for (i, px) in scene.chunks_exact_mut(3).enumerate() {
        let (x, y) = ((i % scene_w) as f32 + 0.5, (i / scene_w) as f32 + 0.5);
        let d = ((x - cx).powi(2) + (y - cy).powi(2)).sqrt() / r;
        let speckle = rng.random_range(-8.0f32..=8.0);
        let rgb = if d < 0.85 {
            // Bottom: concentric rings, brighter towards the centre.
            let v = 95.0 + 18.0 * (d * 6.0 * std::f32::consts::PI).cos() + 15.0 * (1.0 - d);
            tint(v + speckle)
        } else if d < 1.0 {
            // Rim: a bright ridge peaking at 0.925 r.
            let v = 190.0 - 700.0 * (d - 0.925).abs();
            tint(v + speckle * 0.5)
        } else {
            BELT.map(|c| c + speckle * 0.5)
        };
        for c in 0..3 {
            px[c] = rgb[c].round().clamp(0.0, 255.0) as u8;
        }
    }
    scene
}

/// Brownish-green glass.
fn tint(v: f32) -> [f32; 3] {
    [v * 0.85, v, v * 0.6]
}

/// One dark blob or scratch at a random place on the part centred at (`cx`, `cy`).
fn paint_defect(img: &mut RgbImage, cx: f32, cy: f32, r: f32, seed: u64, seq: u64) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ DEFECT_SALT);
    rng.set_stream(seq);
    let rho = 0.6 * r * rng.random::<f32>().sqrt();
    let theta = rng.random_range(0.0..std::f32::consts::TAU);
    let (px, py) = (cx + rho * theta.cos(), cy + rho * theta.sin());
    if rng.random_bool(0.5) {
        let radius = (r * rng.random_range(0.07f32..0.13)).max(2.0);
        paint(img, (px, py), radius + 1.0, |x, y| {
            radius - ((x - px).powi(2) + (y - py).powi(2)).sqrt()
        });
    } else {
        let half_len = r * rng.random_range(0.15f32..0.3);
        let half_width = (r * 0.015).max(1.0);
        let phi = rng.random_range(0.0..std::f32::consts::PI);
        let (ux, uy) = (phi.cos(), phi.sin());
        paint(img, (px, py), half_len + half_width + 1.0, |x, y| {
            // Distance to the segment centre +- half_len along (ux, uy).
            let (dx, dy) = (x - px, y - py);
            let along = (dx * ux + dy * uy).clamp(-half_len, half_len);
            let dist = ((dx - along * ux).powi(2) + (dy - along * uy).powi(2)).sqrt();
            half_width - dist
        });
    }
}

/// Darken the pixels within `reach` of `centre` by the coverage `inside(x, y)` (signed distance
/// inside the shape, in pixels; a 1-pixel soft edge).
fn paint(img: &mut RgbImage, centre: (f32, f32), reach: f32, inside: impl Fn(f32, f32) -> f32) {
    let (w, h) = img.dimensions();
    let lo = |c: f32| (c - reach).floor().max(0.0) as u32;
    let hi = |c: f32, n: u32| ((c + reach).ceil().max(0.0) as u32).min(n);
    for y in lo(centre.1)..hi(centre.1, h) {
        for x in lo(centre.0)..hi(centre.0, w) {
            let alpha = (inside(x as f32 + 0.5, y as f32 + 0.5) + 0.5).clamp(0.0, 1.0);
            if alpha > 0.0 {
                let p = img.get_pixel_mut(x, y);
                for c in 0..3 {
                    let v = f32::from(p.0[c]);
                    p.0[c] = (v + (DEFECT[c] - v) * alpha).round() as u8;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(seed: u64, defect_every: u32) -> CaptureOptions {
        CaptureOptions {
            width: 128,
            height: 96,
            seed,
            defect_every,
            ..CaptureOptions::default()
        }
    }

    #[test]
    fn same_seed_same_frames_other_seed_other_frames() {
        let mut a = SyntheticSource::new(&opts(7, 3));
        let mut b = SyntheticSource::new(&opts(7, 3));
        let mut c = SyntheticSource::new(&opts(8, 3));
        for seq in 0..6 {
            let (fa, fb, fc) = (
                a.next_frame().unwrap(),
                b.next_frame().unwrap(),
                c.next_frame().unwrap(),
            );
            assert_eq!(fa.seq, seq);
            assert_eq!(fa.image.dimensions(), (128, 96));
            assert!(
                fa.image == fb.image,
                "frame {seq} differs between equal seeds"
            );
            assert!(fa.image != fc.image, "frame {seq} equal across seeds");
        }
    }

    #[test]
    fn the_part_moves_and_frames_are_noisy() {
        let mut s = SyntheticSource::new(&opts(1, 0));
        let offsets: Vec<i64> = (0..8).map(|n| s.offset(n)).collect();
        // Amplitude 12 px, 2 px per frame.
        assert_eq!(offsets, [-12, -10, -8, -6, -4, -2, 0, 2]);
        assert_eq!(s.offset(12), 12);
        assert_eq!(s.offset(13), 10);
        assert!((0..100).all(|n| s.offset(n).abs() <= 12));
        let f0 = s.render(0, false);
        let f1 = s.render(1, false);
        // Belt pixels at the corner differ only by noise; the part has moved.
        assert!(f0 != f1);
        let again = s.render(0, false);
        assert!(
            f0 == again,
            "rendering is not a pure function of the frame number"
        );
    }

    #[test]
    fn defects_follow_the_schedule_and_are_dark_marks_on_the_part() {
        let mut s = SyntheticSource::new(&opts(42, 4));
        let tags: Vec<String> = (0..12).map(|_| s.next_frame().unwrap().source).collect();
        for (n, tag) in tags.iter().enumerate() {
            let want = if n % 4 == 3 {
                SOURCE_DEFECT
            } else {
                SOURCE_GOOD
            };
            assert_eq!(tag, want, "frame {n}");
        }
        for seq in [3, 7, 11, 1001] {
            let good = s.render(seq, false);
            let bad = s.render(seq, true);
            let darker = good
                .pixels()
                .zip(bad.pixels())
                .filter(|(g, b)| i16::from(g.0[1]) - i16::from(b.0[1]) > 30)
                .count();
            let brighter = good
                .pixels()
                .zip(bad.pixels())
                .any(|(g, b)| b.0[1] > g.0[1]);
            assert!(darker >= 10, "frame {seq}: only {darker} pixels darkened");
            assert!(!brighter, "frame {seq}: a defect brightened a pixel");
        }
    }

    #[test]
    fn defect_schedule() {
        assert!(!is_defect_frame(0, 0) && !is_defect_frame(99, 0));
        assert!((0..5).all(|n| is_defect_frame(n, 1)));
        let tagged: Vec<u64> = (0..10).filter(|&n| is_defect_frame(n, 3)).collect();
        assert_eq!(tagged, [2, 5, 8]);
        assert!(is_defect_frame(u64::MAX, 2) && !is_defect_frame(u64::MAX - 1, 2));
    }

    #[test]
    fn status_describes_the_pattern() {
        let mut s = SyntheticSource::new(&opts(5, 10));
        s.next_frame().unwrap();
        let st = s.status();
        assert_eq!((st.frames, st.connected), (1, true));
        assert_eq!(
            st.description,
            "synthetic 128x96, a defect every 10 frames, seed 5"
        );
    }

    #[test]
    fn smallest_frames_render() {
        let mut s = SyntheticSource::new(&CaptureOptions {
            width: 16,
            height: 16,
            defect_every: 1,
            ..CaptureOptions::default()
        });
        for _ in 0..10 {
            assert_eq!(s.next_frame().unwrap().image.dimensions(), (16, 16));
        }
    }
}
