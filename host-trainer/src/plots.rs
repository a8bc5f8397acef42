//! PNG plots for training and evaluation reports: ROC curves, score histograms and learning
//! curves.
//!
//! Conventions of this project: a higher score means "more normal", and normal is the
//! POSITIVE class. At a threshold `t` an image is accepted as normal when `score >= t`, so
//!
//! * true positive rate  = share of normal images with `score >= t`,
//! * false positive rate = share of anomalous images with `score >= t` (anomalies let through).
//!
//! Every plot is an 800x600 RGB PNG ([`PLOT_SIZE`]) on a white background. Text is drawn with
//! DejaVu Sans, embedded in the binary (`assets/DejaVuSans.ttf`, license in
//! `assets/DejaVuSans.LICENSE`) and rasterised by plotters' pure-Rust `ab_glyph` support, so no
//! system fonts or font libraries are needed at run time. Plotters 0.3.7 places `ab_glyph`
//! glyphs without their side bearings (uneven letter spacing) and, at odd sizes, some a row off
//! the baseline, so drawing goes through a thin backend wrapper (`GlyphFix`) that places each
//! glyph using the font's own metrics (ab_glyph).
//!
//! Inputs are checked before anything is drawn: empty data, mismatched lengths and NaN (or, for
//! histograms, infinite) values give a [`PlotError`] that names the output path, and the
//! output file is only written once the whole image has been rendered.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use plotters::coord::Shift;
use plotters::coord::types::RangedCoordf64;
use plotters::element::DashedPathElement;
use plotters::prelude::*;
use plotters::style::{FontStyle, register_font};
use plotters_backend::text_anchor::{HPos, VPos};
use plotters_backend::{self as backend, BackendColor, BackendCoord, DrawingErrorKind};

/// Width and height in pixels of every plot.
pub const PLOT_SIZE: (u32, u32) = (800, 600);

const FONT_BYTES: &[u8] = include_bytes!("../assets/DejaVuSans.ttf");
/// Plotters looks fonts up by family name; the default family of its labels is "sans-serif".
const FONT_FAMILY: &str = "sans-serif";

const TITLE_FONT_SIZE: f64 = 28.0;
const AXIS_DESC_FONT_SIZE: f64 = 19.0;
const TICK_FONT_SIZE: f64 = 16.0;
const LEGEND_FONT_SIZE: f64 = 17.0;

/// Tableau-10 colours, used in this order for successive series.
const PALETTE: [RGBColor; 10] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
    RGBColor(227, 119, 194),
    RGBColor(127, 127, 127),
    RGBColor(188, 189, 34),
    RGBColor(23, 190, 207),
];
const NORMAL_COLOR: RGBColor = PALETTE[0];
const ANOMALY_COLOR: RGBColor = PALETTE[3];
const INK: RGBColor = RGBColor(30, 30, 30);
const GRID_BOLD: RGBColor = RGBColor(215, 215, 215);
const GRID_LIGHT: RGBColor = RGBColor(238, 238, 238);

/// A plot could not be made: what was wrong, and for which output file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlotError {
    path: PathBuf,
    message: String,
}

impl PlotError {
    fn new(path: &Path, message: impl Into<String>) -> Self {
        Self {
            path: path.to_path_buf(),
            message: message.into(),
        }
    }

    /// The PNG that was not written.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// What was wrong, without the path.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl fmt::Display for PlotError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "plot {}: {}", self.path.display(), self.message)
    }
}

impl std::error::Error for PlotError {}

/// One line of a learning-curve plot.
#[derive(Debug, Clone, PartialEq)]
pub struct Series {
    /// Legend text; an empty label leaves the series out of the legend.
    pub label: String,
    /// `(x, y)` points, joined in order of increasing x.
    pub points: Vec<(f64, f64)>,
    /// Optional shaded band `(x, lo, hi)`, e.g. mean ± one standard deviation over seeds.
    pub band: Option<Vec<(f64, f64, f64)>>,
}

/// The ROC curve as `(false positive rate, true positive rate)` points, normal = positive and
/// higher score = more normal.
///
/// There is one point per distinct score threshold (like sklearn's `roc_curve` with
/// `drop_intermediate=False`): tied scores move both rates at once, giving a diagonal segment.
/// The points are sorted by threshold from high to low, hence by FPR (and TPR), start at
/// `(0, 0)` and end at `(1, 1)`; the trapezoidal area under them is the Mann-Whitney AUROC with
/// ties counting 1/2.
///
/// Returns an empty vector when the curve is undefined: empty input, lengths that differ, a NaN
/// score, or only one class present. Infinite scores are fine (only their order matters).
pub fn roc_points(scores: &[f64], is_normal: &[bool]) -> Vec<(f64, f64)> {
    if scores.is_empty() || scores.len() != is_normal.len() || scores.iter().any(|s| s.is_nan()) {
        return Vec::new();
    }
    let positives = is_normal.iter().filter(|&&n| n).count();
    let negatives = is_normal.len() - positives;
    if positives == 0 || negatives == 0 {
        return Vec::new();
    }
    let mut order: Vec<usize> = (0..scores.len()).collect();
    order.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]));

    let mut points = Vec::with_capacity(scores.len() + 1);
    points.push((0.0, 0.0));
    let (mut tp, mut fp) = (0usize, 0usize);
    let mut i = 0;
    while i < order.len() {
        let threshold = scores[order[i]];
        // `==` (not total_cmp) so that 0.0 and -0.0 form one threshold.
        while i < order.len() && scores[order[i]] == threshold {
            if is_normal[order[i]] {
                tp += 1;
            } else {
                fp += 1;
            }
            i += 1;
        }
        points.push((fp as f64 / negatives as f64, tp as f64 / positives as f64));
    }
    points
}

/// Trapezoidal area under `(x, y)` points sorted by x.
fn trapezoid_area(points: &[(f64, f64)]) -> f64 {
    points
        .windows(2)
        .map(|w| (w[1].0 - w[0].0) * (w[0].1 + w[1].1) / 2.0)
        .sum()
}

