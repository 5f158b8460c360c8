//! How close two videos are, frame by frame: PSNR and SSIM, for reporting what a faster or
//! lower-precision setting costs against the default output.
//!
//! Both take frames `(F, H, W, 3)` flattened, values in [0, 1]. SSIM is Wang et al.'s (2004):
//! on luma (BT.601 weights), an 11×11 Gaussian window with σ = 1.5, `C1 = (0.01)²`,
//! `C2 = (0.03)²`, averaged over the positions where the window fits inside the frame
//! (no padding), then over frames.

/// Peak signal-to-noise ratio in dB over all pixels and channels (peak 1); infinite for equal
/// videos.
pub fn psnr(a: &[f32], b: &[f32]) -> f64 {
    assert_eq!(a.len(), b.len(), "videos of different sizes");
    let mse = a
        .iter()
        .zip(b)
        .map(|(x, y)| (*x as f64 - *y as f64).powi(2))
        .sum::<f64>()
        / a.len().max(1) as f64;
    -10.0 * mse.log10()
}

/// Mean structural similarity of two videos of `frames` frames of `height`×`width`, in
/// [-1, 1] (1: equal). Frames smaller than the window use the whole frame as one window.
pub fn ssim(a: &[f32], b: &[f32], frames: usize, height: usize, width: usize) -> f64 {
    let n = height * width;
    assert_eq!(a.len(), frames * n * 3, "first video's size");
    assert_eq!(b.len(), frames * n * 3, "second video's size");
    if frames == 0 {
        return 1.0;
    }
    let total: f64 = (0..frames)
        .map(|f| {
            let x = luma(&a[f * n * 3..(f + 1) * n * 3]);
            let y = luma(&b[f * n * 3..(f + 1) * n * 3]);
            frame_ssim(&x, &y, height, width)
        })
        .sum();
    total / frames as f64
}

const C1: f64 = 0.01 * 0.01;
const C2: f64 = 0.03 * 0.03;
const RADIUS: usize = 5;

fn luma(rgb: &[f32]) -> Vec<f64> {
    rgb.chunks_exact(3)
        .map(|p| 0.299 * p[0] as f64 + 0.587 * p[1] as f64 + 0.114 * p[2] as f64)
        .collect()
}

/// The normalised 1-D Gaussian of the window, σ = 1.5, over `2·RADIUS + 1` taps.
fn gaussian() -> Vec<f64> {
    let taps: Vec<f64> = (0..=2 * RADIUS)
        .map(|i| {
            let d = i as f64 - RADIUS as f64;
            (-d * d / (2.0 * 1.5 * 1.5)).exp()
        })
        .collect();
    let sum: f64 = taps.iter().sum();
    taps.into_iter().map(|t| t / sum).collect()
}

/// `img` filtered by the window, at every position where it fits: `(h − 10) × (w − 10)`.
fn filter(img: &[f64], h: usize, w: usize, taps: &[f64]) -> Vec<f64> {
    let k = taps.len();
    let (oh, ow) = (h + 1 - k, w + 1 - k);
    let mut rows = vec![0.0; h * ow];
    for y in 0..h {
        for x in 0..ow {
            rows[y * ow + x] = (0..k).map(|i| taps[i] * img[y * w + x + i]).sum();
        }
    }
    let mut out = vec![0.0; oh * ow];
    for y in 0..oh {
        for x in 0..ow {
            out[y * ow + x] = (0..k).map(|i| taps[i] * rows[(y + i) * ow + x]).sum();
        }
    }
    out
}

fn frame_ssim(x: &[f64], y: &[f64], h: usize, w: usize) -> f64 {
    let taps = if h > 2 * RADIUS && w > 2 * RADIUS {
        gaussian()
    } else {
        // too small for the window: one uniform window over the whole frame
        return ssim_of_moments(&moments(x, y, x.len() as f64));
    };
    let product = |p: &[f64], q: &[f64]| p.iter().zip(q).map(|(a, b)| a * b).collect::<Vec<_>>();
    let mx = filter(x, h, w, &taps);
    let my = filter(y, h, w, &taps);
    let mxx = filter(&product(x, x), h, w, &taps);
    let myy = filter(&product(y, y), h, w, &taps);
    let mxy = filter(&product(x, y), h, w, &taps);
    let count = mx.len();
    (0..count)
        .map(|i| {
            ssim_of_moments(&[
                mx[i],
                my[i],
                mxx[i] - mx[i] * mx[i],
                myy[i] - my[i] * my[i],
                mxy[i] - mx[i] * my[i],
            ])
        })
        .sum::<f64>()
        / count as f64
}

