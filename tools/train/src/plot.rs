//! The training curves of a run as one PNG (`out/curves.png`), drawn from its `log.csv` (every
//! step) and `val.csv` (real files at every checkpoint).

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context, Result};
use cae_plot::{palette, span, Curve, Panel, Style};

/// Steps of one quality that the moving mean of the training curves spans.
const WINDOW: usize = 100;

/// Per quality: `(step, bpp, psnr)` rows of a CSV whose header names those columns.
fn read(path: &Path) -> Result<BTreeMap<u32, Vec<(f64, f64, f64)>>> {
    let text = std::fs::read_to_string(path).with_context(|| path.display().to_string())?;
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next().unwrap_or_default().split(',').collect();
    let col = |name: &str| header.iter().position(|h| *h == name).with_context(|| format!("{}: no column {name}", path.display()));
    let (step, quality, bpp, psnr) = (col("step")?, col("quality")?, col("bpp")?, col("psnr")?);
    let mut out: BTreeMap<u32, Vec<(f64, f64, f64)>> = BTreeMap::new();
    for line in lines {
        let f: Vec<&str> = line.split(',').collect();
        let num = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok());
        // A line cut short by a crash or a concurrent write is skipped.
        if let (Some(s), Some(q), Some(b), Some(p)) = (num(step), num(quality), num(bpp), num(psnr)) {
            out.entry(q as u32).or_default().push((s, b, p));
        }
    }
    Ok(out)
}

/// Moving mean over the last `WINDOW` rows (fewer at the start) of a quality's log.
fn moving_mean(rows: &[(f64, f64, f64)], pick: impl Fn(&(f64, f64, f64)) -> f64) -> Vec<(f64, f64)> {
    let mut sum = 0.0;
    let mut out = Vec::with_capacity(rows.len());
    for (i, r) in rows.iter().enumerate() {
        sum += pick(r);
        if i >= WINDOW {
            sum -= pick(&rows[i - WINDOW]);
        }
        out.push((r.0, sum / (i + 1).min(WINDOW) as f64));
    }
    out
}

/// Draw `dir/curves.png` from `dir/log.csv` and `dir/val.csv` (if there is one).
pub fn curves(dir: &Path) -> Result<()> {
    let train = read(&dir.join("log.csv"))?;
    let val = if dir.join("val.csv").exists() { read(&dir.join("val.csv"))? } else { BTreeMap::new() };
    let mut panels = Vec::new();
    for (what, label, pick) in [
        ("PSNR", "PSNR (dB)", (|r: &(f64, f64, f64)| r.2) as fn(&(f64, f64, f64)) -> f64),
        ("rate", "bits per pixel", |r: &(f64, f64, f64)| r.1),
    ] {
        let mut curves = Vec::new();
        for (i, (q, rows)) in train.iter().enumerate() {
            let points = moving_mean(rows, pick);
            curves.push(Curve { name: format!("q{q}"), points, style: Style::Line, colour: palette(i) });
            if let Some(v) = val.get(q) {
                let points = v.iter().map(|r| (r.0, pick(r))).collect();
                curves.push(Curve { name: String::new(), points, style: Style::Dots, colour: palette(i) });
            }
        }
        let xs: Vec<f64> = curves.iter().flat_map(|c| c.points.iter().map(|p| p.0)).collect();
        let ys: Vec<f64> = curves.iter().flat_map(|c| c.points.iter().map(|p| p.1)).collect();
        panels.push(Panel {
            title: format!("{what}: training crops (lines, mean of {WINDOW} steps), validation files (dots)"),
            x_label: "step".into(),
            y_label: label.into(),
            x_range: span(&xs),
            y_range: span(&ys),
            curves,
        });
    }
    cae_plot::save(&panels, (1000, 480), &dir.join("curves.png"), None).context("curves.png")?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn moving_mean_spans_the_window() {
        let rows: Vec<(f64, f64, f64)> = (0..250).map(|i| (i as f64, 0.0, i as f64)).collect();
        let m = moving_mean(&rows, |r| r.2);
        assert_eq!(m[0], (0.0, 0.0));
        assert_eq!(m[1], (1.0, 0.5));
        // Last 100 of 0..250: 150..=249, mean 199.5.
        assert_eq!(m[249], (249.0, 199.5));
    }

    #[test]
    fn reads_logs_by_column_name_and_skips_broken_lines() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("log.csv");
        std::fs::write(&log, "step,seconds,quality,lambda,loss,bpp,mse,psnr\n1,0.1,2,0.01,1.0,0.5,0.001,30.0\n2,0.2,1,0.005,0.9,0.3,0.002,27.0\n3,0.3,2,0.0").unwrap();
        let r = read(&log).unwrap();
        assert_eq!(r[&2], vec![(1.0, 0.5, 30.0)]);
        assert_eq!(r[&1], vec![(2.0, 0.3, 27.0)]);
        assert_eq!(r.len(), 2);
    }
}