/// ROC curves, one per `(label, scores, is_normal)` entry, with the AUROC in the legend and the
/// chance diagonal dashed. See the module docs for the rates.
pub fn roc_png(
    path: &Path,
    title: &str,
    curves: &[(String, Vec<f64>, Vec<bool>)],
) -> Result<(), PlotError> {
    let err = |m: String| PlotError::new(path, m);
    if curves.is_empty() {
        return Err(err("no ROC curves given".into()));
    }
    let mut computed = Vec::with_capacity(curves.len());
    for (label, scores, is_normal) in curves {
        let name = format!("ROC curve '{label}'");
        if scores.is_empty() {
            return Err(err(format!("{name} has no scores")));
        }
        if scores.len() != is_normal.len() {
            return Err(err(format!(
                "{name} has {} scores but {} labels",
                scores.len(),
                is_normal.len()
            )));
        }
        if let Some(i) = scores.iter().position(|s| s.is_nan()) {
            return Err(err(format!("{name} has a NaN score at index {i}")));
        }
        let normals = is_normal.iter().filter(|&&n| n).count();
        if normals == 0 || normals == is_normal.len() {
            let missing = if normals == 0 { "normal" } else { "anomalous" };
            return Err(err(format!(
                "{name} has no {missing} images, so the ROC curve is undefined"
            )));
        }
        let points = roc_points(scores, is_normal);
        let auc = trapezoid_area(&points);
        computed.push((label.as_str(), points, auc));
    }

    let legend_pos = pick_legend_corner(
        computed.iter().flat_map(|(_, p, _)| p.iter().copied()),
        (0.0, 1.0),
        (0.0, 1.0),
        &[
            SeriesLabelPosition::LowerRight,
            SeriesLabelPosition::UpperLeft,
            SeriesLabelPosition::UpperRight,
            SeriesLabelPosition::LowerLeft,
        ],
    );

    render(path, |root| {
        let mut chart = chart_builder(root, title)
            .build_cartesian_2d(-0.01f64..1.01f64, -0.01f64..1.01f64)
            .map_err(draw_err)?;
        style_mesh(
            &mut chart,
            "false positive rate (share of anomalies accepted)",
            "true positive rate (share of normal images accepted)",
        )?;

        chart
            .draw_series(std::iter::once(DashedPathElement::new(
                vec![(0.0, 0.0), (1.0, 1.0)],
                6,
                5,
                RGBColor(150, 150, 150).stroke_width(1),
            )))
            .map_err(draw_err)?
            .label("chance")
            .legend(|(x, y)| {
                DashedPathElement::new(vec![(x, y), (x + 20, y)], 4, 3, RGBColor(150, 150, 150))
            });

        for (k, (label, points, auc)) in computed.iter().enumerate() {
            let color = PALETTE[k % PALETTE.len()];
            let style = color.stroke_width(3);
            chart
                .draw_series(LineSeries::new(points.iter().copied(), style))
                .map_err(draw_err)?
                .label(if label.is_empty() {
                    format!("AUROC {auc:.3}")
                } else {
                    format!("{label} (AUROC {auc:.3})")
                })
                .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], style));
        }
        draw_legend(&mut chart, legend_pos)
    })
}

/// Overlaid histograms of normal and anomalous scores over the same bins, each normalised to
/// its own class size (so classes of very different sizes stay comparable), with an optional
/// dashed vertical line at `threshold` = `(value, label)`.
///
/// One of the two sets may be empty (e.g. training scores of normal images only); both empty,
/// or any non-finite value, is an error. All-equal scores get a range around their value.
pub fn histogram_png(
    path: &Path,
    title: &str,
    x_label: &str,
    normal: &[f64],
    anomalous: &[f64],
    threshold: Option<(f64, &str)>,
) -> Result<(), PlotError> {
    let err = |m: String| PlotError::new(path, m);
    if normal.is_empty() && anomalous.is_empty() {
        return Err(err(
            "no scores given (normal and anomalous are both empty)".into()
        ));
    }
    for (name, values) in [("normal", normal), ("anomalous", anomalous)] {
        if let Some(i) = values.iter().position(|v| !v.is_finite()) {
            return Err(err(format!(
                "{name} score at index {i} is not finite ({})",
                values[i]
            )));
        }
    }
    if let Some((t, label)) = threshold
        && !t.is_finite()
    {
        return Err(err(format!("threshold '{label}' is not finite ({t})")));
    }

    let (mut lo, mut hi) = (f64::INFINITY, f64::NEG_INFINITY);
    for &v in normal
        .iter()
        .chain(anomalous)
        .chain(threshold.as_ref().map(|(t, _)| t))
    {
        lo = lo.min(v);
        hi = hi.max(v);
    }
    let (lo, hi) = widen_if_flat(lo, hi);
    let n_total = normal.len() + anomalous.len();
    // Odd, so that all-equal scores sit in the middle of the middle bin.
    let bins = ((n_total as f64).sqrt().ceil() as usize).clamp(10, 60) | 1;
    let width = (hi - lo) / bins as f64;
    let shares = |values: &[f64]| -> Vec<f64> {
        let mut counts = vec![0usize; bins];
        for &v in values {
            let b = (((v - lo) / width).floor().max(0.0) as usize).min(bins - 1);
            counts[b] += 1;
        }
        let n = values.len().max(1) as f64;
        counts.into_iter().map(|c| c as f64 / n).collect()
    };
    let normal_shares = shares(normal);
    let anomalous_shares = shares(anomalous);
    let y_max = normal_shares
        .iter()
        .chain(&anomalous_shares)
        .fold(0.0f64, |a, &b| a.max(b))
        .max(1e-9)
        * 1.12;
    let pad = 0.03 * (hi - lo);
    let x_range = (lo - pad, hi + pad);

    let bar_heights = normal_shares.iter().zip(&anomalous_shares).enumerate();
    let occupied = bar_heights.flat_map(|(b, (&n, &a))| {
        let x = lo + (b as f64 + 0.5) * width;
        let top = n.max(a);
        (0..=10).map(move |k| (x, top * k as f64 / 10.0))
    });
    let legend_pos = pick_legend_corner(
        occupied,
        x_range,
        (0.0, y_max),
        &[
            SeriesLabelPosition::UpperRight,
            SeriesLabelPosition::UpperLeft,
            SeriesLabelPosition::UpperMiddle,
        ],
    );

    render(path, |root| {
        let mut chart = chart_builder(root, title)
            .build_cartesian_2d(x_range.0..x_range.1, 0.0..y_max)
            .map_err(draw_err)?;
        style_mesh(&mut chart, x_label, "share of images in class")?;

        for (values, shares, color, name) in [
            (normal, &normal_shares, NORMAL_COLOR, "normal"),
            (anomalous, &anomalous_shares, ANOMALY_COLOR, "anomalous"),
        ] {
            if values.is_empty() {
                continue;
            }
            let fill = color.mix(0.40).filled();
            let bars = shares.iter().enumerate().filter(|(_, s)| **s > 0.0);
            chart
                .draw_series(bars.clone().map(|(b, &s)| {
                    let x0 = lo + b as f64 * width;
                    Rectangle::new([(x0, 0.0), (x0 + width, s)], fill)
                }))
                .map_err(draw_err)?
                .label(format!("{name} (n = {})", values.len()))
                .legend(move |(x, y)| Rectangle::new([(x, y - 6), (x + 20, y + 6)], fill));
            chart
                .draw_series(bars.map(|(b, &s)| {
                    let x0 = lo + b as f64 * width;
                    Rectangle::new([(x0, 0.0), (x0 + width, s)], color.mix(0.9).stroke_width(1))
                }))
                .map_err(draw_err)?;
        }

        if let Some((t, label)) = threshold {
            let style = INK.stroke_width(2);
            chart
                .draw_series(std::iter::once(DashedPathElement::new(
                    vec![(t, 0.0), (t, y_max)],
                    8,
                    5,
                    style,
                )))
                .map_err(draw_err)?
                .label(format!("{label} = {}", fmt_number(t)))
                .legend(move |(x, y)| {
                    DashedPathElement::new(vec![(x, y), (x + 20, y)], 5, 3, style)
                });
        }
        draw_legend(&mut chart, legend_pos)
    })
}

