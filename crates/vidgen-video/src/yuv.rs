//! RGB ⇄ Y'CbCr 4:2:0 (I420), the pixel format H.264 carries.
//!
//! Pixels are gamma-encoded R'G'B' in [0, 1], as the pipeline and every image file hold them;
//! the matrix applies to those values directly, as in every video tool.
//!
//! Chroma sits where H.264 puts it when the stream says nothing (chroma_sample_loc_type 0, as
//! in MPEG-2, x264 and ffmpeg): horizontally on the even luma columns, vertically between the
//! two luma rows. So the encoder filters each chroma sample from columns 2k-1, 2k, 2k+1
//! (weights 1/4, 1/2, 1/4) of rows 2j and 2j+1, and the decoder interpolates linearly
//! between chroma samples at those positions.

use openh264::formats::YUVSource;

/// An RGB → Y'CbCr matrix (luma weights `kr`, `kb`) and quantisation range.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct ColorMatrix {
    kr: f32,
    kb: f32,
    /// Full range: Y' in 0..=255; limited ("TV") range: Y' in 16..=235, chroma in 16..=240.
    full_range: bool,
}

impl ColorMatrix {
    /// ITU-R BT.709, limited range: what vidgen writes and signals in the stream's VUI.
    pub(crate) const BT709: Self = Self {
        kr: 0.2126,
        kb: 0.0722,
        full_range: false,
    };
    /// ITU-R BT.601, limited range.
    pub(crate) const BT601: Self = Self {
        kr: 0.299,
        kb: 0.114,
        full_range: false,
    };

    /// The matrix an H.264 VUI names (`matrix_coefficients`, ITU-T H.264 Table E-5), or, when
    /// it names none, the one players assume: BT.601 below 720 rows, else BT.709.
    pub(crate) fn from_vui(
        matrix_coefficients: Option<u8>,
        full_range: bool,
        height: usize,
    ) -> Self {
        let base = match matrix_coefficients {
            Some(1) => Self::BT709,
            Some(5 | 6) => Self::BT601,
            Some(9 | 10) => Self {
                kr: 0.2627,
                kb: 0.0593,
                full_range: false,
            },
            Some(7) => Self {
                kr: 0.212,
                kb: 0.087,
                full_range: false,
            },
            _ if height >= 720 => Self::BT709,
            _ => Self::BT601,
        };
        Self { full_range, ..base }
    }

    /// (scale, offset) of luma and (scale) of chroma around 128, in 8-bit code values.
    fn ranges(&self) -> (f32, f32, f32) {
        if self.full_range {
            (255.0, 0.0, 255.0)
        } else {
            (219.0, 16.0, 224.0)
        }
    }
}

/// A picture in I420: full-size Y' plane, quarter-size Cb and Cr planes, all tightly packed.
pub(crate) struct I420 {
    pub(crate) width: usize,
    pub(crate) height: usize,
    pub(crate) y: Vec<u8>,
    pub(crate) u: Vec<u8>,
    pub(crate) v: Vec<u8>,
}

impl YUVSource for I420 {
    fn dimensions(&self) -> (usize, usize) {
        (self.width, self.height)
    }

    fn strides(&self) -> (usize, usize, usize) {
        (self.width, self.width / 2, self.width / 2)
    }

    fn y(&self) -> &[u8] {
        &self.y
    }

    fn u(&self) -> &[u8] {
        &self.u
    }

    fn v(&self) -> &[u8] {
        &self.v
    }
}

fn code(value: f32) -> u8 {
    value.round().clamp(0.0, 255.0) as u8
}

