//! The im2col matrices of [`Conv3d`](super::Conv3d), one band of output rows at a time: row
//! `r` holds everything output pixel `r` of the band reads, columns ordered `(t, dy, dx, c)` over
//! all real input frames, so the frames one output frame reads are a column window.
//!
//! Two providers: [`Generic`], built from candle ops so it runs on any device, and [`CpuIm2col`],
//! a candle custom op that gathers straight from the unpadded input on all cores.

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp1, CustomOp2, IndexOp, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::Padding3d;

/// The geometry of one conv: spatial kernel, stride, and padding before the first row / column.
#[derive(Clone, Copy, Debug)]
pub(super) struct Geometry {
    pub kernel: (usize, usize),
    pub stride: (usize, usize),
    pub pad_top: usize,
    pub pad_left: usize,
    pub w_out: usize,
}

/// CPU custom op: `parts` `(T_i, H, W, C)` (one or two) -> `(rows * W', T kh kw C)` for output
/// rows `y0 .. y0 + rows`; zero padding is never materialised.
pub(super) struct CpuIm2col {
    pub geo: Geometry,
    pub y0: usize,
    pub rows: usize,
}

impl CpuIm2col {
    /// Runs the op on one or two time-consecutive parts.
    pub fn apply(&self, parts: &[&Tensor]) -> Result<Tensor> {
        match parts {
            [a] => a.contiguous()?.apply_op1_no_bwd(self),
            [a, b] => a.contiguous()?.apply_op2_no_bwd(&b.contiguous()?, self),
            _ => candle_core::bail!("cpu im2col takes one or two parts, got {}", parts.len()),
        }
    }

    /// Fills the matrix from contiguous `(frames, H, W, C)` slices.
    fn fill<T: Copy + Send + Sync>(
        &self,
        parts: &[(&[T], usize)],
        (h, w, c): (usize, usize, usize),
        zero: T,
    ) -> Vec<T> {
        let Geometry {
            kernel: (kh, kw),
            stride: (sh, sw),
            pad_top,
            pad_left,
            w_out,
        } = self.geo;
        let frames: usize = parts.iter().map(|p| p.1).sum();
        let row_len = frames * kh * kw * c;
        let mut out = vec![zero; self.rows * w_out * row_len];
        out.par_chunks_mut(row_len)
            .enumerate()
            .for_each(|(r, row)| {
                let (y, x) = (self.y0 + r / w_out, r % w_out);
                let mut at = 0;
                for &(data, n) in parts {
                    for f in 0..n {
                        for dy in 0..kh {
                            let iy = (y * sh + dy).wrapping_sub(pad_top);
                            for dx in 0..kw {
                                let ix = (x * sw + dx).wrapping_sub(pad_left);
                                // negative coordinates wrapped to huge ones: both checks catch them
                                if iy < h && ix < w {
                                    let src = ((f * h + iy) * w + ix) * c;
                                    row[at..at + c].copy_from_slice(&data[src..src + c]);
                                }
                                at += c;
                            }
                        }
                    }
                }
            });
        out
    }

    fn run(&self, parts: &[(&CpuStorage, &Layout)]) -> Result<(CpuStorage, Shape)> {
        let mut dims = Vec::with_capacity(parts.len());
        for (_, l) in parts {
            let (t, h, w, c) = l.shape().dims4()?;
            if !l.is_contiguous() {
                candle_core::bail!("cpu im2col needs contiguous parts")
            }
            dims.push((t, h, w, c));
        }
        let (_, h, w, c) = dims[0];
        let frames: usize = dims.iter().map(|d| d.0).sum();
        let (kh, kw) = self.geo.kernel;
        let shape = Shape::from((self.rows * self.geo.w_out, frames * kh * kw * c));
        macro_rules! run_as {
            ($variant:ident, $zero:expr) => {{
                let mut slices = Vec::with_capacity(parts.len());
                for ((s, l), d) in parts.iter().zip(&dims) {
                    let CpuStorage::$variant(v) = s else {
                        candle_core::bail!("cpu im2col parts differ in dtype")
                    };
                    let start = l.start_offset();
                    slices.push((&v[start..start + d.0 * h * w * c], d.0));
                }
                CpuStorage::$variant(self.fill(&slices, (h, w, c), $zero))
            }};
        }
        let out = match parts[0].0 {
            CpuStorage::F32(_) => run_as!(F32, 0f32),
            CpuStorage::F64(_) => run_as!(F64, 0f64),
            CpuStorage::BF16(_) => run_as!(BF16, half::bf16::ZERO),
            CpuStorage::F16(_) => run_as!(F16, half::f16::ZERO),
            s => candle_core::bail!("cpu im2col: unsupported dtype {:?}", s.dtype()),
        };
        Ok((out, shape))
    }
}

