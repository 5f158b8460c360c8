//! The loss curve as a PNG: raw loss per step (light) and its running mean (dark) on a log
//! scale, with horizontal grid lines at each power of ten and the step count along the bottom.

use std::path::Path;

use crate::{Error, Result};

const WIDTH: usize = 640;
const HEIGHT: usize = 360;
const MARGIN: usize = 24;

/// Draws `(step, loss)` points into an RGB image `WIDTH × HEIGHT`; returns the pixels.
pub fn render(points: &[(usize, f64)]) -> Vec<u8> {
    let mut img = vec![255u8; WIDTH * HEIGHT * 3];
    let put = |img: &mut Vec<u8>, x: usize, y: usize, rgb: [u8; 3]| {
        if x < WIDTH && y < HEIGHT {
            img[(y * WIDTH + x) * 3..][..3].copy_from_slice(&rgb);
        }
    };
    let valid: Vec<(usize, f64)> = points
        .iter()
        .copied()
        .filter(|(_, l)| l.is_finite() && *l > 0.0)
        .collect();
    let (x0, x1, y0, y1) = (MARGIN, WIDTH - MARGIN / 2, MARGIN / 2, HEIGHT - MARGIN);
    // axes
    for x in x0..=x1 {
        put(&mut img, x, y1, [0, 0, 0]);
    }
    for y in y0..=y1 {
        put(&mut img, x0, y, [0, 0, 0]);
    }
    if valid.is_empty() {
        return img;
    }
    let max_step = valid.iter().map(|p| p.0).max().unwrap_or(1).max(1) as f64;
    let lo = valid
        .iter()
        .map(|p| p.1.log10())
        .fold(f64::INFINITY, f64::min);
    let hi = valid
        .iter()
        .map(|p| p.1.log10())
        .fold(f64::NEG_INFINITY, f64::max);
    let (lo, hi) = (lo.floor(), hi.ceil().max(lo.floor() + 1.0));
    let to_px = |step: usize, loss: f64| -> (usize, usize) {
        let fx = step as f64 / max_step;
        let fy = (loss.log10() - lo) / (hi - lo);
        (
            x0 + (fx * (x1 - x0) as f64).round() as usize,
            y1 - (fy * (y1 - y0) as f64).round() as usize,
        )
    };
    // a grid line at each power of ten, ticks at each tenth of the run
    for decade in lo as i32..=hi as i32 {
        let (_, y) = to_px(0, 10f64.powi(decade));
        for x in (x0 + 1..=x1).step_by(3) {
            put(&mut img, x, y, [190, 190, 190]);
        }
    }
    for tick in 0..=10 {
        let x = x0 + tick * (x1 - x0) / 10;
        for y in y1..y1 + 5 {
            put(&mut img, x, y, [0, 0, 0]);
        }
    }
    let line = |img: &mut Vec<u8>, pts: &[(usize, usize)], rgb: [u8; 3]| {
        for pair in pts.windows(2) {
            let ((ax, ay), (bx, by)) = (pair[0], pair[1]);
            let n = ax.abs_diff(bx).max(ay.abs_diff(by)).max(1);
            for i in 0..=n {
                let t = i as f64 / n as f64;
                let x = (ax as f64 + (bx as f64 - ax as f64) * t).round() as usize;
                let y = (ay as f64 + (by as f64 - ay as f64) * t).round() as usize;
                put(img, x, y, rgb);
            }
        }
    };
    let raw: Vec<(usize, usize)> = valid.iter().map(|&(s, l)| to_px(s, l)).collect();
    line(&mut img, &raw, [160, 190, 230]);
    // running mean over about 2% of the run
    let window = (valid.len() / 50).max(1);
    let mut smooth = Vec::with_capacity(valid.len());
    let mut sum = 0.0;
    for (i, &(s, l)) in valid.iter().enumerate() {
        sum += l;
        if i >= window {
            sum -= valid[i - window].1;
        }
        smooth.push(to_px(s, sum / (i + 1).min(window) as f64));
    }
    line(&mut img, &smooth, [20, 60, 160]);
    img
}

/// Writes the curve of `points` to `path` (PNG), atomically.
pub fn write_png(path: &Path, points: &[(usize, f64)]) -> Result<()> {
    use image::ImageEncoder;
    let img = render(points);
    let mut bytes = Vec::new();
    image::codecs::png::PngEncoder::new(&mut bytes)
        .write_image(
            &img,
            WIDTH as u32,
            HEIGHT as u32,
            image::ExtendedColorType::Rgb8,
        )
        .map_err(|e| Error::InvalidRequest(format!("cannot encode the loss plot: {e}")))?;
    super::run::write_atomic(path, &bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn falling_loss_is_drawn_from_top_left_to_bottom_right() {
        let points: Vec<(usize, f64)> = (1..=100).map(|s| (s, 1.0 / s as f64)).collect();
        let img = render(&points);
        let dark = |x: usize, y0: usize, y1: usize| {
            (y0..y1).any(|y| img[(y * WIDTH + x) * 3..][..3] == [20, 60, 160])
        };
        // early steps high, late steps low
        assert!(dark(MARGIN + 8, 0, HEIGHT / 2));
        assert!(dark(WIDTH - MARGIN / 2 - 1, HEIGHT / 2, HEIGHT));
        // nothing but axes for no points
        assert!(render(&[]).iter().filter(|&&v| v == 0).count() > 0);
    }
}
