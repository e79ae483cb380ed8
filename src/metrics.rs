//! Quality and rate–distortion figures: MS-SSIM, and the Bjøntegaard delta rate (BD-rate)
//! between two RD curves.

use image::RgbImage;

/// Scale weights of MS-SSIM (Wang, Simoncelli, Bovik 2003), finest first.
const MS_SSIM_WEIGHTS: [f64; 5] = [0.0448, 0.2856, 0.3001, 0.2363, 0.1333];
/// Side of the Gaussian window (σ = 1.5).
const WINDOW: usize = 11;

/// MS-SSIM of two 8-bit RGB images of equal size: computed on R, G and B separately and
/// averaged, with the standard definition — 11x11 Gaussian window σ 1.5 over the valid region,
/// K1 0.01, K2 0.03, five scales with 2x2-mean downsampling, contrast-structure terms at the
/// finer scales and the full SSIM at the coarsest. Images with a side under 176 use fewer
/// scales (with the weights renormalised). This is the definition of the `iqa` crate (a test
/// checks the two agree); it is computed here with separable filtering, which is about ten
/// times faster, because the RD bench needs thousands of them.
///
/// `None` if the sizes differ or a side is under 11 pixels.
pub fn ms_ssim(a: &RgbImage, b: &RgbImage) -> Option<f64> {
    let (w, h) = (a.width() as usize, a.height() as usize);
    if a.dimensions() != b.dimensions() || w < WINDOW || h < WINDOW {
        return None;
    }
    let channel = |img: &RgbImage, c: usize| img.as_raw().iter().skip(c).step_by(3).map(|&v| v as f64).collect::<Vec<_>>();
    let total: f64 = (0..3).map(|c| ms_ssim_plane(channel(a, c), channel(b, c), w, h)).sum();
    Some(total / 3.0)
}

fn ms_ssim_plane(mut x: Vec<f64>, mut y: Vec<f64>, mut w: usize, mut h: usize) -> f64 {
    let mut scales = 1;
    let (mut sw, mut sh) = (w, h);
    while scales < MS_SSIM_WEIGHTS.len() && sw / 2 >= WINDOW && sh / 2 >= WINDOW {
        sw /= 2;
        sh /= 2;
        scales += 1;
    }
    let weight_sum: f64 = MS_SSIM_WEIGHTS[..scales].iter().sum();
    let mut product = 1.0;
    for scale in 0..scales {
        let (full, cs) = ssim_cs(&x, &y, w, h);
        let term = if scale == scales - 1 { full } else { cs };
        product *= term.max(1e-12).powf(MS_SSIM_WEIGHTS[scale] / weight_sum);
        if scale + 1 < scales {
            x = halve(&x, w, h);
            y = halve(&y, w, h);
            w /= 2;
            h /= 2;
        }
    }
    product
}