impl CustomOp1 for CpuIm2col {
    fn name(&self) -> &'static str {
        "conv3d-im2col"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        self.run(&[(s, l)])
    }
}

impl CustomOp2 for CpuIm2col {
    fn name(&self) -> &'static str {
        "conv3d-im2col"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        self.run(&[(s1, l1), (s2, l2)])
    }
}

/// The device-agnostic provider: tap slices cut from padded copies of the input and
/// concatenated. For stride 1 the output grid is the padded width (`grid_w = Wp`, the last
/// `Wp - W'` columns of each row are garbage to drop); strided convs gather each tap densely.
pub(super) struct Generic {
    taps: Taps,
    pub grid_w: usize,
    geo: Geometry,
    /// Padded width, and where padded position 0 sits in a flat part (stride-1 layout).
    wp: usize,
    origin: isize,
    stored: isize,
    c: usize,
}

enum Taps {
    /// Stride 1: per part `(T_i, H Wp, C)`, each row followed by its zero columns; a tap of a
    /// band is a contiguous run of rows, the zero rows above and below stay virtual.
    Grid(Vec<Tensor>),
    /// Strided: per frame and tap `(dy, dx)`, a dense `(H' W', C)` gather.
    Gathered(Vec<Vec<Tensor>>),
}

impl Generic {
    pub fn new(parts: &[&Tensor], geo: Geometry, pad: Padding3d, h_out: usize) -> Result<Self> {
        let (_, h, w, c) = parts[0].dims4()?;
        let wp = w + pad.w.0 + pad.w.1;
        let (taps, grid_w) = if geo.stride == (1, 1) {
            let flat = parts
                .iter()
                .map(|p| pad_row_ends(p, pad.w.0 + pad.w.1))
                .collect::<Result<Vec<_>>>()?;
            (Taps::Grid(flat), wp)
        } else {
            (
                Taps::Gathered(gather_strided_taps(parts, geo, pad, h_out)?),
                geo.w_out,
            )
        };
        Ok(Self {
            taps,
            grid_w,
            geo,
            wp,
            origin: (pad.h.0 * wp + pad.w.0) as isize,
            stored: (h * wp) as isize,
            c,
        })
    }

    /// `(rows * grid_w, T kh kw C)` for output rows `y0 .. y0 + rows`.
    pub fn band(&self, y0: usize, rows: usize) -> Result<Tensor> {
        let (kh, kw) = self.geo.kernel;
        let n = rows * self.grid_w;
        let mut cols = Vec::new();
        match &self.taps {
            Taps::Grid(flat) => {
                for part in flat {
                    for f in 0..part.dim(0)? {
                        let frame = part.i(f)?;
                        for dy in 0..kh {
                            for dx in 0..kw {
                                cols.push(self.grid_tap(&frame, (y0 + dy) * self.wp + dx, n)?);
                            }
                        }
                    }
                }
            }
            Taps::Gathered(g) => {
                for taps in g {
                    for tap in taps {
                        cols.push(tap.narrow(0, y0 * self.grid_w, n)?);
                    }
                }
            }
        }
        Tensor::cat(&cols, 1)
    }

    /// Rows `pos .. pos + n` of the virtual padded grid of one flat frame `(H Wp, C)`.
    fn grid_tap(&self, frame: &Tensor, pos: usize, n: usize) -> Result<Tensor> {
        let start = pos as isize - self.origin;
        let end = start + n as isize;
        if start >= 0 && end <= self.stored {
            return frame.narrow(0, start as usize, n);
        }
        // the band reaches into the zero rows above or below the frame
        let (lo, hi) = (start.clamp(0, self.stored), end.clamp(0, self.stored));
        let lead = (lo - start).clamp(0, n as isize) as usize;
        let mid = (hi - lo).max(0) as usize;
        let trail = n - lead - mid;
        let zeros = |k: usize| Tensor::zeros((k, self.c), frame.dtype(), frame.device());
        let mut segs = Vec::with_capacity(3);
        if lead > 0 {
            segs.push(zeros(lead)?);
        }
        if mid > 0 {
            segs.push(frame.narrow(0, lo as usize, mid)?);
        }
        if trail > 0 {
            segs.push(zeros(trail)?);
        }
        Tensor::cat(&segs, 0)
    }
}