/// `[μx, μy, σx², σy², σxy]` of two equally long signals, uniformly weighted.
fn moments(x: &[f64], y: &[f64], n: f64) -> [f64; 5] {
    let mx = x.iter().sum::<f64>() / n;
    let my = y.iter().sum::<f64>() / n;
    let (mut vx, mut vy, mut cxy) = (0.0, 0.0, 0.0);
    for (a, b) in x.iter().zip(y) {
        vx += (a - mx) * (a - mx);
        vy += (b - my) * (b - my);
        cxy += (a - mx) * (b - my);
    }
    [mx, my, vx / n, vy / n, cxy / n]
}

fn ssim_of_moments(&[mx, my, vx, vy, cxy]: &[f64; 5]) -> f64 {
    ((2.0 * mx * my + C1) * (2.0 * cxy + C2)) / ((mx * mx + my * my + C1) * (vx + vy + C2))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A smooth test video with some texture, deterministic.
    fn video(frames: usize, h: usize, w: usize) -> Vec<f32> {
        (0..frames * h * w * 3)
            .map(|i| {
                let p = (i / 3) % (h * w);
                let (y, x) = ((p / w) as f32, (p % w) as f32);
                0.5 + 0.4 * ((x * 0.3 + y * 0.2 + (i % 3) as f32).sin())
            })
            .collect()
    }

    #[test]
    fn equal_videos_are_identical_and_noise_scores_lower_the_more_there_is() {
        let (f, h, w) = (2, 24, 20);
        let a = video(f, h, w);
        assert_eq!(psnr(&a, &a), f64::INFINITY);
        assert!((ssim(&a, &a, f, h, w) - 1.0).abs() < 1e-12);
        let noisy = |amount: f32| -> Vec<f32> {
            a.iter()
                .enumerate()
                .map(|(i, v)| v + amount * (((i * 7919) % 101) as f32 / 50.0 - 1.0))
                .collect()
        };
        let (small, large) = (noisy(0.02), noisy(0.5));
        // uniform noise of amplitude a has mse a²/3: 0.02 → ~39 dB
        assert!(
            (psnr(&a, &small) - 39.0).abs() < 1.0,
            "{}",
            psnr(&a, &small)
        );
        assert!(psnr(&a, &large) < psnr(&a, &small) - 15.0);
        let (s_small, s_large) = (ssim(&a, &small, f, h, w), ssim(&a, &large, f, h, w));
        assert!(s_small > 0.9 && s_small < 1.0, "{s_small}");
        assert!(s_large < s_small - 0.2, "{s_small} vs {s_large}");
    }

    #[test]
    fn ssim_sees_structure_that_psnr_weighs_equally() {
        // the same mean squared error as a constant offset or as lost texture: SSIM ranks the
        // offset (structure kept) above the flattening (structure lost)
        let (f, h, w) = (1, 16, 16);
        let a = video(f, h, w);
        let mean = a.iter().sum::<f32>() / a.len() as f32;
        let flat: Vec<f32> = a.iter().map(|v| mean + 0.5 * (v - mean)).collect();
        let mse = a
            .iter()
            .zip(&flat)
            .map(|(x, y)| ((x - y) as f64).powi(2))
            .sum::<f64>()
            / a.len() as f64;
        let shifted: Vec<f32> = a.iter().map(|v| v + mse.sqrt() as f32).collect();
        assert!((psnr(&a, &flat) - psnr(&a, &shifted)).abs() < 0.01);
        assert!(ssim(&a, &shifted, f, h, w) > ssim(&a, &flat, f, h, w) + 0.05);
    }
}