/// Means of the SSIM map and of the contrast-structure map over the valid region.
fn ssim_cs(x: &[f64], y: &[f64], w: usize, h: usize) -> (f64, f64) {
    let (c1, c2) = ((0.01 * 255.0f64).powi(2), (0.03 * 255.0f64).powi(2));
    let g = {
        let k: Vec<f64> = (0..WINDOW).map(|i| (-((i as f64 - 5.0).powi(2)) / 4.5).exp()).collect();
        let s: f64 = k.iter().sum();
        k.into_iter().map(|v| v / s).collect::<Vec<_>>()
    };
    let (mw, mh) = (w - WINDOW + 1, h - WINDOW + 1);
    // Horizontal pass of the five moments, then the vertical pass.
    let mut rows = vec![[0.0f64; 5]; mw * h];
    for r in 0..h {
        let (xr, yr) = (&x[r * w..(r + 1) * w], &y[r * w..(r + 1) * w]);
        for c in 0..mw {
            let mut m = [0.0f64; 5];
            for (k, &gk) in g.iter().enumerate() {
                let (a, b) = (xr[c + k], yr[c + k]);
                m[0] += gk * a;
                m[1] += gk * b;
                m[2] += gk * a * a;
                m[3] += gk * b * b;
                m[4] += gk * a * b;
            }
            rows[r * mw + c] = m;
        }
    }
    let (mut full_sum, mut cs_sum) = (0.0, 0.0);
    for r in 0..mh {
        for c in 0..mw {
            let mut m = [0.0f64; 5];
            for (k, &gk) in g.iter().enumerate() {
                let v = &rows[(r + k) * mw + c];
                for i in 0..5 {
                    m[i] += gk * v[i];
                }
            }
            let (mx, my) = (m[0], m[1]);
            let (vx, vy, cov) = (m[2] - mx * mx, m[3] - my * my, m[4] - mx * my);
            let cs = (2.0 * cov + c2) / (vx + vy + c2);
            full_sum += (2.0 * mx * my + c1) / (mx * mx + my * my + c1) * cs;
            cs_sum += cs;
        }
    }
    let n = (mw * mh) as f64;
    (full_sum / n, cs_sum / n)
}

/// 2x2 mean, dropping an odd last row or column.
fn halve(v: &[f64], w: usize, h: usize) -> Vec<f64> {
    let (nw, nh) = (w / 2, h / 2);
    let mut out = Vec::with_capacity(nw * nh);
    for r in 0..nh {
        for c in 0..nw {
            let i = 2 * r * w + 2 * c;
            out.push((v[i] + v[i + 1] + v[i + w] + v[i + w + 1]) / 4.0);
        }
    }
    out
}

/// One rate–distortion point: bits per pixel and a quality figure in dB (PSNR, or MS-SSIM in
/// dB as given by [`ms_ssim_db`]).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RdPoint {
    pub bpp: f64,
    pub db: f64,
}

/// MS-SSIM as decibels, `−10·log10(1 − ms_ssim)`: the scale on which BD-rates over MS-SSIM are
/// computed, as the literature does.
pub fn ms_ssim_db(ms_ssim: f64) -> f64 {
    -10.0 * (1.0 - ms_ssim).max(1e-10).log10()
}

/// BD-rate of `test` against `anchor` by the classic method (Bjøntegaard, VCEG-M33): for each
/// curve fit ln(bpp) as a cubic polynomial of the quality (least squares), integrate both fits
/// over the quality interval the curves share, and return `exp(mean difference) − 1`. A negative
/// value means `test` needs fewer bits for the same quality (−0.2 = 20 % fewer).
///
/// `None` when either curve has fewer than four points with finite, positive values, or the
/// curves share no quality interval.
pub fn bd_rate(anchor: &[RdPoint], test: &[RdPoint]) -> Option<f64> {
    let a = LogRateFit::new(anchor)?;
    let t = LogRateFit::new(test)?;
    let lo = a.lo.max(t.lo);
    let hi = a.hi.min(t.hi);
    if hi <= lo {
        return None;
    }
    let mean_diff = (t.integral(lo, hi) - a.integral(lo, hi)) / (hi - lo);
    Some(mean_diff.exp() - 1.0)
}

/// ln(bpp) as a cubic in the quality, `c0 + c1·u + c2·u² + c3·u³` with `u = (db − centre) / scale`
/// (centred and scaled so that the normal equations stay well conditioned).
struct LogRateFit {
    coeffs: [f64; 4],
    centre: f64,
    scale: f64,
    lo: f64,
    hi: f64,
}

