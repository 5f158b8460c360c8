//! Finding objects in a frame from its pixels alone: background, floor and wall colours from
//! the frame's border, a foreground mask of pixels far from all three, and its 4-connected
//! components ("blobs") with their colour class, size and fill ratio.

use crate::data::COLOURS;

/// RGB distance beyond which a pixel is not background (an anti-aliased edge pixel half
/// covering the darkest object on the lightest background is still about 0.3 away).
pub const FOREGROUND_DISTANCE: f32 = 0.2;
/// A blob's core colour must be this close to a palette colour to count as an object.
pub const PALETTE_DISTANCE: f32 = 0.35;

/// One connected foreground region of a frame.
#[derive(Clone, Debug, PartialEq)]
pub struct Blob {
    /// Pixels in the mask.
    pub area: usize,
    /// Bounding box of the mask, `[x0, x1) × [y0, y1)`.
    pub x0: usize,
    pub x1: usize,
    pub y0: usize,
    pub y1: usize,
    /// Coverage-weighted centre of the column and row extents: for every world shape, the
    /// centre of its bounding box, to a fraction of a pixel.
    pub cx: f32,
    pub cy: f32,
    /// Index into [`COLOURS`] of the nearest palette colour of the blob's core, if near enough.
    pub colour: Option<usize>,
    /// Soft (coverage-weighted) area over the soft width × height: ball ≈ 0.79, square ≈ 1,
    /// triangle ≈ 0.5.
    pub fill: f32,
    /// Share of the coverage below the centre line: ball and square ≈ 0.5, the upward
    /// triangle ≈ 0.75. Unlike `fill`, it survives blur (chroma subsampling, a soft model).
    pub bottom_share: f32,
    /// The box touches the frame border or the wall: the shape may be cut.
    pub clipped: bool,
}

impl Blob {
    pub fn centre(&self) -> (f32, f32) {
        (self.cx, self.cy)
    }
}

fn dist(a: &[f32], b: &[f32]) -> f32 {
    ((a[0] - b[0]).powi(2) + (a[1] - b[1]).powi(2) + (a[2] - b[2]).powi(2)).sqrt()
}

fn median3(pixels: &mut [[f32; 3]]) -> [f32; 3] {
    let mut out = [0.0; 3];
    for (c, o) in out.iter_mut().enumerate() {
        let mut v: Vec<f32> = pixels.iter().map(|p| p[c]).collect();
        v.sort_by(f32::total_cmp);
        *o = v[v.len() / 2];
    }
    out
}

/// The blobs of one `(H, W, 3)` frame that could be world objects: not larger than a third
/// of the frame's smaller side squared, at least 3 pixels.
pub fn find_blobs(frame: &[f32], h: usize, w: usize) -> Vec<Blob> {
    let px = |x: usize, y: usize| -> [f32; 3] {
        let i = (y * w + x) * 3;
        [frame[i], frame[i + 1], frame[i + 2]]
    };
    // 1. Background: the median of the top row and the side columns above the floor band;
    //    floor: the median of the bottom row (the background again when there is no floor).
    let mut border: Vec<[f32; 3]> = (0..w).map(|x| px(x, 0)).collect();
    for y in 0..(h * 4 / 5) {
        border.push(px(0, y));
        border.push(px(w - 1, y));
    }
    let bg = median3(&mut border);
    let floor = median3(&mut (0..w).map(|x| px(x, h - 1)).collect::<Vec<_>>());
    // 2. Wall: columns whose top, middle and bottom pixels agree and are not background.
    let wall_cols: Vec<usize> = (0..w)
        .filter(|&x| {
            let (t, m, b) = (px(x, 0), px(x, h / 2), px(x, h - 1));
            dist(&t, &bg) > FOREGROUND_DISTANCE
                && dist(&b, &floor) > FOREGROUND_DISTANCE
                && dist(&t, &m) < 0.1
                && dist(&t, &b) < 0.1
        })
        .collect();
    let wall = (!wall_cols.is_empty())
        .then(|| median3(&mut wall_cols.iter().map(|&x| px(x, 0)).collect::<Vec<_>>()));
    // 3. Foreground distance: to the nearest of background, floor and wall.
    let distance: Vec<f32> = frame
        .chunks_exact(3)
        .map(|p| {
            let d = dist(p, &bg).min(dist(p, &floor));
            wall.map_or(d, |c| d.min(dist(p, &c)))
        })
        .collect();
    // 4. Connected components of the mask, 4-neighbourhood.
    let mut label = vec![usize::MAX; h * w];
    let mut blobs = Vec::new();
    let mut stack = Vec::new();
    let max_area = (h.min(w) * h.min(w)) / 6;
    for start in 0..h * w {
        if label[start] != usize::MAX || distance[start] <= FOREGROUND_DISTANCE {
            continue;
        }
        let id = blobs.len();
        let mut pixels = Vec::new();
        label[start] = id;
        stack.push(start);
        while let Some(i) = stack.pop() {
            pixels.push(i);
            let (x, y) = (i % w, i / w);
            let mut visit = |j: usize| {
                if label[j] == usize::MAX && distance[j] > FOREGROUND_DISTANCE {
                    label[j] = id;
                    stack.push(j);
                }
            };
            if x > 0 {
                visit(i - 1);
            }
            if x + 1 < w {
                visit(i + 1);
            }
            if y > 0 {
                visit(i - w);
            }
            if y + 1 < h {
                visit(i + w);
            }
        }
        blobs.push(describe(frame, w, h, &pixels, &distance, &wall_cols));
    }
    blobs
        .into_iter()
        .filter(|b| b.area >= 3 && b.area <= max_area)
        .collect()
}