/// `(T, H, W, C)` -> `(T, H (W + n), C)`: each row followed by `n` zero pixels (one copy, none
/// when `n = 0`). Read with a shifted origin, a row's trailing zeros are the right padding of its
/// row and the left padding of the next.
fn pad_row_ends(x: &Tensor, n: usize) -> Result<Tensor> {
    let (t, h, w, c) = x.dims4()?;
    if n == 0 {
        return x.reshape((t, h * w, c));
    }
    let zeros = Tensor::zeros((t, h, n * c), x.dtype(), x.device())?;
    // t h (w c) ++ t h (n c) -> t (h (w + n)) c
    Tensor::cat(&[&x.reshape((t, h, w * c))?, &zeros], 2)?.reshape((t, h * (w + n), c))
}

/// Zero-pads `(T, H, W, C)` to `(T, H + top + bottom, W + left + right, C)` with two copies.
fn pad_hw(
    x: &Tensor,
    (top, bottom): (usize, usize),
    (left, right): (usize, usize),
) -> Result<Tensor> {
    let (t, h, w, c) = x.dims4()?;
    let (dt, dev) = (x.dtype(), x.device());
    let wp = w + left + right;
    // t h w c -> t h (w c): pad the flattened rows
    let x = x.contiguous()?.reshape((t, h, w * c))?;
    let mut cols = Vec::with_capacity(3);
    if left > 0 {
        cols.push(Tensor::zeros((t, h, left * c), dt, dev)?);
    }
    cols.push(x);
    if right > 0 {
        cols.push(Tensor::zeros((t, h, right * c), dt, dev)?);
    }
    // t h (wp c) -> t (h wp c): pad the flattened frame
    let x = Tensor::cat(&cols, 2)?.reshape((t, h * wp * c))?;
    let mut rows = Vec::with_capacity(3);
    if top > 0 {
        rows.push(Tensor::zeros((t, top * wp * c), dt, dev)?);
    }
    rows.push(x);
    if bottom > 0 {
        rows.push(Tensor::zeros((t, bottom * wp * c), dt, dev)?);
    }
    Tensor::cat(&rows, 1)?.reshape((t, h + top + bottom, wp, c))
}

/// For a spatially strided conv: per input frame, per tap, the `(H' W', C)` values that tap
/// reads (two copies each; only the encoder's three down-sampling convs come here).
fn gather_strided_taps(
    parts: &[&Tensor],
    geo: Geometry,
    pad: Padding3d,
    h_out: usize,
) -> Result<Vec<Vec<Tensor>>> {
    let (kh, kw) = geo.kernel;
    let (sh, sw) = geo.stride;
    let w_out = geo.w_out;
    let mut out = Vec::new();
    for p in parts {
        let (t, h, w, c) = p.dims4()?;
        // round the padded size up to whole strides; the extra zeros are never read
        let hp = (h + pad.h.0 + pad.h.1).div_ceil(sh) * sh;
        let wp = (w + pad.w.0 + pad.w.1).div_ceil(sw) * sw;
        let xp = pad_hw(p, (pad.h.0, hp - h - pad.h.0), (pad.w.0, wp - w - pad.w.0))?;
        // t (hq sh) (wq sw) c -> t hq sh wq (sw c)
        let xp = xp.reshape((t, hp / sh, sh, wp / sw, sw * c))?;
        for f in 0..t {
            let mut taps = Vec::with_capacity(kh * kw);
            for dy in 0..kh {
                for dx in 0..kw {
                    let v = xp
                        .i((f, .., dy % sh))?
                        .narrow(0, dy / sh, h_out)?
                        .narrow(1, dx / sw, w_out)?
                        .narrow(2, (dx % sw) * c, c)?;
                    taps.push(v.contiguous()?.reshape((h_out * w_out, c))?);
                }
            }
            out.push(taps);
        }
    }
    Ok(out)
}
