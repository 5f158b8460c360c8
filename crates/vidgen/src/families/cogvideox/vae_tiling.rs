//! Spatial tiling of the CogVideoX VAE, diffusers' `enable_tiling`: the frame is cut into
//! overlapping tiles, each encoded or decoded on its own (with the usual frame chunking), and the
//! overlaps blended linearly, the tile above and the tile to the left into the current one.

use candle_core::{Result, Tensor};

use super::vae::{AutoencoderKlCogVideoX, AutoencoderKlCogVideoXConfig};

/// Tile sizes and overlaps, as `enable_tiling`'s arguments.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct TilingConfig {
    /// Tile height in pixels; taller frames are tiled (`sample_height / 2`, 240).
    pub tile_sample_min_height: usize,
    /// Tile width in pixels (`sample_width / 2`, 360).
    pub tile_sample_min_width: usize,
    /// Fraction of a tile shared with the next one down (1/6).
    pub tile_overlap_factor_height: f64,
    /// Fraction of a tile shared with the next one right (1/5).
    pub tile_overlap_factor_width: f64,
}

impl TilingConfig {
    /// The reference's defaults for a model with this config.
    pub fn for_config(cfg: &AutoencoderKlCogVideoXConfig) -> Self {
        Self {
            tile_sample_min_height: cfg.sample_height / 2,
            tile_sample_min_width: cfg.sample_width / 2,
            tile_overlap_factor_height: 1.0 / 6.0,
            tile_overlap_factor_width: 1.0 / 5.0,
        }
    }
}

/// `int(x * f)` as Python computes it.
fn scaled(x: usize, f: f64) -> usize {
    (x as f64 * f) as usize
}

/// Tile geometry along one axis: tiles of `tile_in` input units every `stride_in`, blended over
/// `blend` output units, each kept for `limit` output units.
struct Axis {
    tile_in: usize,
    stride_in: usize,
    blend: usize,
    limit: usize,
}

impl Axis {
    /// `tile_in` input units give `tile_out` output units; `overlap` is the overlap factor.
    fn new(tile_in: usize, tile_out: usize, overlap: f64) -> Result<Self> {
        let stride_in = scaled(tile_in, 1.0 - overlap);
        let blend = scaled(tile_out, overlap);
        if stride_in == 0 || blend > tile_out {
            candle_core::bail!("tiling: tiles of {tile_in} with overlap {overlap} do not advance")
        }
        Ok(Self {
            tile_in,
            stride_in,
            blend,
            limit: tile_out - blend,
        })
    }
}

/// `video` `(B, C, F, H, W)` -> channels-last moments `(B, T, h, w, 2Z)`.
pub(crate) fn tiled_encode(
    vae: &AutoencoderKlCogVideoX,
    video: &Tensor,
    t: &TilingConfig,
) -> Result<Tensor> {
    let s = vae.config().spatial_compression();
    let rows = Axis::new(
        t.tile_sample_min_height,
        t.tile_sample_min_height / s,
        t.tile_overlap_factor_height,
    )?;
    let cols = Axis::new(
        t.tile_sample_min_width,
        t.tile_sample_min_width / s,
        t.tile_overlap_factor_width,
    )?;
    tiled(video, &rows, &cols, &mut |tile| vae.encode_tile(tile))
}

/// `z` `(B, Z, T, h, w)` -> channels-last video `(B, F, H, W, C)`.
pub(crate) fn tiled_decode(
    vae: &AutoencoderKlCogVideoX,
    z: &Tensor,
    t: &TilingConfig,
) -> Result<Tensor> {
    let s = vae.config().spatial_compression();
    let rows = Axis::new(
        t.tile_sample_min_height / s,
        t.tile_sample_min_height,
        t.tile_overlap_factor_height,
    )?;
    let cols = Axis::new(
        t.tile_sample_min_width / s,
        t.tile_sample_min_width,
        t.tile_overlap_factor_width,
    )?;
    tiled(z, &rows, &cols, &mut |tile| {
        vae.decode_tile(tile, &mut |_| {})
    })
}

/// Runs `run` on tiles of `x` `(B, C, T, H, W)` (outputs channels-last `(B, T', H', W', C')`),
/// blends and crops them, and stitches the result.
fn tiled(
    x: &Tensor,
    rows: &Axis,
    cols: &Axis,
    run: &mut dyn FnMut(&Tensor) -> Result<Tensor>,
) -> Result<Tensor> {
    let (_, _, _, h, w) = x.dims5()?;
    let mut tiles: Vec<Vec<Tensor>> = Vec::new();
    for i in (0..h).step_by(rows.stride_in) {
        let mut row = Vec::new();
        for j in (0..w).step_by(cols.stride_in) {
            let tile =
                x.narrow(3, i, rows.tile_in.min(h - i))?
                    .narrow(4, j, cols.tile_in.min(w - j))?;
            row.push(run(&tile.contiguous()?)?);
        }
        tiles.push(row);
    }
    // the reference blends in place, so a tile's neighbours below and right see it blended
    let mut out_rows = Vec::with_capacity(tiles.len());
    for i in 0..tiles.len() {
        let mut out_row = Vec::with_capacity(tiles[i].len());
        for j in 0..tiles[i].len() {
            let mut tile = tiles[i][j].clone();
            if i > 0 {
                tile = blend(&tiles[i - 1][j], &tile, rows.blend, 2)?;
            }
            if j > 0 {
                tile = blend(&tiles[i][j - 1], &tile, cols.blend, 3)?;
            }
            let (th, tw) = (tile.dim(2)?, tile.dim(3)?);
            out_row.push(tile.narrow(2, 0, rows.limit.min(th))?.narrow(
                3,
                0,
                cols.limit.min(tw),
            )?);
            tiles[i][j] = tile;
        }
        out_rows.push(Tensor::cat(&out_row, 3)?);
    }
    Tensor::cat(&out_rows, 2)
}

/// `blend_v` (`dim` 2) / `blend_h` (`dim` 3) on channels-last tiles: the first `extent` rows
/// (columns) of `b` fade in from the last ones of `a`, weight `y / extent` on `b`.
fn blend(a: &Tensor, b: &Tensor, extent: usize, dim: usize) -> Result<Tensor> {
    let (na, nb) = (a.dim(dim)?, b.dim(dim)?);
    let e = extent.min(na).min(nb);
    if e == 0 {
        return Ok(b.clone());
    }
    let mut parts = Vec::with_capacity(e + 1);
    for y in 0..e {
        let wb = y as f64 / e as f64;
        let from_a = a.narrow(dim, na - e + y, 1)?.affine(1.0 - wb, 0.0)?;
        parts.push((from_a + b.narrow(dim, y, 1)?.affine(wb, 0.0)?)?);
    }
    if nb > e {
        parts.push(b.narrow(dim, e, nb - e)?);
    }
    Tensor::cat(&parts, dim)
}
