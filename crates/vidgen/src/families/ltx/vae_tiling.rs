//! Spatial and temporal tiling of the LTX-Video VAE, as diffusers' `tiled_encode` /
//! `tiled_decode` (`enable_tiling`) and `_temporal_tiled_encode` / `_temporal_tiled_decode`
//! (`use_framewise_decoding`): overlapping tiles or frame windows are processed independently,
//! blended linearly with the already blended neighbour, cropped and stitched. Memory then scales
//! with a tile / window instead of the clip. All tensors here are channels-last
//! `(B, T, H, W, C)`.

use candle_core::{Result, Tensor};

use super::vae::AutoencoderKlLtxVideo;
use crate::families::wan::vae_tiling::{blend_into, stitch};

/// Spatial tiling of `encode`/`decode`, diffusers' `enable_tiling` for this VAE: tiles of
/// `tile_sample_min_*` pixels every `tile_sample_stride_*` pixels, overlaps blended linearly
/// (tile sizes in latents are these divided by the spatial compression, as in the reference).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TilingConfig {
    /// Tile height in pixels; taller frames are tiled (512).
    pub tile_sample_min_height: usize,
    /// Tile width in pixels; wider frames are tiled (512).
    pub tile_sample_min_width: usize,
    /// Vertical distance between tiles in pixels (448).
    pub tile_sample_stride_height: usize,
    /// Horizontal distance between tiles in pixels (448).
    pub tile_sample_stride_width: usize,
}

impl Default for TilingConfig {
    fn default() -> Self {
        Self {
            tile_sample_min_height: 512,
            tile_sample_min_width: 512,
            tile_sample_stride_height: 448,
            tile_sample_stride_width: 448,
        }
    }
}

/// Temporal tiling ("framewise" encoding and decoding, diffusers' `use_framewise_decoding`,
/// which the reference's encoder obeys as well): windows of `tile_sample_min_num_frames + 1`
/// frames every `tile_sample_stride_num_frames`, overlaps blended linearly in time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FramewiseConfig {
    /// Frames per window, less one; longer clips are split (16).
    pub tile_sample_min_num_frames: usize,
    /// Frames between windows (8).
    pub tile_sample_stride_num_frames: usize,
}

impl Default for FramewiseConfig {
    fn default() -> Self {
        Self {
            tile_sample_min_num_frames: 16,
            tile_sample_stride_num_frames: 8,
        }
    }
}

impl AutoencoderKlLtxVideo {
    /// Encodes channels-last `x` `(B, F, H, W, C)`, spatially tiled if tiling is on and the
    /// frame is larger than a tile.
    pub(super) fn encode_frames(&self, x: &Tensor) -> Result<Tensor> {
        let (height, width) = (x.dim(2)?, x.dim(3)?);
        match self.tiling {
            Some(t) if height > t.tile_sample_min_height || width > t.tile_sample_min_width => {
                self.tiled_encode(x, &t)
            }
            _ => self.encoder.forward(x),
        }
    }

    /// Decodes channels-last `z` `(B, T, h, w, Z)`, spatially tiled if tiling is on and the
    /// latent frame is larger than a tile.
    pub(super) fn decode_frames(&self, z: &Tensor, timestep: Option<&Tensor>) -> Result<Tensor> {
        let s = self.config().spatial_compression();
        let (height, width) = (z.dim(2)?, z.dim(3)?);
        match self.tiling {
            Some(t)
                if height > t.tile_sample_min_height / s || width > t.tile_sample_min_width / s =>
            {
                self.tiled_decode(z, timestep, &t)
            }
            _ => self.decoder.forward(z, timestep),
        }
    }

    /// diffusers' `_temporal_tiled_encode`: windows of `min + 1` frames every `stride`, each
    /// but the first losing its first latent frame, blended over `(min - stride) / t` latent
    /// frames with the (blended) window before.
    pub(super) fn framewise_encode(&self, x: &Tensor, f: &FramewiseConfig) -> Result<Tensor> {
        let frames = x.dim(1)?;
        let tc = self.config().temporal_compression();
        let (min_t, stride_t) = (
            f.tile_sample_min_num_frames / tc,
            f.tile_sample_stride_num_frames / tc,
        );
        if f.tile_sample_stride_num_frames == 0 {
            candle_core::bail!("framewise stride must be positive")
        }
        let mut windows = Vec::new();
        for i in (0..frames).step_by(f.tile_sample_stride_num_frames) {
            let n = (f.tile_sample_min_num_frames + 1).min(frames - i);
            let mut tile = self.encode_frames(&x.narrow(1, i, n)?.contiguous()?)?;
            if i > 0 {
                tile = tile.narrow(1, 1, tile.dim(1)? - 1)?;
            }
            windows.push(tile);
        }
        let blend = min_t.saturating_sub(stride_t);
        stitch_time(
            windows,
            blend,
            stride_t + 1,
            stride_t,
            (frames - 1) / tc + 1,
        )
    }

