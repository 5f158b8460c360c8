//! The rasterizer: a [`Truth`] to `(F, H, W, 3)` frames, with coverage-based anti-aliasing.
//!
//! Each frame is painted back to front: background (with a floor band, and faint world-fixed
//! stripes under a panning camera so the pan shows), objects, then the occluding wall. Edges
//! are anti-aliased by the fraction of each pixel a shape covers (exact for the wall and the
//! floor, a one-pixel ramp on the signed distance for shapes). Only the pixels of each shape's
//! bounding box are visited, so a 17×64×64 clip takes well under a millisecond.

use super::world::{Shape, Truth, BACKGROUNDS, COLOURS, OCCLUDER_RGB};

/// How much lighter the floor band is than the background.
const FLOOR_LIFT: f32 = 0.14;
/// Contrast of the pan stripes (well under the detectors' foreground threshold).
const STRIPE_LIFT: f32 = 0.05;

/// The RGB of a colour or background name; panics on a name not in the tables (truths are
/// only made by this module's sampler).
pub fn rgb_of(name: &str) -> [f32; 3] {
    COLOURS
        .iter()
        .chain(BACKGROUNDS)
        .find(|(n, _)| *n == name)
        .map(|(_, c)| *c)
        .unwrap_or_else(|| panic!("unknown colour `{name}`"))
}

/// The floor band's colour over background `bg`.
pub fn floor_rgb(bg: [f32; 3]) -> [f32; 3] {
    bg.map(|c| (c + FLOOR_LIFT).min(1.0))
}

/// Draws every frame of `truth`: `(F, H, W, 3)` row-major RGB in [0, 1].
pub fn render(truth: &Truth) -> Vec<f32> {
    let spec = truth.spec;
    let (f, h, w) = (spec.num_frames, spec.height, spec.width);
    let mut video = vec![0.0f32; f * h * w * 3];
    let bg = rgb_of(&truth.background);
    let floor = floor_rgb(bg);
    let stripe_period = (w as f32 / 6.0).max(4.0);
    for (k, frame) in video.chunks_exact_mut(h * w * 3).enumerate() {
        // 1. background, floor band, pan stripes
        let camera = truth.camera_offset[k];
        let panning = truth.camera_direction.is_some();
        for y in 0..h {
            let in_floor = truth.floor_y.is_some_and(|fy| y as f32 >= fy);
            let base = if in_floor { floor } else { bg };
            let row = &mut frame[y * w * 3..(y + 1) * w * 3];
            for (x, px) in row.chunks_exact_mut(3).enumerate() {
                let lift = if panning {
                    STRIPE_LIFT * stripe_fraction(x as f32 + camera, stripe_period)
                } else {
                    0.0
                };
                px.copy_from_slice(&base.map(|c| c + lift));
            }
        }
        // 2. objects, first-named last so it is on top
        for object in truth.objects.iter().rev() {
            let s = object.states[k];
            let colour = rgb_of(&object.colour);
            draw_shape(frame, h, w, object.shape, s.x, s.y, object.radius, colour);
        }
        // 3. the wall, in front of everything
        if let Some(occ) = truth.occluder {
            let x_lo = occ.x0.floor().max(0.0) as usize;
            let x_hi = (occ.x1.ceil().max(0.0) as usize).min(w);
            for x in x_lo..x_hi {
                let cover = (occ.x1.min(x as f32 + 1.0) - occ.x0.max(x as f32)).clamp(0.0, 1.0);
                for y in 0..h {
                    blend(&mut frame[(y * w + x) * 3..][..3], OCCLUDER_RGB, cover);
                }
            }
        }
    }
    video
}

/// Fraction of the pixel `[a, a + 1)` that falls on the odd stripes `[p, 2p) mod 2p`.
fn stripe_fraction(a: f32, p: f32) -> f32 {
    let cumulative = |x: f32| {
        let n = (x / (2.0 * p)).floor();
        n * p + (x - n * 2.0 * p - p).clamp(0.0, p)
    };
    cumulative(a + 1.0) - cumulative(a)
}

fn blend(px: &mut [f32], colour: [f32; 3], alpha: f32) {
    for c in 0..3 {
        px[c] += alpha * (colour[c] - px[c]);
    }
}

/// Paints one shape centred at `(cx, cy)` with half-extent `r` into a `(H, W, 3)` frame.
///
/// Coverage is `clamp(0.5 + d, 0, 1)` for `d` the signed distance (pixels, inside positive)
/// from the pixel centre to the shape's edge: a ball's circle, a square's box, or an upward
/// triangle with its apex at `(cx, cy - r)` and base `y = cy + r`, `x` in `[cx - r, cx + r]`.
#[allow(clippy::too_many_arguments)]
pub fn draw_shape(
    frame: &mut [f32],
    h: usize,
    w: usize,
    shape: Shape,
    cx: f32,
    cy: f32,
    r: f32,
    colour: [f32; 3],
) {
    let x_lo = (cx - r - 1.0).floor().max(0.0) as usize;
    let x_hi = ((cx + r + 1.0).ceil().max(0.0) as usize).min(w);
    let y_lo = (cy - r - 1.0).floor().max(0.0) as usize;
    let y_hi = ((cy + r + 1.0).ceil().max(0.0) as usize).min(h);
    // The triangle's slanted sides satisfy 2|x| - y = r (through the apex (0, -r) and the
    // corners (±r, r)); dividing by |(2, -1)| = √5 makes the residual a distance.
    let slant = 1.0 / 5.0f32.sqrt();
    for y in y_lo..y_hi {
        let py = y as f32 + 0.5 - cy;
        for x in x_lo..x_hi {
            let px = x as f32 + 0.5 - cx;
            let d = match shape {
                Shape::Ball => r - (px * px + py * py).sqrt(),
                Shape::Square => (r - px.abs()).min(r - py.abs()),
                Shape::Triangle => {
                    let side = (r - 2.0 * px.abs() + py) * slant;
                    side.min(r - py)
                }
            };
            let cover = (0.5 + d).clamp(0.0, 1.0);
            if cover > 0.0 {
                blend(&mut frame[(y * w + x) * 3..][..3], colour, cover);
            }
        }
    }
}