/// Learning curves: one line per [`Series`] (with markers when there are few points), each with
/// its optional shaded `(x, lo, hi)` band underneath.
pub fn curves_png(
    path: &Path,
    title: &str,
    x_label: &str,
    y_label: &str,
    series: &[Series],
) -> Result<(), PlotError> {
    let err = |m: String| PlotError::new(path, m);
    if series.is_empty() {
        return Err(err("no series given".into()));
    }
    let (mut x_lo, mut x_hi) = (f64::INFINITY, f64::NEG_INFINITY);
    let (mut y_lo, mut y_hi) = (f64::INFINITY, f64::NEG_INFINITY);
    for s in series {
        let name = format!("series '{}'", s.label);
        if s.points.is_empty() {
            return Err(err(format!("{name} has no points")));
        }
        if let Some(i) = s
            .points
            .iter()
            .position(|(x, y)| !x.is_finite() || !y.is_finite())
        {
            let (x, y) = s.points[i];
            return Err(err(format!("{name} point {i} is not finite ({x}, {y})")));
        }
        for &(x, y) in &s.points {
            x_lo = x_lo.min(x);
            x_hi = x_hi.max(x);
            y_lo = y_lo.min(y);
            y_hi = y_hi.max(y);
        }
        if let Some(band) = &s.band {
            for (i, &(x, lo, hi)) in band.iter().enumerate() {
                if !x.is_finite() || !lo.is_finite() || !hi.is_finite() {
                    return Err(err(format!(
                        "{name} band entry {i} is not finite ({x}, {lo}, {hi})"
                    )));
                }
                if lo > hi {
                    return Err(err(format!(
                        "{name} band entry {i} has lo {lo} above hi {hi}"
                    )));
                }
                x_lo = x_lo.min(x);
                x_hi = x_hi.max(x);
                y_lo = y_lo.min(lo);
                y_hi = y_hi.max(hi);
            }
        }
    }
    let (x_lo, x_hi) = widen_if_flat(x_lo, x_hi);
    let (y_lo, y_hi) = widen_if_flat(y_lo, y_hi);
    let x_pad = 0.02 * (x_hi - x_lo);
    let y_pad = 0.06 * (y_hi - y_lo);
    let x_range = (x_lo - x_pad, x_hi + x_pad);
    let y_range = (y_lo - y_pad, y_hi + y_pad);

    // Joined in order of x, whatever order the caller used.
    let sorted: Vec<Series> = series
        .iter()
        .map(|s| {
            let mut s = s.clone();
            s.points.sort_by(|a, b| a.0.total_cmp(&b.0));
            if let Some(band) = &mut s.band {
                band.sort_by(|p, q| p.0.total_cmp(&q.0));
            }
            s
        })
        .collect();

    let occupied = sorted.iter().flat_map(|s| {
        let band_pts = s
            .band
            .iter()
            .flatten()
            .flat_map(|&(x, lo, hi)| [(x, lo), (x, hi)]);
        s.points.iter().copied().chain(band_pts)
    });
    let legend_pos = pick_legend_corner(
        occupied,
        x_range,
        y_range,
        &[
            SeriesLabelPosition::LowerRight,
            SeriesLabelPosition::UpperRight,
            SeriesLabelPosition::UpperLeft,
            SeriesLabelPosition::LowerLeft,
        ],
    );

    render(path, |root| {
        let mut chart = chart_builder(root, title)
            .build_cartesian_2d(x_range.0..x_range.1, y_range.0..y_range.1)
            .map_err(draw_err)?;
        style_mesh(&mut chart, x_label, y_label)?;

        for (k, s) in sorted.iter().enumerate() {
            let color = PALETTE[k % PALETTE.len()];
            match s.band.as_deref() {
                None | Some([]) => {}
                Some([(x, lo, hi)]) => {
                    chart
                        .draw_series(std::iter::once(PathElement::new(
                            vec![(*x, *lo), (*x, *hi)],
                            color.mix(0.35).stroke_width(6),
                        )))
                        .map_err(draw_err)?;
                }
                Some(band) => {
                    let outline: Vec<(f64, f64)> = band
                        .iter()
                        .map(|&(x, _, hi)| (x, hi))
                        .chain(band.iter().rev().map(|&(x, lo, _)| (x, lo)))
                        .collect();
                    chart
                        .draw_series(std::iter::once(Polygon::new(
                            outline,
                            color.mix(0.20).filled(),
                        )))
                        .map_err(draw_err)?;
                }
            }
        }
        for (k, s) in sorted.iter().enumerate() {
            let points = &s.points;
            let color = PALETTE[k % PALETTE.len()];
            let style = color.stroke_width(3);
            let line = chart
                .draw_series(LineSeries::new(points.iter().copied(), style))
                .map_err(draw_err)?;
            if !s.label.is_empty() {
                line.label(s.label.clone())
                    .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], style));
            }
            if points.len() <= 60 {
                chart
                    .draw_series(points.iter().map(|&p| Circle::new(p, 3, color.filled())))
                    .map_err(draw_err)?;
            }
        }
        if series.iter().any(|s| !s.label.is_empty()) {
            draw_legend(&mut chart, legend_pos)?;
        }
        Ok(())
    })
}

/// The in-memory canvas every plot is drawn on.
type Canvas<'b> = GlyphFix<BitMapBackend<'b>>;
type Chart<'a, 'b> = ChartContext<'a, Canvas<'b>, Cartesian2d<RangedCoordf64, RangedCoordf64>>;

