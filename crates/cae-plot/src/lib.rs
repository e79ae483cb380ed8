//! Line charts for caec's figures: the rate–distortion curves of `cargo bench --bench rd` and
//! the training curves of `caec-train`. One or more panels stacked vertically, written as PNG
//! (and SVG on request) with plotters. Text needs a TrueType font: `CAEC_FONT`, else a common
//! system one ([`register_font`]).
#![forbid(unsafe_code)]

use std::ops::Range;
use std::path::{Path, PathBuf};

use plotters::coord::Shift;
use plotters::element::DashedPathElement;
use plotters::prelude::*;

/// Why a chart was not written.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PlotError {
    #[error("no TrueType font found (set CAEC_FONT to a .ttf file)")]
    NoFont,
    #[error("{0}: not a usable font")]
    BadFont(PathBuf),
    #[error("plotting: {0}")]
    Draw(String),
    #[error("{0}: {1}")]
    Write(PathBuf, image::ImageError),
}

/// How a curve is drawn.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Style {
    /// A line with a dot at every point.
    LineDots,
    /// A plain line (for dense series such as training logs).
    Line,
    /// A dashed line (published reference curves).
    Dashed,
    /// Dots only.
    Dots,
}

/// One series of a panel.
#[derive(Clone, Debug)]
pub struct Curve {
    pub name: String,
    pub points: Vec<(f64, f64)>,
    pub style: Style,
    pub colour: (u8, u8, u8),
}

/// One chart: axes, ranges and curves. A curve named "" stays out of the legend.
#[derive(Clone, Debug)]
pub struct Panel {
    pub title: String,
    pub x_label: String,
    pub y_label: String,
    pub x_range: Range<f64>,
    pub y_range: Range<f64>,
    pub curves: Vec<Curve>,
}

/// A colour for series `i` of a chart: distinct for the first ten.
pub fn palette(i: usize) -> (u8, u8, u8) {
    const COLOURS: [(u8, u8, u8); 10] = [
        (200, 30, 30),
        (30, 30, 200),
        (30, 150, 30),
        (220, 140, 0),
        (150, 60, 160),
        (0, 150, 150),
        (100, 100, 100),
        (120, 160, 220),
        (90, 90, 200),
        (160, 110, 60),
    ];
    COLOURS[i % COLOURS.len()]
}

/// The smallest range that holds every point of the panels' curves along one axis, padded by
/// 5 % on each side (1 when all values are equal; 0..1 when there are none).
pub fn span<'a>(values: impl IntoIterator<Item = &'a f64>) -> Range<f64> {
    let (lo, hi) = values
        .into_iter()
        .filter(|v| v.is_finite())
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), &v| (lo.min(v), hi.max(v)));
    if !lo.is_finite() {
        return 0.0..1.0;
    }
    let pad = if hi > lo { 0.05 * (hi - lo) } else { 1.0 };
    lo - pad..hi + pad
}

/// Register the font that the charts' text uses, once: `CAEC_FONT`, else a common system one.
pub fn register_font() -> Result<(), PlotError> {
    static FONT: std::sync::OnceLock<Result<(), String>> = std::sync::OnceLock::new();
    let outcome = FONT.get_or_init(|| {
        let candidates = std::env::var_os("CAEC_FONT").map(PathBuf::from).into_iter().chain(
            [
                "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
                "/usr/share/fonts/dejavu/DejaVuSans.ttf",
                "/usr/share/fonts/TTF/DejaVuSans.ttf",
                "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
                "/Library/Fonts/Arial.ttf",
                "/System/Library/Fonts/Supplemental/Arial.ttf",
                "C:\\Windows\\Fonts\\arial.ttf",
            ]
            .map(PathBuf::from),
        );
        for path in candidates {
            if let Ok(bytes) = std::fs::read(&path) {
                let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
                return plotters::style::register_font("sans-serif", FontStyle::Normal, bytes)
                    .map_err(|_| path.display().to_string());
            }
        }
        Err(String::new())
    });
    match outcome {
        Ok(()) => Ok(()),
        Err(p) if p.is_empty() => Err(PlotError::NoFont),
        Err(p) => Err(PlotError::BadFont(PathBuf::from(p))),
    }
}

/// Draw `panels` stacked vertically, each `panel_size` pixels, into `png` (and `svg` if given).
/// Writes go through a temporary file beside the target, so a reader never sees half a file.
pub fn save(panels: &[Panel], panel_size: (u32, u32), png: &Path, svg: Option<&Path>) -> Result<(), PlotError> {
    register_font()?;
    let (w, h) = (panel_size.0, panel_size.1 * panels.len().max(1) as u32);
    if let Some(svg) = svg {
        let tmp = temporary(svg);
        draw_all(SVGBackend::new(&tmp, (w, h)).into_drawing_area(), panels)?;
        std::fs::rename(&tmp, svg).map_err(|e| PlotError::Write(svg.to_path_buf(), e.into()))?;
    }
    let mut buf = vec![0u8; (w * h * 3) as usize];
    draw_all(BitMapBackend::with_buffer(&mut buf, (w, h)).into_drawing_area(), panels)?;
    let tmp = temporary(png);
    image::save_buffer_with_format(&tmp, &buf, w, h, image::ExtendedColorType::Rgb8, image::ImageFormat::Png)
        .map_err(|e| PlotError::Write(png.to_path_buf(), e))?;
    std::fs::rename(&tmp, png).map_err(|e| PlotError::Write(png.to_path_buf(), e.into()))
}