    /// diffusers' `_temporal_tiled_decode`: windows of `min / t + 1` latent frames every
    /// `stride / t`, each but the first losing its last output frame, blended over
    /// `min - stride` frames with the (blended) window before.
    pub(super) fn framewise_decode(
        &self,
        z: &Tensor,
        timestep: Option<&Tensor>,
        f: &FramewiseConfig,
    ) -> Result<Tensor> {
        let frames = z.dim(1)?;
        let tc = self.config().temporal_compression();
        let (min_t, stride_t) = (
            f.tile_sample_min_num_frames / tc,
            f.tile_sample_stride_num_frames / tc,
        );
        if stride_t == 0 {
            candle_core::bail!("framewise stride is less than one latent frame ({tc} frames)")
        }
        let mut windows = Vec::new();
        for i in (0..frames).step_by(stride_t) {
            let n = (min_t + 1).min(frames - i);
            let mut tile = self.decode_frames(&z.narrow(1, i, n)?.contiguous()?, timestep)?;
            if i > 0 {
                // the reference drops the last frame here, not the first
                tile = tile.narrow(1, 0, tile.dim(1)? - 1)?;
            }
            windows.push(tile);
        }
        let blend = f
            .tile_sample_min_num_frames
            .saturating_sub(f.tile_sample_stride_num_frames);
        let stride = f.tile_sample_stride_num_frames;
        stitch_time(windows, blend, stride + 1, stride, (frames - 1) * tc + 1)
    }

    /// diffusers' `tiled_encode`: channels-last `x` `(B, F, H, W, C)` -> moments
    /// `(B, T, h, w, Z + 1)`, tiles blended in latent space.
    fn tiled_encode(&self, x: &Tensor, t: &TilingConfig) -> Result<Tensor> {
        let (_, _, height, width, _) = x.dims5()?;
        let s = self.config().spatial_compression();
        let (min_h, min_w) = (t.tile_sample_min_height / s, t.tile_sample_min_width / s);
        let (stride_h, stride_w) = (
            t.tile_sample_stride_height / s,
            t.tile_sample_stride_width / s,
        );
        let rows = tile_grid(
            height,
            width,
            t.tile_sample_stride_height,
            t.tile_sample_stride_width,
            |i, j| {
                let tile = x
                    .narrow(2, i, t.tile_sample_min_height.min(height - i))?
                    .narrow(3, j, t.tile_sample_min_width.min(width - j))?;
                self.encoder.forward(&tile.contiguous()?)
            },
        )?;
        let blend = (
            min_h.saturating_sub(stride_h),
            min_w.saturating_sub(stride_w),
        );
        stitch(rows, blend, (stride_h, stride_w), (height / s, width / s))
    }

    /// diffusers' `tiled_decode`: channels-last `z` `(B, T, h, w, Z)` -> `(B, F, H, W, C)`,
    /// tiles blended in pixel space; every tile sees the same timestep.
    fn tiled_decode(
        &self,
        z: &Tensor,
        timestep: Option<&Tensor>,
        t: &TilingConfig,
    ) -> Result<Tensor> {
        let (_, _, height, width, _) = z.dims5()?;
        let s = self.config().spatial_compression();
        let (min_h, min_w) = (t.tile_sample_min_height / s, t.tile_sample_min_width / s);
        let (stride_h, stride_w) = (
            t.tile_sample_stride_height / s,
            t.tile_sample_stride_width / s,
        );
        let rows = tile_grid(height, width, stride_h, stride_w, |i, j| {
            let tile = z
                .narrow(2, i, min_h.min(height - i))?
                .narrow(3, j, min_w.min(width - j))?;
            self.decoder.forward(&tile.contiguous()?, timestep)
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
}

/// Runs `f(i, j)` for tile origins `i` in `0..height` step `stride_h`, `j` likewise; row-major.
fn tile_grid(
    height: usize,
    width: usize,
    stride_h: usize,
    stride_w: usize,
    mut f: impl FnMut(usize, usize) -> Result<Tensor>,
) -> Result<Vec<Vec<Tensor>>> {
    if stride_h == 0 || stride_w == 0 {
        candle_core::bail!("tile strides must be at least one latent pixel")
    }
    (0..height)
        .step_by(stride_h)
        .map(|i| (0..width).step_by(stride_w).map(|j| f(i, j)).collect())
        .collect()
}

/// Blends each window `(B, T_i, H, W, C)` over `blend` frames with the blended window before,
/// keeps the first `first_keep` frames of the first window and `keep` of the others, and crops
/// the concatenation to `total` frames.
fn stitch_time(
    mut windows: Vec<Tensor>,
    blend: usize,
    first_keep: usize,
    keep: usize,
    total: usize,
) -> Result<Tensor> {
    let mut pieces = Vec::with_capacity(windows.len());
    for i in 0..windows.len() {
        let mut tile = windows[i].clone();
        let n = if i > 0 {
            tile = blend_into(&windows[i - 1], &tile, blend, 1)?;
            // the reference blends in place: the next window sees this one blended
            windows[i] = tile.clone();
            keep
        } else {
            first_keep
        };
        pieces.push(tile.narrow(1, 0, n.min(tile.dim(1)?))?);
    }
    let all = Tensor::cat(&pieces, 1)?;
    let t = all.dim(1)?.min(total);
    all.narrow(1, 0, t)?.contiguous()
}