/// Renders into memory and writes `path` only when everything was drawn.
fn render<F>(path: &Path, draw: F) -> Result<(), PlotError>
where
    F: FnOnce(&DrawingArea<Canvas<'_>, Shift>) -> Result<(), String>,
{
    let is_png = path
        .extension()
        .and_then(|e| e.to_str())
        .is_some_and(|e| e.eq_ignore_ascii_case("png"));
    if !is_png {
        return Err(PlotError::new(
            path,
            "the output file name must end in .png",
        ));
    }
    register_embedded_font().map_err(|m| PlotError::new(path, m))?;

    let (w, h) = PLOT_SIZE;
    let mut pixels = vec![0u8; w as usize * h as usize * 3];
    {
        let root = GlyphFix(BitMapBackend::with_buffer(&mut pixels, PLOT_SIZE)).into_drawing_area();
        root.fill(&WHITE)
            .map_err(draw_err)
            .and_then(|()| draw(&root))
            .and_then(|()| root.present().map_err(draw_err))
            .map_err(|m| PlotError::new(path, format!("drawing failed: {m}")))?;
    }
    let mut file = BitMapBackend::new(path, PLOT_SIZE);
    file.blit_bitmap((0, 0), PLOT_SIZE, &pixels)
        .and_then(|()| file.present())
        .map_err(|e| PlotError::new(path, format!("could not write the PNG: {e}")))
}

/// Registers the embedded font with plotters under [`FONT_FAMILY`] (once per process).
fn register_embedded_font() -> Result<(), String> {
    static REGISTERED: OnceLock<Result<(), String>> = OnceLock::new();
    REGISTERED
        .get_or_init(|| {
            register_font(FONT_FAMILY, FontStyle::Normal, FONT_BYTES)
                .map_err(|_| "the embedded DejaVu Sans font could not be loaded".to_string())
        })
        .clone()
}

/// A drawing backend that draws text glyph by glyph at the right place, and wide lines
/// equally wide.
///
/// Plotters 0.3.7 with `ab_glyph` draws each glyph at the pen position but ignores the glyph's
/// left side bearing, so letters like "i", "l" and "1" shift left and words look unevenly
/// spaced. This wrapper delegates everything to the inner backend except text and wide paths.
/// Text it draws one character at a time with plotters' own rasteriser, at a pen moved by the
/// advance widths and offset by the bearing, both read from the embedded font (with ab_glyph).
/// Anchors and rotation are handled as plotters does.
struct GlyphFix<B>(B);

impl<B: DrawingBackend> GlyphFix<B> {
    /// The segment `a`-`b`, `width` pixels wide: for each pixel step along its major axis, a
    /// span across the minor axis centred on the line, `width / cos(slope)` long, its two end
    /// pixels painted in proportion to how much of them it covers.
    fn wide_segment(
        &mut self,
        a: BackendCoord,
        b: BackendCoord,
        width: f64,
        color: BackendColor,
    ) -> Result<(), DrawingErrorKind<B::ErrorType>> {
        let (dx, dy) = (b.0 - a.0, b.1 - a.1);
        if (dx, dy) == (0, 0) {
            return Ok(());
        }
        // Work in (major, minor) coordinates; `p` below maps back to (x, y).
        let steep = dy.abs() > dx.abs();
        let (a_major, a_minor, d_major, d_minor) = if steep {
            (a.1, a.0, dy, dx)
        } else {
            (a.0, a.1, dx, dy)
        };
        let slope = f64::from(d_minor) / f64::from(d_major);
        let half =
            0.5 * width * f64::from(d_major).hypot(f64::from(d_minor)) / f64::from(d_major.abs());
        let step = d_major.signum();
        for k in 0..=d_major.abs() {
            let major = a_major + k * step;
            let centre = f64::from(a_minor) + slope * f64::from(major - a_major);
            let (lo, hi) = (centre - half, centre + half);
            for minor in (lo.round() as i32)..=(hi.round() as i32) {
                // Pixel `minor` covers [minor - 0.5, minor + 0.5].
                let m = f64::from(minor);
                let cover = (hi.min(m + 0.5) - lo.max(m - 0.5)).clamp(0.0, 1.0);
                if cover <= 0.0 {
                    continue;
                }
                let p = if steep {
                    (minor, major)
                } else {
                    (major, minor)
                };
                let c = BackendColor {
                    alpha: color.alpha * cover,
                    rgb: color.rgb,
                };
                self.0.draw_pixel(p, c)?;
            }
        }
        Ok(())
    }
}

impl<B: DrawingBackend> DrawingBackend for GlyphFix<B> {
    type ErrorType = B::ErrorType;

    fn get_size(&self) -> (u32, u32) {
        self.0.get_size()
    }

    fn ensure_prepared(&mut self) -> Result<(), DrawingErrorKind<Self::ErrorType>> {
        self.0.ensure_prepared()
    }

    fn present(&mut self) -> Result<(), DrawingErrorKind<Self::ErrorType>> {
        self.0.present()
    }

    fn draw_pixel(
        &mut self,
        point: BackendCoord,
        color: BackendColor,
    ) -> Result<(), DrawingErrorKind<Self::ErrorType>> {
        self.0.draw_pixel(point, color)
    }

    fn draw_line<S: backend::BackendStyle>(
        &mut self,
        from: BackendCoord,
        to: BackendCoord,
        style: &S,
    ) -> Result<(), DrawingErrorKind<Self::ErrorType>> {
        self.0.draw_line(from, to, style)
    }

    fn draw_rect<S: backend::BackendStyle>(
        &mut self,
        upper_left: BackendCoord,
        bottom_right: BackendCoord,
        style: &S,
        fill: bool,
    ) -> Result<(), DrawingErrorKind<Self::ErrorType>> {
        self.0.draw_rect(upper_left, bottom_right, style, fill)
    }

    /// Wide paths are drawn one segment at a time, as anti-aliased spans across the segment's
    /// minor axis, with a disc at each joint. Plotters fills a wide path as one polygon around
    /// the whole line, and its rounding leaves some segments a pixel thinner than others,
    /// depending on their slope and on the turns next to them.
    fn draw_path<S: backend::BackendStyle, I: IntoIterator<Item = BackendCoord>>(
        &mut self,
        path: I,
        style: &S,
    ) -> Result<(), DrawingErrorKind<Self::ErrorType>> {
        let width = style.stroke_width();
        if width <= 1 || style.color().alpha == 0.0 {
            return self.0.draw_path(path, style);
        }
        let points: Vec<BackendCoord> = path.into_iter().collect();
        let color = style.color();
        for seg in points.windows(2) {
            self.wide_segment(seg[0], seg[1], f64::from(width), color)?;
        }
        if points.len() > 2 {
            for &p in &points[1..points.len() - 1] {
                self.0.draw_circle(p, width / 2, &color, true)?;
            }
        }
        Ok(())
    }

    fn draw_circle<S: backend::BackendStyle>(
        &mut self,
        center: BackendCoord,
        radius: u32,
        style: &S,
        fill: bool,
    ) -> Result<(), DrawingErrorKind<Self::ErrorType>> {
        self.0.draw_circle(center, radius, style, fill)
    }

    fn fill_polygon<S: backend::BackendStyle, I: IntoIterator<Item = BackendCoord>>(
        &mut self,
        vert: I,
        style: &S,
    ) -> Result<(), DrawingErrorKind<Self::ErrorType>> {
        self.0.fill_polygon(vert, style)
    }

    fn blit_bitmap(
        &mut self,
        pos: BackendCoord,
        size: (u32, u32),
        src: &[u8],
    ) -> Result<(), DrawingErrorKind<Self::ErrorType>> {
        self.0.blit_bitmap(pos, size, src)
    }

    fn draw_text<S: backend::BackendTextStyle>(
        &mut self,
        text: &str,
        style: &S,
        pos: BackendCoord,
    ) -> Result<(), DrawingErrorKind<Self::ErrorType>> {
        let font_err = |e: S::FontError| DrawingErrorKind::FontError(Box::new(e));
        if style.color().alpha == 0.0 || text.is_empty() {
            return Ok(());
        }
        // Same anchoring and transform as plotters' default `draw_text`.
        let ((min_x, min_y), (max_x, max_y)) = style.layout_box(text).map_err(font_err)?;
        let (width, height) = (max_x - min_x, max_y - min_y);
        let dx = match style.anchor().h_pos {
            HPos::Left => 0,
            HPos::Right => -width,
            HPos::Center => -width / 2,
        };
        let dy = match style.anchor().v_pos {
            VPos::Top => 0,
            VPos::Center => -height / 2,
            VPos::Bottom => -height,
        };
        let trans = style.transform();
        let (w, h) = self.get_size();
        let metrics = font_metrics();
        // Pixels per font unit, calibrated against plotters' own layout so both agree.
        let px_per_unit = match metrics.and_then(|m| m.advance('M')) {
            Some(adv) if adv > 0 => {
                const N: usize = 32;
                let probe = "M".repeat(N);
                let ((a, _), (b, _)) = style.layout_box(&probe).map_err(font_err)?;
                f64::from(b - a) / (N as f64 * f64::from(adv))
            }
            _ => 0.0,
        };
        let inner = &mut self.0;
        let mut buf = [0u8; 4];
        // The pen moves by each glyph's advance width and the font's kerning of each pair (kept
        // fractional, rounded where a glyph is placed), as plotters' own layout box measures
        // it; a character the font lacks advances by its width in plotters' layout.
        let mut pen = 0.0_f64;
        let mut prev = None;
        for c in text.chars() {
            if let (Some(m), Some(p)) = (metrics, prev) {
                pen += f64::from(m.kern(p, c)) * px_per_unit;
            }
            prev = Some(c);
            let x = pen.round() as i32;
            pen += match metrics.and_then(|m| m.advance(c)) {
                Some(adv) if px_per_unit > 0.0 => f64::from(adv) * px_per_unit,
                _ => {
                    let ((a, _), (b, _)) = style
                        .layout_box(c.encode_utf8(&mut buf))
                        .map_err(font_err)?;
                    f64::from(b - a)
                }
            };
            let bearing = metrics
                .and_then(|m| m.left_side_bearing(c))
                .map_or(0, |lsb| (f64::from(lsb) * px_per_unit).round() as i32);
            let rise = metrics.map_or(0, |m| m.baseline_fix(c, style.size()));
            let drawn = style
                .draw(
                    c.encode_utf8(&mut buf),
                    (x + bearing, rise),
                    |x, y, color| {
                        let (x, y) = trans.transform(x + dx - min_x, y + dy - min_y);
                        let (x, y) = (pos.0 + x, pos.1 + y);
                        if x >= 0 && x < w as i32 && y >= 0 && y < h as i32 {
                            inner.draw_pixel((x, y), color)
                        } else {
                            Ok(())
                        }
                    },
                )
                .map_err(font_err)?;
            drawn?;
        }
        Ok(())
    }
}

/// Glyph metrics of the embedded font (ab_glyph, the parser plotters itself uses).
#[derive(Debug, Clone)]
struct FontMetrics {
    font: ab_glyph::FontRef<'static>,
}

/// `None` when the font cannot be parsed (text is then drawn as plotters does).
fn font_metrics() -> Option<&'static FontMetrics> {
    static METRICS: OnceLock<Option<FontMetrics>> = OnceLock::new();
    METRICS
        .get_or_init(|| {
            ab_glyph::FontRef::try_from_slice(FONT_BYTES)
                .ok()
                .map(|font| FontMetrics { font })
        })
        .as_ref()
}