/// Converts one `(H, W, 3)` frame to I420 of the even size `coded = (H', W')` ≥ `(H, W)`; the
/// last row and column are repeated to fill the padding.
pub(crate) fn rgb_to_i420(
    frame: &[f32],
    height: usize,
    width: usize,
    coded: (usize, usize),
    matrix: ColorMatrix,
) -> I420 {
    debug_assert_eq!(frame.len(), height * width * 3);
    let (even_h, even_w) = coded;
    debug_assert!(even_h >= height && even_w >= width && even_h % 2 == 0 && even_w % 2 == 0);
    let (kr, kb) = (matrix.kr, matrix.kb);
    let kg = 1.0 - kr - kb;
    let (y_scale, y_offset, c_scale) = matrix.ranges();
    // Pixel (row, col) of the padded picture, clamped into the frame: edge replication.
    let rgb = |row: usize, col: usize| -> [f32; 3] {
        let i = (row.min(height - 1) * width + col.min(width - 1)) * 3;
        [0, 1, 2].map(|c| frame[i + c].clamp(0.0, 1.0))
    };

    let mut y = vec![0u8; even_h * even_w];
    for row in 0..even_h {
        for col in 0..even_w {
            let [r, g, b] = rgb(row, col);
            y[row * even_w + col] = code(y_offset + y_scale * (kr * r + kg * g + kb * b));
        }
    }
    // Chroma of the filtered RGB: the conversion is linear, so this is the filtered chroma.
    let (chroma_h, chroma_w) = (even_h / 2, even_w / 2);
    let mut u = vec![0u8; chroma_h * chroma_w];
    let mut v = vec![0u8; chroma_h * chroma_w];
    for row in 0..chroma_h {
        for col in 0..chroma_w {
            let mut sum = [0.0f32; 3];
            for dr in 0..2 {
                let taps = [(2 * col).saturating_sub(1), 2 * col, 2 * col + 1];
                for (x, weight) in taps.into_iter().zip([0.125, 0.25, 0.125]) {
                    let p = rgb(2 * row + dr, x);
                    (0..3).for_each(|c| sum[c] += weight * p[c]);
                }
            }
            let [r, g, b] = sum;
            let luma = kr * r + kg * g + kb * b;
            let pb = (b - luma) / (2.0 * (1.0 - kb));
            let pr = (r - luma) / (2.0 * (1.0 - kr));
            u[row * chroma_w + col] = code(128.0 + c_scale * pb);
            v[row * chroma_w + col] = code(128.0 + c_scale * pr);
        }
    }
    I420 {
        width: even_w,
        height: even_h,
        y,
        u,
        v,
    }
}

