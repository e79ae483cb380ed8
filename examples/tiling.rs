//! Measurements for tiled coding of large images (`tools/scripts/huge.sh` runs them).
//!
//! ```text
//! cargo run --release --example tiling -- mosaic DIR W H OUT.png   # a W x H photo from DIR's images
//! cargo run --release --example tiling -- seams ORIG DECODED TILE  # PSNR near tile borders vs elsewhere
//! cargo run --release --example tiling -- kodak DIR TILE           # whole vs tiled coding of every image
//! ```

use std::path::Path;

use anyhow::{bail, Context, Result};
use image::{DynamicImage, GenericImage, GenericImageView, RgbImage};

/// Pixels on each side of a tile border that count as "near the border".
const BAND: u32 = 8;

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.iter().map(String::as_str).collect::<Vec<_>>().as_slice() {
        ["mosaic", dir, w, h, out] => mosaic(Path::new(dir), w.parse()?, h.parse()?, Path::new(out)),
        ["seams", orig, decoded, tile] => {
            let (a, b) = (open(orig)?, open(decoded)?);
            let (near, far) = seam_psnr(&a, &b, tile.parse()?);
            println!("tile {tile}: PSNR within {BAND} px of a tile border {near:.3} dB, elsewhere {far:.3} dB");
            Ok(())
        }
        ["kodak", dir, tile] => kodak(Path::new(dir), tile.parse()?),
        _ => bail!("usage: tiling mosaic DIR W H OUT.png | seams ORIG DECODED TILE | kodak DIR TILE"),
    }
}

fn open(p: &str) -> Result<DynamicImage> {
    image::open(p).with_context(|| p.to_string())
}

/// A `w` x `h` image tiled from the images of `dir` in name order (repeated as needed).
fn mosaic(dir: &Path, w: u32, h: u32, out: &Path) -> Result<()> {
    let files = caec::image_files(dir)?;
    if files.is_empty() {
        bail!("{}: no images", dir.display());
    }
    let mut canvas = RgbImage::new(w, h);
    let (mut x, mut y, mut row_h, mut i) = (0, 0, 0, 0);
    while y < h {
        let img = image::open(&files[i % files.len()])?.to_rgb8();
        i += 1;
        let (iw, ih) = (img.width().min(w - x), img.height().min(h - y));
        canvas.copy_from(&*img.view(0, 0, iw, ih), x, y)?;
        row_h = row_h.max(ih);
        x += iw;
        if x >= w {
            (x, y, row_h) = (0, y + row_h, 0);
        }
    }
    canvas.save(out)?;
    println!("wrote {} ({w}x{h}, from {} images of {})", out.display(), i, dir.display());
    Ok(())
}

/// PSNR of the pixels within [`BAND`] of a tile border (the lines x or y = k·tile inside the
/// image) and of all the others.
fn seam_psnr(a: &DynamicImage, b: &DynamicImage, tile: u32) -> (f64, f64) {
    let (a, b) = (a.to_rgb8(), b.to_rgb8());
    let near_border = |v: u32, len: u32| {
        let k = (v + tile / 2) / tile * tile;
        k > 0 && k < len && v.abs_diff(k) < BAND
    };
    let (mut se, mut n) = ([0f64; 2], [0u64; 2]);
    for (x, y, p) in a.enumerate_pixels() {
        let q = b.get_pixel(x, y);
        let i = usize::from(!(near_border(x, a.width()) || near_border(y, a.height())));
        for c in 0..3 {
            se[i] += (p[c] as f64 - q[c] as f64).powi(2);
        }
        n[i] += 3;
    }
    let psnr = |se: f64, n: u64| 10.0 * (255.0f64 * 255.0 * n as f64 / se).log10();
    (psnr(se[0], n[0]), psnr(se[1], n[1]))
}

/// Every image of `dir` coded whole and in tiles of `tile` (both ways): bpp, PSNR, the PSNR
/// near the tile borders, and the largest pixel difference between the two decodings.
fn kodak(dir: &Path, tile: usize) -> Result<()> {
    let model = caec::load_model("default")?;
    let q = caec::DEFAULT_QUALITY;
    println!("image,bpp_whole,bpp_tiled,psnr_whole,psnr_tiled,psnr_whole_near_borders,psnr_tiled_near_borders,psnr_tiled_elsewhere,same_file,max_pixel_diff");
    let mut sums = [0f64; 7];
    let mut same_files = 0;
    let files = caec::image_files(dir)?;
    for f in &files {
        let img = image::open(f)?;
        let px = img.width() as f64 * img.height() as f64;
        let whole = caec::compress_tiled(&model, &img, q, 1 << 20)?;
        let tiled = caec::compress_tiled(&model, &img, q, tile)?;
        let limits = caec::Limits::default();
        let back_whole = caec::decompress_tiled(&model, &whole, &limits, 1 << 20)?;
        let back_tiled = caec::decompress_tiled(&model, &tiled, &limits, tile)?;
        let (near, far) = seam_psnr(&img, &back_tiled, tile as u32);
        let (near_whole, _) = seam_psnr(&img, &back_whole, tile as u32);
        let same = whole == tiled;
        same_files += usize::from(same);
        let diff = back_whole.to_rgb8().as_raw().iter().zip(back_tiled.to_rgb8().as_raw()).map(|(a, b)| a.abs_diff(*b)).max().unwrap_or(0);
        let row = [
            whole.len() as f64 * 8.0 / px,
            tiled.len() as f64 * 8.0 / px,
            caec::psnr(&img, &back_whole),
            caec::psnr(&img, &back_tiled),
            near_whole,
            near,
            far,
        ];
        for (s, v) in sums.iter_mut().zip(row) {
            *s += v;
        }
        let name = f.file_name().unwrap_or_default().to_string_lossy();
        println!("{name},{:.5},{:.5},{:.3},{:.3},{:.3},{:.3},{:.3},{same},{diff}", row[0], row[1], row[2], row[3], row[4], row[5], row[6]);
    }
    let n = files.len() as f64;
    let m: Vec<String> = sums.iter().map(|s| format!("{:.4}", s / n)).collect();
    println!("mean,{},{same_files},", m.join(","));
    println!(
        "tiling cost: {:+.3} % bpp, {:+.3} dB PSNR (tiles of {tile} px, {} images, quality {q}); \
         {same_files} files identical to whole-image coding; within {BAND} px of tile borders \
         {:.3} dB tiled vs {:.3} dB whole",
        (sums[1] / sums[0] - 1.0) * 100.0,
        (sums[3] - sums[2]) / n,
        files.len(),
        sums[5] / n,
        sums[4] / n,
    );
    Ok(())
}