/// A tick label: whole numbers without a fraction, others with at most four decimals.
fn tick(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e15 {
        format!("{v:.0}")
    } else {
        let s = format!("{v:.4}");
        s.trim_end_matches('0').to_string()
    }
}

fn temporary(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".tmp");
    path.with_file_name(name)
}

fn draw_all<DB: DrawingBackend>(root: DrawingArea<DB, Shift>, panels: &[Panel]) -> Result<(), PlotError>
where
    DB::ErrorType: 'static,
{
    let e = |e: DrawingAreaErrorKind<DB::ErrorType>| PlotError::Draw(format!("{e:?}"));
    root.fill(&WHITE).map_err(e)?;
    for (area, panel) in root.split_evenly((panels.len().max(1), 1)).into_iter().zip(panels) {
        draw(&area, panel)?;
    }
    root.present().map_err(e)
}

fn draw<DB: DrawingBackend>(area: &DrawingArea<DB, Shift>, panel: &Panel) -> Result<(), PlotError>
where
    DB::ErrorType: 'static,
{
    let e = |e: DrawingAreaErrorKind<DB::ErrorType>| PlotError::Draw(format!("{e:?}"));
    let mut chart = ChartBuilder::on(area)
        .caption(&panel.title, ("sans-serif", 22))
        .margin(15)
        .x_label_area_size(45)
        .y_label_area_size(60)
        .build_cartesian_2d(panel.x_range.clone(), panel.y_range.clone())
        .map_err(e)?;
    chart
        .configure_mesh()
        .x_desc(panel.x_label.as_str())
        .y_desc(panel.y_label.as_str())
        .x_label_formatter(&|v| tick(*v))
        .y_label_formatter(&|v| tick(*v))
        .draw()
        .map_err(e)?;
    let inside = |p: &(f64, f64)| panel.x_range.contains(&p.0) && panel.y_range.contains(&p.1);
    let mut legend = false;
    for c in &panel.curves {
        let (r, g, b) = c.colour;
        let style = RGBColor(r, g, b).stroke_width(2);
        let points: Vec<(f64, f64)> = c.points.iter().copied().filter(inside).collect();
        let series = match c.style {
            Style::Dashed => chart.draw_series(DashedLineSeries::new(points.clone(), 8, 5, style)),
            Style::Line | Style::LineDots => chart.draw_series(LineSeries::new(points.clone(), style)),
            Style::Dots => chart.draw_series(points.iter().map(|&p| Circle::new(p, 4, style.filled()))),
        }
        .map_err(e)?;
        if !c.name.is_empty() {
            legend = true;
            let name = c.name.as_str();
            match c.style {
                Style::Dashed => {
                    series.label(name).legend(move |(x, y)| DashedPathElement::new(vec![(x, y), (x + 20, y)], 5, 3, style));
                }
                Style::Dots => {
                    series.label(name).legend(move |(x, y)| Circle::new((x + 10, y), 4, style.filled()));
                }
                _ => {
                    series.label(name).legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], style));
                }
            }
        }
        if c.style == Style::LineDots {
            chart.draw_series(points.iter().map(|&p| Circle::new(p, 3, style.filled()))).map_err(e)?;
        }
    }
    if legend {
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::LowerRight)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .draw()
            .map_err(e)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ticks_drop_needless_decimals() {
        assert_eq!(tick(14500.0), "14500");
        assert_eq!(tick(0.75), "0.75");
        assert_eq!(tick(0.95), "0.95");
        assert_eq!(tick(-2.0), "-2");
    }

    #[test]
    fn span_pads_and_ignores_non_finite_values() {
        let r = span(&[1.0, 3.0, f64::NAN, 2.0]);
        assert!((r.start - 0.9).abs() < 1e-12 && (r.end - 3.1).abs() < 1e-12, "{r:?}");
        assert_eq!(span(&[2.0]), 1.0..3.0);
        assert_eq!(span(&[]), 0.0..1.0);
    }

    #[test]
    fn writes_a_png_of_stacked_panels() {
        let dir = tempfile::tempdir().unwrap();
        let curve = |name: &str, style| Curve { name: name.into(), points: vec![(0.0, 1.0), (1.0, 2.0), (2.0, 1.5)], style, colour: palette(1) };
        let panel = |title: &str| Panel {
            title: title.into(),
            x_label: "x".into(),
            y_label: "y".into(),
            x_range: 0.0..2.0,
            y_range: 0.0..3.0,
            curves: vec![curve("a", Style::LineDots), curve("b", Style::Dashed), curve("", Style::Dots), curve("d", Style::Line)],
        };
        let png = dir.path().join("c.png");
        let svg = dir.path().join("c.svg");
        let saved = save(&[panel("one"), panel("two")], (300, 200), &png, Some(&svg));
        if register_font().is_err() {
            // Without a font there is no chart, and a clear error instead.
            assert!(matches!(saved, Err(PlotError::NoFont | PlotError::BadFont(_))), "{saved:?}");
            assert!(!png.exists());
            return;
        }
        saved.unwrap();
        let img = image::open(&png).unwrap();
        assert_eq!((img.width(), img.height()), (300, 400));
        // Not blank: the curves' colour appears.
        let (r, g, b) = palette(1);
        assert!(img.to_rgb8().pixels().any(|p| p.0 == [r, g, b]));
        assert!(std::fs::read_to_string(&svg).unwrap().contains("<svg"));
        assert!(!dir.path().join("c.png.tmp").exists());
    }
}