/// Converts a decoded I420 picture of `(height, width)` (with its plane strides) to
/// `(height, width, 3)` f32 RGB in [0, 1], written to `out`.
pub(crate) fn i420_to_rgb(source: &impl YUVSource, matrix: ColorMatrix, out: &mut [f32]) {
    let (width, height) = source.dimensions();
    let (y_stride, u_stride, v_stride) = source.strides();
    let (planes_y, planes_u, planes_v) = (source.y(), source.u(), source.v());
    debug_assert_eq!(out.len(), height * width * 3);
    let (kr, kb) = (matrix.kr, matrix.kb);
    let kg = 1.0 - kr - kb;
    let (y_scale, y_offset, c_scale) = matrix.ranges();
    let (chroma_h, chroma_w) = (height.div_ceil(2), width.div_ceil(2));

    // Vertically, luma row i sits at chroma row i/2 - 1/4: the nearer chroma row weighs 3/4.
    let rows = |i: usize| -> (usize, usize) {
        let near = i / 2;
        let far = if i % 2 == 0 {
            near.saturating_sub(1)
        } else {
            (near + 1).min(chroma_h - 1)
        };
        (near, far)
    };
    // Horizontally, luma column i sits at chroma column i/2: on a sample, or halfway.
    let cols = |i: usize| -> (usize, usize) { (i / 2, i.div_ceil(2).min(chroma_w - 1)) };
    let mut pb_row = vec![0.0f32; chroma_w];
    let mut pr_row = vec![0.0f32; chroma_w];
    for row in 0..height {
        // Vertical interpolation first, into one row of chroma.
        let (near, far) = rows(row);
        for col in 0..chroma_w {
            let chroma = |plane: &[u8], stride: usize| {
                let a = f32::from(plane[near * stride + col]);
                let b = f32::from(plane[far * stride + col]);
                (0.75 * a + 0.25 * b - 128.0) / c_scale
            };
            pb_row[col] = chroma(planes_u, u_stride);
            pr_row[col] = chroma(planes_v, v_stride);
        }
        for col in 0..width {
            let (left, right) = cols(col);
            let pb = 0.5 * (pb_row[left] + pb_row[right]);
            let pr = 0.5 * (pr_row[left] + pr_row[right]);
            let luma = (f32::from(planes_y[row * y_stride + col]) - y_offset) / y_scale;
            let r = luma + 2.0 * (1.0 - kr) * pr;
            let b = luma + 2.0 * (1.0 - kb) * pb;
            let g = (luma - kr * r - kb * b) / kg;
            let o = (row * width + col) * 3;
            out[o] = r.clamp(0.0, 1.0);
            out[o + 1] = g.clamp(0.0, 1.0);
            out[o + 2] = b.clamp(0.0, 1.0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A smooth colourful test picture, `(H, W, 3)`.
    fn picture(height: usize, width: usize) -> Vec<f32> {
        let mut frame = Vec::with_capacity(height * width * 3);
        for row in 0..height {
            for col in 0..width {
                let (fy, fx) = (row as f32 / height as f32, col as f32 / width as f32);
                frame.extend([fx, fy, 0.5 + 0.4 * (3.0 * fx + 2.0 * fy).sin()]);
            }
        }
        frame
    }

    fn mean_abs_error(a: &[f32], b: &[f32]) -> f32 {
        a.iter().zip(b).map(|(x, y)| (x - y).abs()).sum::<f32>() / a.len() as f32
    }

    #[test]
    fn round_trip_through_i420_is_close() {
        for matrix in [
            ColorMatrix::BT709,
            ColorMatrix::BT601,
            ColorMatrix::from_vui(Some(1), true, 64),
        ] {
            let (height, width) = (32, 48);
            let frame = picture(height, width);
            let yuv = rgb_to_i420(&frame, height, width, (height, width), matrix);
            let mut back = vec![0.0; frame.len()];
            i420_to_rgb(&yuv, matrix, &mut back);
            let error = mean_abs_error(&frame, &back);
            assert!(error < 0.006, "{matrix:?}: mean abs error {error}");
        }
    }

    #[test]
    fn greys_and_primaries_map_to_reference_codes() {
        // BT.709 limited: black (16, 128, 128), white (235, 128, 128),
        // red Y' = 16 + 219 * 0.2126 = 62.56 -> 63, Cr = 128 + 224 * 0.5 = 240.
        let red = [1.0f32, 0.0, 0.0].repeat(4);
        let yuv = rgb_to_i420(&red, 2, 2, (2, 2), ColorMatrix::BT709);
        assert_eq!((yuv.y[0], yuv.u[0], yuv.v[0]), (63, 102, 240));
        let white = [1.0f32; 12];
        let yuv = rgb_to_i420(&white, 2, 2, (2, 2), ColorMatrix::BT709);
        assert_eq!((yuv.y[0], yuv.u[0], yuv.v[0]), (235, 128, 128));
        let black = [0.0f32; 12];
        let yuv = rgb_to_i420(&black, 2, 2, (2, 2), ColorMatrix::BT709);
        assert_eq!((yuv.y[0], yuv.u[0], yuv.v[0]), (16, 128, 128));
    }

    #[test]
    fn odd_sizes_pad_by_repeating_the_edge() {
        let frame = picture(3, 5);
        let yuv = rgb_to_i420(&frame, 3, 5, (4, 6), ColorMatrix::BT709);
        assert_eq!((yuv.height, yuv.width), (4, 6));
        assert_eq!((yuv.y.len(), yuv.u.len()), (24, 6));
        for row in 0..4 {
            assert_eq!(
                yuv.y[row * 6 + 5],
                yuv.y[row * 6 + 4],
                "column padding, row {row}"
            );
        }
        assert_eq!(yuv.y[18..24], yuv.y[12..18], "row padding");
    }
}