impl FontMetrics {
    fn glyph(&self, c: char) -> Option<ab_glyph::GlyphId> {
        use ab_glyph::Font;
        let id = self.font.glyph_id(c);
        (id.0 != 0).then_some(id)
    }

    /// Advance width in font units.
    fn advance(&self, c: char) -> Option<u16> {
        use ab_glyph::Font;
        self.glyph(c)
            .map(|g| self.font.h_advance_unscaled(g).round() as u16)
    }

    /// Left side bearing in font units.
    fn left_side_bearing(&self, c: char) -> Option<i16> {
        use ab_glyph::Font;
        self.glyph(c)
            .map(|g| self.font.h_side_bearing_unscaled(g).round() as i16)
    }

    /// Kerning of the pair `first`, `second` in font units (negative: closer together).
    fn kern(&self, first: char, second: char) -> i16 {
        use ab_glyph::Font;
        match (self.glyph(first), self.glyph(second)) {
            (Some(a), Some(b)) => self.font.kern_unscaled(a, b).round() as i16,
            _ => 0,
        }
    }

    /// Rows to add to where plotters puts glyph `c` at `size` px so that it sits on the same
    /// baseline as every other glyph.
    ///
    /// Plotters places a glyph's top row at `(size / 2 + top) as i32`, `top` being the
    /// (whole, negative) pixel row of the glyph's top relative to the baseline. The cast
    /// truncates towards zero, so at odd sizes glyphs with `size / 2 + top` just below zero
    /// land a row lower than the others (at 17 px the "n"s of "ntxent" sat a row below its
    /// "x"). Flooring keeps every glyph's baseline at `floor(size / 2)`.
    fn baseline_fix(&self, c: char, size: f64) -> i32 {
        use ab_glyph::{Font, ScaleFont};
        let font = self.font.as_scaled(size as f32);
        let Some(outline) = font.outline_glyph(font.scaled_glyph(c)) else {
            return 0;
        };
        let shift = size as f32 / 2.0 + outline.px_bounds().min.y;
        shift.floor() as i32 - shift as i32
    }
}

fn draw_err(e: impl fmt::Display) -> String {
    e.to_string()
}

fn chart_builder<'a, 'b>(
    root: &'a DrawingArea<Canvas<'b>, Shift>,
    title: &str,
) -> ChartBuilder<'a, 'b, Canvas<'b>> {
    let mut builder = ChartBuilder::on(root);
    builder
        .caption(
            title,
            (FONT_FAMILY, TITLE_FONT_SIZE).into_font().color(&INK),
        )
        .margin(18)
        .margin_top(14)
        .x_label_area_size(52)
        .y_label_area_size(72);
    builder
}

fn style_mesh(chart: &mut Chart<'_, '_>, x_label: &str, y_label: &str) -> Result<(), String> {
    let tick = |v: &f64| fmt_tick(*v);
    chart
        .configure_mesh()
        .bold_line_style(GRID_BOLD)
        .light_line_style(GRID_LIGHT)
        .max_light_lines(1)
        .axis_style(INK.mix(0.8))
        .x_labels(8)
        .y_labels(8)
        .x_label_formatter(&tick)
        .y_label_formatter(&tick)
        .label_style((FONT_FAMILY, TICK_FONT_SIZE).into_font().color(&INK))
        .axis_desc_style((FONT_FAMILY, AXIS_DESC_FONT_SIZE).into_font().color(&INK))
        .x_desc(x_label)
        .y_desc(y_label)
        .draw()
        .map_err(draw_err)
}

fn draw_legend<'a, 'b: 'a>(
    chart: &mut Chart<'a, 'b>,
    position: SeriesLabelPosition,
) -> Result<(), String> {
    chart
        .configure_series_labels()
        .position(position)
        .margin(12)
        .legend_area_size(28)
        .background_style(WHITE.mix(0.88))
        .border_style(RGBColor(170, 170, 170))
        .label_font((FONT_FAMILY, LEGEND_FONT_SIZE).into_font().color(&INK))
        .draw()
        .map_err(draw_err)
}

/// The first corner in `preference` whose box (outer 45% of x, outer 35% of y) holds the
/// fewest of the `points` (data coordinates within the given axis ranges).
fn pick_legend_corner(
    points: impl Iterator<Item = (f64, f64)>,
    x_range: (f64, f64),
    y_range: (f64, f64),
    preference: &[SeriesLabelPosition],
) -> SeriesLabelPosition {
    let mut counts = vec![0usize; preference.len()];
    let (xw, yw) = (x_range.1 - x_range.0, y_range.1 - y_range.0);
    for (x, y) in points {
        let u = (x - x_range.0) / xw;
        let v = (y - y_range.0) / yw;
        for (c, pos) in counts.iter_mut().zip(preference) {
            let inside = match pos {
                SeriesLabelPosition::UpperLeft => u <= 0.45 && v >= 0.65,
                SeriesLabelPosition::UpperRight => u >= 0.55 && v >= 0.65,
                SeriesLabelPosition::LowerLeft => u <= 0.45 && v <= 0.35,
                SeriesLabelPosition::LowerRight => u >= 0.55 && v <= 0.35,
                SeriesLabelPosition::UpperMiddle => (0.25..=0.75).contains(&u) && v >= 0.65,
                _ => false,
            };
            *c += usize::from(inside);
        }
    }
    let best = counts
        .iter()
        .enumerate()
        .min_by_key(|&(i, &c)| (c, i))
        .map_or(0, |(i, _)| i);
    preference
        .get(best)
        .cloned()
        .unwrap_or(SeriesLabelPosition::UpperRight)
}