impl LogRateFit {
    fn new(points: &[RdPoint]) -> Option<Self> {
        let pts: Vec<(f64, f64)> = points
            .iter()
            .filter(|p| p.bpp.is_finite() && p.bpp > 0.0 && p.db.is_finite())
            .map(|p| (p.db, p.bpp.ln()))
            .collect();
        if pts.len() < 4 {
            return None;
        }
        let lo = pts.iter().map(|p| p.0).fold(f64::INFINITY, f64::min);
        let hi = pts.iter().map(|p| p.0).fold(f64::NEG_INFINITY, f64::max);
        let centre = 0.5 * (lo + hi);
        let scale = (0.5 * (hi - lo)).max(1e-9);
        // Normal equations (VᵀV) c = Vᵀy of the Vandermonde matrix V.
        let mut m = [[0.0f64; 5]; 4];
        for &(x, y) in &pts {
            let u = (x - centre) / scale;
            let pow = [1.0, u, u * u, u * u * u];
            for i in 0..4 {
                for j in 0..4 {
                    m[i][j] += pow[i] * pow[j];
                }
                m[i][4] += pow[i] * y;
            }
        }
        let coeffs = solve4(m)?;
        Some(LogRateFit { coeffs, centre, scale, lo, hi })
    }

    /// ∫ fit(db) d(db) from `a` to `b`.
    fn integral(&self, a: f64, b: f64) -> f64 {
        let prim = |db: f64| {
            let u = (db - self.centre) / self.scale;
            let c = &self.coeffs;
            self.scale * (c[0] * u + c[1] * u * u / 2.0 + c[2] * u.powi(3) / 3.0 + c[3] * u.powi(4) / 4.0)
        };
        prim(b) - prim(a)
    }
}

