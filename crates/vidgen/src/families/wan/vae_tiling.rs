//! Spatial tiling of the Wan VAE, as diffusers' `tiled_encode` / `tiled_decode`: overlapping
//! tiles are processed independently (each with its own frame cache), then each tile's top and
//! left overlap is blended linearly with the (already blended) tile above and to its left, and
//! the tiles are cropped to the stride and stitched. All tensors here are channels-last
//! `(B, T, H, W, C)`.

use candle_core::{Result, Tensor};

use super::vae::{AutoencoderKlWan, TilingConfig};

/// Axis of H and W in channels-last `(B, T, H, W, C)`.
const AXIS_H: usize = 2;
const AXIS_W: usize = 3;

/// `video` `(B, C, F, H, W)` -> channels-last moments `(B, T, H/8, W/8, 2Z)`.
pub(crate) fn tiled_encode(
    vae: &AutoencoderKlWan,
    video: &Tensor,
    t: &TilingConfig,
) -> Result<Tensor> {
    let (_, _, _, height, width) = video.dims5()?;
    let s = vae.tile_scale();
    let (latent_h, latent_w) = (height / s, width / s);
    let (min_h, min_w) = (t.tile_sample_min_height / s, t.tile_sample_min_width / s);
    let (stride_h, stride_w) = (
        t.tile_sample_stride_height / s,
        t.tile_sample_stride_width / s,
    );
    let rows = tiles(
        height,
        width,
        t.tile_sample_stride_height,
        t.tile_sample_stride_width,
        |i, j| {
            let tile = video
                .narrow(3, i, t.tile_sample_min_height.min(height - i))?
                .narrow(4, j, t.tile_sample_min_width.min(width - j))?;
            vae.encode_tile(&tile)
        },
    )?;
    let blend = (
        min_h.saturating_sub(stride_h),
        min_w.saturating_sub(stride_w),
    );
    stitch(rows, blend, (stride_h, stride_w), (latent_h, latent_w))
}

/// `z` `(B, Z, T, h, w)` -> channels-last, unclamped video `(B, F, 8h, 8w, C)`.
pub(crate) fn tiled_decode(
    vae: &AutoencoderKlWan,
    z: &Tensor,
    t: &TilingConfig,
    progress: &mut dyn FnMut(usize, usize),
) -> Result<Tensor> {
    let (_, _, frames, height, width) = z.dims5()?;
    let s = vae.tile_scale();
    let (min_h, min_w) = (t.tile_sample_min_height / s, t.tile_sample_min_width / s);
    let (stride_h, stride_w) = (
        t.tile_sample_stride_height / s,
        t.tile_sample_stride_width / s,
    );
    if stride_h == 0 || stride_w == 0 {
        candle_core::bail!("tile strides {t:?} are smaller than one latent pixel ({s} pixels)")
    }
    let n_tiles = height.div_ceil(stride_h) * width.div_ceil(stride_w);
    let total = n_tiles * frames;
    let mut done_tiles = 0;
    let rows = tiles(height, width, stride_h, stride_w, |i, j| {
        let tile = z
            .narrow(3, i, min_h.min(height - i))?
            .narrow(4, j, min_w.min(width - j))?;
        let base = done_tiles * frames;
        let out = vae.decode_tile(&tile, &mut |k| progress(base + k, total))?;
        done_tiles += 1;
        Ok(out)
    })?;
    let blend = (
        t.tile_sample_min_height
            .saturating_sub(t.tile_sample_stride_height),
        t.tile_sample_min_width
            .saturating_sub(t.tile_sample_stride_width),
    );
    let stride = (t.tile_sample_stride_height, t.tile_sample_stride_width);
    stitch(rows, blend, stride, (height * s, width * s))
}

/// Runs `f(i, j)` for tile origins `i` in `0..height` step `stride_h`, `j` likewise; row-major.
fn tiles(
    height: usize,
    width: usize,
    stride_h: usize,
    stride_w: usize,
    mut f: impl FnMut(usize, usize) -> Result<Tensor>,
) -> Result<Vec<Vec<Tensor>>> {
    if stride_h == 0 || stride_w == 0 {
        candle_core::bail!("tile strides must be positive")
    }
    (0..height)
        .step_by(stride_h)
        .map(|i| (0..width).step_by(stride_w).map(|j| f(i, j)).collect())
        .collect()
}

/// Blends each tile with the blended tiles above and to the left over `blend` (rows, columns),
/// keeps its top-left `stride` part, stitches, and crops to `out` `(H, W)`.
pub(crate) fn stitch(
    mut rows: Vec<Vec<Tensor>>,
    blend: (usize, usize),
    stride: (usize, usize),
    out: (usize, usize),
) -> Result<Tensor> {
    let mut result_rows = Vec::with_capacity(rows.len());
    for i in 0..rows.len() {
        let mut pieces = Vec::with_capacity(rows[i].len());
        for j in 0..rows[i].len() {
            let mut tile = rows[i][j].clone();
            if i > 0 {
                tile = blend_into(&rows[i - 1][j], &tile, blend.0, AXIS_H)?;
            }
            if j > 0 {
                tile = blend_into(&rows[i][j - 1], &tile, blend.1, AXIS_W)?;
            }
            // the reference blends in place: later neighbours see the blended tile
            rows[i][j] = tile.clone();
            let th = tile.dim(AXIS_H)?.min(stride.0);
            let tw = tile.dim(AXIS_W)?.min(stride.1);
            pieces.push(tile.narrow(AXIS_H, 0, th)?.narrow(AXIS_W, 0, tw)?);
        }
        result_rows.push(Tensor::cat(&pieces, AXIS_W)?);
    }
    let full = Tensor::cat(&result_rows, AXIS_H)?;
    let (h, w) = (full.dim(AXIS_H)?.min(out.0), full.dim(AXIS_W)?.min(out.1));
    full.narrow(AXIS_H, 0, h)?
        .narrow(AXIS_W, 0, w)?
        .contiguous()
}

/// The first `extent` rows (or columns, along `axis`) of `b` become
/// `a_tail * (1 - y / extent) + b_head * (y / extent)`, where `a_tail` are `a`'s last ones.
pub(crate) fn blend_into(a: &Tensor, b: &Tensor, extent: usize, axis: usize) -> Result<Tensor> {
    let (la, lb) = (a.dim(axis)?, b.dim(axis)?);
    let e = extent.min(la).min(lb);
    if e == 0 {
        return Ok(b.clone());
    }
    let mut shape = vec![1; b.rank()];
    shape[axis] = e;
    // both weights from f64 ramps, as the reference's Python scalars are
    let ramp = |f: fn(f64) -> f64| {
        let v: Vec<f32> = (0..e).map(|y| f(y as f64 / e as f64) as f32).collect();
        Tensor::from_vec(v, shape.as_slice(), b.device())?.to_dtype(b.dtype())
    };
    let (w_a, w_b) = (ramp(|r| 1.0 - r)?, ramp(|r| r)?);
    let head = (a.narrow(axis, la - e, e)?.broadcast_mul(&w_a)?
        + b.narrow(axis, 0, e)?.broadcast_mul(&w_b)?)?;
    if e == lb {
        return Ok(head);
    }
    Tensor::cat(&[&head, &b.narrow(axis, e, lb - e)?], axis)
}