/// Colour, box and fill of one component.
fn describe(
    frame: &[f32],
    w: usize,
    h: usize,
    pixels: &[usize],
    distance: &[f32],
    wall_cols: &[usize],
) -> Blob {
    // The core: pixels at least 80 % as far from the background as the farthest one.
    let far = pixels.iter().map(|&i| distance[i]).fold(0.0f32, f32::max);
    let core: Vec<usize> = pixels
        .iter()
        .copied()
        .filter(|&i| distance[i] >= 0.8 * far)
        .collect();
    let mut mean = [0.0f32; 3];
    for &i in &core {
        for c in 0..3 {
            mean[c] += frame[i * 3 + c] / core.len() as f32;
        }
    }
    let colour = COLOURS
        .iter()
        .enumerate()
        .map(|(k, (_, rgb))| (k, dist(&mean, rgb)))
        .min_by(|a, b| a.1.total_cmp(&b.1))
        .filter(|(_, d)| *d < PALETTE_DISTANCE)
        .map(|(k, _)| k);
    // Coverage of each pixel: its distance from the background over the core's. The soft
    // width is the sum over columns of the column's largest coverage (exact for a box whose
    // sides fall between pixels), likewise the height, and the centre their weighted mean.
    let core_distance = core.iter().map(|&i| distance[i]).sum::<f32>() / core.len() as f32;
    let (x0, x1) = span(pixels.iter().map(|&i| i % w));
    let (y0, y1) = span(pixels.iter().map(|&i| i / w));
    let mut col_max = vec![0.0f32; x1 - x0];
    let mut row_max = vec![0.0f32; y1 - y0];
    let mut soft = 0.0;
    for &i in pixels {
        let alpha = (distance[i] / core_distance).min(1.0);
        let (x, y) = (i % w, i / w);
        soft += alpha;
        col_max[x - x0] = col_max[x - x0].max(alpha);
        row_max[y - y0] = row_max[y - y0].max(alpha);
    }
    let weighted = |profile: &[f32], origin: usize| {
        let total: f32 = profile.iter().sum();
        let moment: f32 = (profile.iter().enumerate())
            .map(|(k, _)| (origin + k) as f32 + 0.5)
            .zip(profile)
            .map(|(c, a)| c * a)
            .sum();
        (total, moment / total)
    };
    let (width, cx) = weighted(&col_max, x0);
    let (height, cy) = weighted(&row_max, y0);
    let below: f32 = pixels
        .iter()
        .map(|&i| {
            let alpha = (distance[i] / core_distance).min(1.0);
            // The share of the pixel's row below the centre line.
            alpha * ((i / w) as f32 + 1.0 - cy).clamp(0.0, 1.0)
        })
        .sum();
    let near_wall = wall_cols.iter().any(|&c| c + 1 >= x0 && c <= x1);
    Blob {
        area: pixels.len(),
        x0,
        x1,
        y0,
        y1,
        cx,
        cy,
        colour,
        fill: soft / (width * height),
        bottom_share: below / soft,
        clipped: x0 == 0 || y0 == 0 || x1 == w || y1 == h || near_wall,
    }
}

/// `[min, max + 1)` of some coordinates (non-empty).
fn span(it: impl Iterator<Item = usize>) -> (usize, usize) {
    let (lo, hi) = it.fold((usize::MAX, 0), |(lo, hi), v| (lo.min(v), hi.max(v)));
    (lo, hi + 1)
}