/// A non-empty range around `lo..=hi`, widened when all values are equal.
fn widen_if_flat(lo: f64, hi: f64) -> (f64, f64) {
    if hi - lo > 1e-12 * lo.abs().max(hi.abs()).max(1e-300) {
        (lo, hi)
    } else {
        let half = if lo == 0.0 { 0.5 } else { 0.1 * lo.abs() };
        (lo - half, lo + half)
    }
}

/// Short tick label: up to 4 significant digits, scientific for very large or small values.
fn fmt_tick(v: f64) -> String {
    let a = v.abs();
    if a < 1e-12 {
        "0".into()
    } else if !(1e-3..1e5).contains(&a) {
        format!("{v:.1e}")
    } else {
        let decimals = (3 - a.log10().floor() as i32).clamp(0, 6) as usize;
        let s = format!("{v:.decimals$}");
        if s.contains('.') {
            s.trim_end_matches('0').trim_end_matches('.').to_string()
        } else {
            s
        }
    }
}

/// A number for a legend: 4 significant digits, scientific for very large or small values.
fn fmt_number(v: f64) -> String {
    let a = v.abs();
    if a != 0.0 && !(1e-3..1e5).contains(&a) {
        format!("{v:.3e}")
    } else {
        let decimals = if a == 0.0 {
            0
        } else {
            (3 - a.log10().floor() as i32).clamp(0, 6) as usize
        };
        format!("{v:.decimals$}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// xorshift64*: deterministic test data without extra dependencies.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
        }
        fn uniform(&mut self) -> f64 {
            (self.next() >> 11) as f64 / (1u64 << 53) as f64
        }
        fn normal(&mut self) -> f64 {
            let u = self.uniform().max(1e-12);
            let v = self.uniform();
            (-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos()
        }
    }

    fn out_dir() -> tempfile::TempDir {
        tempfile::tempdir().expect("temporary directory")
    }

    fn mann_whitney(scores: &[f64], is_normal: &[bool]) -> f64 {
        let mut wins = 0.0;
        let mut pairs = 0.0;
        for (i, &si) in scores.iter().enumerate() {
            for (j, &sj) in scores.iter().enumerate() {
                if is_normal[i] && !is_normal[j] {
                    pairs += 1.0;
                    if si > sj {
                        wins += 1.0;
                    } else if si == sj {
                        wins += 0.5;
                    }
                }
            }
        }
        wins / pairs
    }

    /// Decodes the PNG, checks its size and that it is not one flat colour; returns it.
    fn load_png(path: &Path) -> image::RgbImage {
        let img = image::open(path)
            .unwrap_or_else(|e| panic!("{} is not a decodable PNG: {e}", path.display()))
            .to_rgb8();
        assert_eq!(img.dimensions(), PLOT_SIZE, "{}", path.display());
        let first = *img.get_pixel(0, 0);
        let distinct = img.pixels().filter(|p| **p != first).count();
        assert!(
            distinct > 1000,
            "{} is (almost) one flat colour",
            path.display()
        );
        img
    }

    fn is_dark(p: &image::Rgb<u8>) -> bool {
        p.0.iter().map(|&c| u32::from(c)).sum::<u32>() < 3 * 100
    }

    /// Dark pixels in rows `rows` (the title band when rows = 0..40).
    fn dark_pixels(img: &image::RgbImage, rows: std::ops::Range<u32>) -> usize {
        rows.flat_map(|y| (0..img.width()).map(move |x| (x, y)))
            .filter(|&(x, y)| is_dark(img.get_pixel(x, y)))
            .count()
    }

    fn assert_error_names_path(result: Result<(), PlotError>, path: &Path, needle: &str) {
        let e = result.expect_err("expected an error");
        let text = e.to_string();
        assert!(
            text.contains(&path.display().to_string()),
            "error does not name the path: {text}"
        );
        assert!(text.contains(needle), "error '{text}' lacks '{needle}'");
        assert_eq!(e.path(), path);
        assert!(
            !path.exists(),
            "{} was written despite the error",
            path.display()
        );
    }

    #[test]
    fn roc_points_hand_example_with_ties() {
        // N = normal, A = anomaly; 0.8 and 0.3 are tied across classes.
        let scores = [0.9, 0.8, 0.8, 0.5, 0.3, 0.3, 0.1];
        let normal = [true, false, true, false, true, false, false];
        let expected = [
            (0.0, 0.0),
            (0.0, 1.0 / 3.0),
            (0.25, 2.0 / 3.0),
            (0.5, 2.0 / 3.0),
            (0.75, 1.0),
            (1.0, 1.0),
        ];
        let got = roc_points(&scores, &normal);
        assert_eq!(got.len(), expected.len(), "{got:?}");
        for (g, e) in got.iter().zip(&expected) {
            assert!(
                (g.0 - e.0).abs() < 1e-12 && (g.1 - e.1).abs() < 1e-12,
                "{got:?}"
            );
        }
        assert!((trapezoid_area(&got) - 0.75).abs() < 1e-12);
        assert!((mann_whitney(&scores, &normal) - 0.75).abs() < 1e-12);

        // All scores tied: a single diagonal step, AUROC 1/2.
        let flat = roc_points(&[0.3; 4], &[true, false, true, false]);
        assert_eq!(flat, vec![(0.0, 0.0), (1.0, 1.0)]);
        assert_eq!(trapezoid_area(&flat), 0.5);
    }

    #[test]
    fn roc_points_order_does_not_matter_and_signed_zero_is_one_threshold() {
        let scores = [0.0, 1.0, -0.0, 2.0];
        let normal = [true, true, false, false];
        let got = roc_points(&scores, &normal);
        assert_eq!(got, vec![(0.0, 0.0), (0.5, 0.0), (0.5, 0.5), (1.0, 1.0)]);
    }

    #[test]
    fn roc_points_undefined_inputs_give_empty() {
        assert!(roc_points(&[], &[]).is_empty());
        assert!(roc_points(&[1.0, 2.0], &[true]).is_empty());
        assert!(roc_points(&[1.0, f64::NAN], &[true, false]).is_empty());
        assert!(roc_points(&[1.0, 2.0], &[true, true]).is_empty());
        assert!(roc_points(&[1.0, 2.0], &[false, false]).is_empty());
        let inf = roc_points(&[f64::INFINITY, f64::NEG_INFINITY], &[true, false]);
        assert_eq!(inf, vec![(0.0, 0.0), (0.0, 1.0), (1.0, 1.0)]);
    }

    #[test]
    fn roc_area_equals_mann_whitney_on_random_data() {
        let mut rng = Rng(0x9E37_79B9_7F4A_7C15);
        for trial in 0..40 {
            let n = 2 + (rng.next() % 300) as usize;
            // Coarse scores so that ties (within and across classes) are common.
            let levels = 1 + rng.next() % 25;
            let mut normal: Vec<bool> = (0..n).map(|_| !rng.next().is_multiple_of(3)).collect();
            normal[0] = true;
            normal[1] = false;
            let scores: Vec<f64> = normal
                .iter()
                .map(|&nm| ((rng.next() % levels) as f64 + if nm { 2.0 } else { 0.0 }) / 7.0)
                .collect();
            let pts = roc_points(&scores, &normal);
            assert_eq!(pts.first(), Some(&(0.0, 0.0)));
            assert_eq!(pts.last(), Some(&(1.0, 1.0)));
            assert!(pts.windows(2).all(|w| w[0].0 <= w[1].0 && w[0].1 <= w[1].1));
            let mut distinct = scores.clone();
            distinct.sort_by(f64::total_cmp);
            distinct.dedup();
            assert_eq!(pts.len(), distinct.len() + 1, "one point per threshold");
            let (a, b) = (trapezoid_area(&pts), mann_whitney(&scores, &normal));
            assert!((a - b).abs() < 1e-12, "trial {trial}: area {a} vs U {b}");
        }
    }

    #[test]
    fn roc_png_writes_readable_png_with_title() {
        let dir = out_dir();
        let mut rng = Rng(7);
        let curves: Vec<(String, Vec<f64>, Vec<bool>)> =
            [("resnet18 layer2+3", 1.6), ("patch SVDD", 0.7)]
                .iter()
                .map(|&(name, shift)| {
                    let normal: Vec<bool> = (0..400).map(|i| i % 4 != 0).collect();
                    let scores = normal
                        .iter()
                        .map(|&n| rng.normal() + if n { shift } else { 0.0 })
                        .collect();
                    (name.to_string(), scores, normal)
                })
                .collect();
        let path = dir.path().join("roc.png");
        roc_png(&path, "ROC: bottle test set", &curves).unwrap();
        let img = load_png(&path);
        assert!(dark_pixels(&img, 0..40) > 200, "title did not render");
        let h = img.height();
        assert!(
            dark_pixels(&img, h - 35..h) > 200,
            "x axis label did not render"
        );
    }

    /// A wide path is as wide on every segment, whatever its slope and turns: the ink across
    /// the middle of each segment is what a line `width` pixels wide covers at that slope
    /// (plotters' own polygon gives the second segment 1.89 of its 2.38 px, the visibly thin
    /// line of a bench curve).
    #[test]
    fn wide_paths_keep_their_width_on_every_segment() {
        let (w, h) = (800u32, 600u32);
        let mut pixels = vec![255u8; (w * h * 3) as usize];
        // Slopes from flat to steep, with sharp turns (an AUROC curve of a real bench run).
        let path = [
            (103, 467),
            (238, 504),
            (368, 302),
            (502, 342),
            (632, 379),
            (767, 258),
            (780, 20),
        ];
        let width = 2;
        {
            let mut canvas = GlyphFix(BitMapBackend::with_buffer(&mut pixels, (w, h)));
            canvas.draw_path(path, &BLACK.stroke_width(width)).unwrap();
            canvas.present().unwrap();
        }
        // Ink of a pixel: 0 (white) to 1 (black); anti-aliased edges count in part.
        let ink = |x: i32, y: i32| {
            1.0 - f64::from(pixels[((y as u32 * w + x as u32) * 3) as usize]) / 255.0
        };
        for seg in path.windows(2) {
            let (a, b) = (seg[0], seg[1]);
            let (dx, dy) = (f64::from(b.0 - a.0), f64::from(b.1 - a.1));
            let (mx, my) = ((a.0 + b.0) / 2, (a.1 + b.1) / 2);
            // Ink across the minor axis through the midpoint, against what a line `width`
            // pixels wide at this slope covers there.
            let steep = dy.abs() > dx.abs();
            let ink_across: f64 = (-8..=8)
                .map(|d| {
                    if steep {
                        ink(mx + d, my)
                    } else {
                        ink(mx, my + d)
                    }
                })
                .sum();
            let expected = f64::from(width) * dx.hypot(dy) / dx.abs().max(dy.abs());
            assert!(
                ink_across >= 0.95 * expected,
                "segment {a:?} -> {b:?}: {ink_across:.2} px of ink across its middle, \
                 {expected:.2} expected"
            );
        }
    }

    #[test]
    fn histogram_png_writes_readable_png_with_threshold() {
        let dir = out_dir();
        let mut rng = Rng(11);
        let normal: Vec<f64> = (0..900).map(|_| 2.0 + 0.6 * rng.normal()).collect();
        let anomalous: Vec<f64> = (0..120).map(|_| 0.4 + 0.9 * rng.normal()).collect();
        let path = dir.path().join("hist.png");
        histogram_png(
            &path,
            "Image scores: bottle test set",
            "image score (higher = more normal)",
            &normal,
            &anomalous,
            Some((1.05, "threshold (FPR 5%)")),
        )
        .unwrap();
        let img = load_png(&path);
        assert!(dark_pixels(&img, 0..40) > 200, "title did not render");
        // Both class colours appear (blended or not).
        let bluish = img
            .pixels()
            .filter(|p| p[2] > p[0].saturating_add(40))
            .count();
        let reddish = img
            .pixels()
            .filter(|p| p[0] > p[2].saturating_add(40))
            .count();
        assert!(bluish > 2000 && reddish > 2000, "{bluish} {reddish}");
    }

    #[test]
    fn histogram_png_handles_all_equal_and_one_empty_class() {
        let dir = out_dir();
        let path = dir.path().join("flat.png");
        histogram_png(&path, "All equal", "score", &[0.7; 50], &[0.7; 5], None).unwrap();
        load_png(&path);
        let path = dir.path().join("zero.png");
        histogram_png(&path, "All zero", "score", &[0.0; 3], &[], Some((0.0, "t"))).unwrap();
        load_png(&path);
        let path = dir.path().join("single.png");
        histogram_png(&path, "One anomaly", "score", &[], &[-3.5], None).unwrap();
        load_png(&path);
    }

    #[test]
    fn curves_png_writes_readable_png_with_bands() {
        let dir = out_dir();
        let epochs: Vec<f64> = (1..=30).map(f64::from).collect();
        let mean = |e: f64, top: f64| top - 0.35 * (-e / 6.0).exp();
        let series = vec![
            Series {
                label: "train (mean ± sd, 5 seeds)".into(),
                points: epochs.iter().map(|&e| (e, mean(e, 0.97))).collect(),
                band: Some(
                    epochs
                        .iter()
                        .map(|&e| (e, mean(e, 0.97) - 0.03, (mean(e, 0.97) + 0.03).min(1.0)))
                        .collect(),
                ),
            },
            Series {
                label: "validation".into(),
                points: epochs.iter().map(|&e| (e, mean(e, 0.91))).collect(),
                band: None,
            },
        ];
        let path = dir.path().join("curves.png");
        curves_png(&path, "Learning curves", "epoch", "image AUROC", &series).unwrap();
        let img = load_png(&path);
        assert!(dark_pixels(&img, 0..40) > 200, "title did not render");

        // A single point with a single band entry, and an unlabelled series.
        let path = dir.path().join("single.png");
        let one = vec![Series {
            label: String::new(),
            points: vec![(3.0, 0.5)],
            band: Some(vec![(3.0, 0.4, 0.6)]),
        }];
        curves_png(&path, "One point", "epoch", "loss", &one).unwrap();
        load_png(&path);
    }

    #[test]
    fn roc_errors_name_the_path() {
        let dir = out_dir();
        let p = dir.path().join("bad.png");
        let c = |s: Vec<f64>, n: Vec<bool>| vec![("m".to_string(), s, n)];
        assert_error_names_path(roc_png(&p, "t", &[]), &p, "no ROC curves");
        assert_error_names_path(roc_png(&p, "t", &c(vec![], vec![])), &p, "no scores");
        assert_error_names_path(
            roc_png(&p, "t", &c(vec![1.0, 2.0], vec![true])),
            &p,
            "2 scores but 1 labels",
        );
        assert_error_names_path(
            roc_png(&p, "t", &c(vec![1.0, f64::NAN], vec![true, false])),
            &p,
            "NaN",
        );
        assert_error_names_path(
            roc_png(&p, "t", &c(vec![1.0, 2.0], vec![true, true])),
            &p,
            "no anomalous",
        );
        let txt = dir.path().join("roc.txt");
        assert_error_names_path(
            roc_png(&txt, "t", &c(vec![1.0, 2.0], vec![true, false])),
            &txt,
            ".png",
        );
        let missing = dir.path().join("no_such_dir").join("roc.png");
        assert_error_names_path(
            roc_png(&missing, "t", &c(vec![1.0, 2.0], vec![true, false])),
            &missing,
            "could not write",
        );
    }

    #[test]
    fn histogram_errors_name_the_path() {
        let dir = out_dir();
        let p = dir.path().join("bad.png");
        assert_error_names_path(histogram_png(&p, "t", "x", &[], &[], None), &p, "no scores");
        assert_error_names_path(
            histogram_png(&p, "t", "x", &[1.0, f64::NAN], &[], None),
            &p,
            "normal score at index 1",
        );
        assert_error_names_path(
            histogram_png(&p, "t", "x", &[1.0], &[f64::INFINITY], None),
            &p,
            "anomalous score at index 0",
        );
        assert_error_names_path(
            histogram_png(&p, "t", "x", &[1.0], &[0.0], Some((f64::NAN, "thr"))),
            &p,
            "threshold 'thr'",
        );
    }

    #[test]
    fn curves_errors_name_the_path() {
        let dir = out_dir();
        let p = dir.path().join("bad.png");
        let s = |points: Vec<(f64, f64)>, band: Option<Vec<(f64, f64, f64)>>| {
            vec![Series {
                label: "val".into(),
                points,
                band,
            }]
        };
        assert_error_names_path(curves_png(&p, "t", "x", "y", &[]), &p, "no series");
        assert_error_names_path(
            curves_png(&p, "t", "x", "y", &s(vec![], None)),
            &p,
            "no points",
        );
        assert_error_names_path(
            curves_png(&p, "t", "x", "y", &s(vec![(1.0, f64::NAN)], None)),
            &p,
            "not finite",
        );
        assert_error_names_path(
            curves_png(
                &p,
                "t",
                "x",
                "y",
                &s(vec![(1.0, 0.5)], Some(vec![(1.0, 0.6, 0.4)])),
            ),
            &p,
            "lo 0.6 above hi 0.4",
        );
    }

    /// Letters without descenders end on one baseline at every font size the plots use and at
    /// sizes between: plotters alone drew the "n"s of a 17 px "ntxent" a row below its "x".
    #[test]
    fn glyphs_sit_on_one_baseline() {
        let text = "ntxent mvtec 0123456789";
        for size in [13.0, 16.0, 17.0, 19.0, 21.5, 28.0] {
            let (w, h) = (600u32, 80u32);
            let mut pixels = vec![255u8; (w * h * 3) as usize];
            {
                register_embedded_font().unwrap();
                let root =
                    GlyphFix(BitMapBackend::with_buffer(&mut pixels, (w, h))).into_drawing_area();
                let style = (FONT_FAMILY, size).into_font().color(&BLACK);
                root.draw_text(text, &style, (10, 10)).unwrap();
                root.present().unwrap();
            }
            let dark = |x: u32, y: u32| pixels[((y * w + x) * 3) as usize] < 128;
            let column_bottom = |x: u32| (0..h).rev().find(|&y| dark(x, y));
            // Each run of inked columns is one glyph; its lowest dark row is its baseline.
            let mut bottoms = Vec::new();
            let mut glyph: Option<u32> = None;
            for x in 0..w {
                match (column_bottom(x), glyph) {
                    (Some(y), g) => glyph = Some(g.map_or(y, |g| g.max(y))),
                    (None, Some(g)) => {
                        bottoms.push(g);
                        glyph = None;
                    }
                    (None, None) => {}
                }
            }
            let glyphs = text.chars().filter(|c| *c != ' ').count();
            assert!(
                bottoms.len() >= glyphs - 4,
                "{size} px: {} glyphs found, {glyphs} drawn",
                bottoms.len()
            );
            let (lo, hi) = (bottoms.iter().min().unwrap(), bottoms.iter().max().unwrap());
            assert_eq!(lo, hi, "{size} px: glyph bottoms {bottoms:?}");
        }
    }

    /// Glyphs are placed where plotters' own layout puts them, kerning included: the last
    /// glyph of a heavily kerned string ("Te" is kerned by 348 of 2,048 units) ends as far
    /// right of where it ends alone as the layout box says its pen moved.
    #[test]
    fn glyph_positions_follow_the_layout_with_kerning() {
        register_embedded_font().unwrap();
        let size = 28.0;
        let style = (FONT_FAMILY, size).into_font().color(&BLACK);
        let (w, h) = (700u32, 60u32);
        let ink_right = |text: &str| {
            let mut pixels = vec![255u8; (w * h * 3) as usize];
            {
                let root =
                    GlyphFix(BitMapBackend::with_buffer(&mut pixels, (w, h))).into_drawing_area();
                root.draw_text(text, &style, (0, 10)).unwrap();
                root.present().unwrap();
            }
            (0..w)
                .rev()
                .find(|&x| (0..h).any(|y| pixels[((y * w + x) * 3) as usize] < 128))
                .unwrap() as i32
        };
        let layout_width = |text: &str| style.font.box_size(text).unwrap().0 as i32;
        for text in ["TeTeTeTe", "AVAVAV Yo", "ntxent mvtec"] {
            let last = &text[text.len() - 1..];
            let moved = ink_right(text) - ink_right(last);
            let pen = layout_width(text) - layout_width(last);
            assert!(
                (moved - pen).abs() <= 1,
                "{text:?}: last glyph drawn {moved} px right of its lone place, layout says {pen}"
            );
        }
    }

    #[test]
    fn embedded_font_metrics_are_read() {
        let m = font_metrics().expect("the embedded font parses");
        // DejaVu Sans, 2048 units per em.
        assert_eq!(m.advance('M'), Some(1767));
        assert_eq!(m.left_side_bearing('M'), Some(201));
        assert_eq!(m.left_side_bearing('1'), Some(225));
        assert_eq!(m.kern('x', 'e'), -63);
        assert_eq!(m.kern('T', 'e'), -348);
        assert_eq!(m.kern('n', 't'), 0);
        assert!(m.glyph('≥').is_some());
        assert_eq!(m.glyph('\u{10FFFF}'), None);
    }

    #[test]
    fn number_formats() {
        assert_eq!(fmt_tick(0.0), "0");
        assert_eq!(fmt_tick(0.25), "0.25");
        assert_eq!(fmt_tick(1200.0), "1200");
        assert_eq!(fmt_tick(-3.5), "-3.5");
        assert_eq!(fmt_number(1.05), "1.050");
        assert_eq!(fmt_number(123456.0), "1.235e5");
    }
}