/// Gaussian elimination with partial pivoting on an augmented 4x5 matrix.
fn solve4(mut m: [[f64; 5]; 4]) -> Option<[f64; 4]> {
    for col in 0..4 {
        let pivot = (col..4).max_by(|&i, &j| m[i][col].abs().total_cmp(&m[j][col].abs()))?;
        if m[pivot][col].abs() < 1e-12 {
            return None;
        }
        m.swap(col, pivot);
        for row in 0..4 {
            if row != col {
                let f = m[row][col] / m[col][col];
                for k in col..5 {
                    m[row][k] -= f * m[col][k];
                }
            }
        }
    }
    let x = [m[0][4] / m[0][0], m[1][4] / m[1][1], m[2][4] / m[2][2], m[3][4] / m[3][3]];
    x.iter().all(|v| v.is_finite()).then_some(x)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn curve(f: impl Fn(f64) -> f64, dbs: &[f64]) -> Vec<RdPoint> {
        dbs.iter().map(|&db| RdPoint { bpp: f(db), db }).collect()
    }

    #[test]
    fn identical_curves_have_zero_bd_rate() {
        let a = curve(|db| (0.2 * db - 5.0).exp(), &[26.0, 28.0, 30.0, 32.0, 34.0]);
        assert!(bd_rate(&a, &a).unwrap().abs() < 1e-12);
    }

    #[test]
    fn a_constant_rate_factor_is_recovered_exactly() {
        // test needs 0.7x the bits of anchor at every quality, on other sample points:
        // ln-rate curves differ by ln 0.7, which the cubic fits represent exactly.
        let f = |db: f64| (0.003 * db * db * db / 10.0 - 0.1 * db).exp() * 0.05;
        let anchor = curve(f, &[24.0, 27.0, 30.0, 33.0, 36.0]);
        let test = curve(|db| 0.7 * f(db), &[25.0, 28.5, 31.0, 34.0]);
        let bd = bd_rate(&anchor, &test).unwrap();
        assert!((bd - (-0.3)).abs() < 1e-9, "{bd}");
        let back = bd_rate(&test, &anchor).unwrap();
        assert!((back - (1.0 / 0.7 - 1.0)).abs() < 1e-9, "{back}");
    }

    #[test]
    fn published_anchors_give_the_published_ordering() {
        // CompressAI's Kodak points (../shared/anchors/kodak_rd.csv, jpeg 1-9, webp 1-6):
        // WebP needs fewer bits than JPEG for the same PSNR (the README there says −37 %).
        let jpeg = [
            (0.2212, 23.780), (0.3266, 26.577), (0.4231, 28.042), (0.5084, 29.042), (0.5879, 29.785),
            (0.6601, 30.378), (0.7289, 30.903), (0.7860, 31.308), (0.8497, 31.705),
        ];
        let webp = [(0.2344, 28.328), (0.2963, 29.151), (0.3529, 29.821), (0.4070, 30.407), (0.4608, 30.939), (0.5127, 31.443)];
        let p = |v: &[(f64, f64)]| v.iter().map(|&(bpp, db)| RdPoint { bpp, db }).collect::<Vec<_>>();
        let bd = bd_rate(&p(&jpeg), &p(&webp)).unwrap();
        assert!(bd < -0.25 && bd > -0.5, "{bd}");
    }

    #[test]
    fn too_few_points_or_disjoint_ranges_give_none() {
        let a = curve(|db| db / 30.0, &[26.0, 28.0, 30.0]);
        let b = curve(|db| db / 30.0, &[26.0, 28.0, 30.0, 32.0]);
        assert!(bd_rate(&a, &b).is_none());
        let c = curve(|db| db / 30.0, &[40.0, 41.0, 42.0, 43.0]);
        assert!(bd_rate(&b, &c).is_none());
        let nan = curve(|_| f64::NAN, &[26.0, 28.0, 30.0, 32.0]);
        assert!(bd_rate(&b, &nan).is_none());
    }

    fn noisy_pair(w: u32, h: u32, seed: u32) -> (RgbImage, RgbImage) {
        let a = RgbImage::from_fn(w, h, |x, y| {
            image::Rgb([(x * 7 + y * 3) as u8, ((x ^ y) * 5) as u8, (((x as f32 * 0.1).sin() * 100.0) + 128.0) as u8])
        });
        let mut state = seed;
        let b = RgbImage::from_fn(w, h, |x, y| {
            let p = a.get_pixel(x, y).0;
            image::Rgb(p.map(|v| {
                state = state.wrapping_mul(1_103_515_245).wrapping_add(12_345);
                (v as i32 + (state >> 16) as i32 % 31 - 15).clamp(0, 255) as u8
            }))
        });
        (a, b)
    }

    #[test]
    fn ms_ssim_agrees_with_the_iqa_crate() {
        // 200x180 uses all five scales, 40x30 two, 11x11 one.
        for (w, h) in [(200, 180), (40, 30), (11, 11)] {
            let (a, b) = noisy_pair(w, h, w);
            let ours = ms_ssim(&a, &b).unwrap();
            let x = iqa::Image::srgb8(w, h, a.as_raw().clone()).unwrap();
            let y = iqa::Image::srgb8(w, h, b.as_raw().clone()).unwrap();
            let theirs = iqa::msssim(&x, &y, iqa::MsssimOptions::default()).unwrap();
            assert!((ours - theirs).abs() < 1e-9, "{w}x{h}: {ours} vs iqa {theirs}");
            assert!(ours < 0.999, "{w}x{h}: noise must lower MS-SSIM ({ours})");
        }
    }

    #[test]
    fn ms_ssim_of_identical_images_is_one_and_bad_sizes_are_refused() {
        let (a, b) = noisy_pair(64, 48, 3);
        assert_eq!(ms_ssim(&a, &a), Some(1.0));
        assert!(ms_ssim(&a, &RgbImage::new(64, 47)).is_none());
        assert!(ms_ssim(&RgbImage::new(10, 40), &RgbImage::new(10, 40)).is_none());
        assert!(ms_ssim(&a, &b).unwrap() < 1.0);
    }

    #[test]
    fn ms_ssim_decibels() {
        assert!((ms_ssim_db(0.9) - 10.0).abs() < 1e-12);
        assert!((ms_ssim_db(0.99) - 20.0).abs() < 1e-9);
    }
}
