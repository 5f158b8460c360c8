//! Helpers shared by the integration tests.
#![allow(dead_code)]

use vidgen_video::Frames;

/// A synthetic clip, `(F, H, W, 3)`: a colour gradient drifting right, a bright square
/// moving diagonally, and soft diagonal stripes sliding down; smooth like generated video
/// but with edges and motion for the encoder to work on.
pub fn moving_pattern(frames: usize, height: usize, width: usize, fps: f32) -> Frames {
    let mut data = Vec::with_capacity(frames * height * width * 3);
    for f in 0..frames {
        let t = f as f32 / frames.max(2) as f32;
        let (square_y, square_x) = (t * (height as f32 * 0.6), t * (width as f32 * 0.6));
        let side = (height.min(width) as f32 * 0.25).max(2.0);
        for y in 0..height {
            for x in 0..width {
                let (fy, fx) = (y as f32 / height as f32, x as f32 / width as f32);
                let stripes = 0.5 + 0.5 * ((fx + fy) * 12.0 - t * 6.0).sin();
                let mut rgb = [
                    0.15 + 0.6 * ((fx + t) % 1.0),
                    0.2 + 0.5 * fy,
                    0.25 + 0.5 * stripes,
                ];
                let (dy, dx) = (y as f32 - square_y, x as f32 - square_x);
                if (0.0..side).contains(&dy) && (0.0..side).contains(&dx) {
                    rgb = [0.95, 0.9, 0.2];
                }
                data.extend(rgb);
            }
        }
    }
    Frames::new(frames, height, width, fps, data).unwrap()
}

/// Mean absolute difference of two equally long pixel arrays.
pub fn mean_abs_error(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    (a.iter()
        .zip(b)
        .map(|(x, y)| f64::from((x - y).abs()))
        .sum::<f64>()
        / a.len() as f64) as f32
}

/// The `(F, h, w, 3)` top-left crop of `frames`.
pub fn crop(frames: &Frames, height: usize, width: usize) -> Vec<f32> {
    let mut out = Vec::with_capacity(frames.frames * height * width * 3);
    for f in 0..frames.frames {
        let frame = frames.frame(f);
        for y in 0..height {
            out.extend_from_slice(&frame[y * frames.width * 3..][..width * 3]);
        }
    }
    out
}

/// Names in `dir`, sorted.
pub fn names_in(dir: &std::path::Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}
