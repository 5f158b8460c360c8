//! CogVideoX's position encodings: the 3D sin-cos table of the 2b model and the 3D RoPE tables
//! (with the crop box relative to the training resolution) of the 5b model.
//!
//! Token order everywhere is `(t, h, w)` row-major over the patch grid.

use candle_core::{Device, Result, Tensor};

/// `[sin(pos·ω_0..ω_{n-1}), cos(pos·ω_0..ω_{n-1})]` with `ω_j = 10000^(-j/n)`, `n = dim/2`:
/// sines first (diffusers' `get_1d_sincos_pos_embed_from_grid`). Computed in f64 like the
/// reference on CPU.
fn sincos_1d(dim: usize, pos: f64, out: &mut Vec<f64>) {
    let half = dim / 2;
    let angles = (0..half).map(|j| pos / 10000f64.powf(j as f64 / half as f64));
    let angles: Vec<f64> = angles.collect();
    out.extend(angles.iter().map(|a| a.sin()));
    out.extend(angles.iter().map(|a| a.cos()));
}

/// The 3D sin-cos position table of the 2b model (`get_3d_sincos_pos_embed`).
///
/// * `dim` — `D`, a multiple of 16
/// * `grid` — `(T, h, w)` patch grid
///
/// Returns `(T·h·w, D)` f32. Per token: `D/4` temporal channels, then `3D/8` for the **width**
/// coordinate and `3D/8` for the height coordinate (the reference's meshgrid puts `w` first).
/// Positions are divided by the interpolation scales in f32 before the f64 sines.
pub fn sincos_3d_table(
    dim: usize,
    grid: (usize, usize, usize),
    spatial_interpolation_scale: f64,
    temporal_interpolation_scale: f64,
    device: &Device,
) -> Result<Tensor> {
    let (t, h, w) = grid;
    let (dim_t, dim_s) = (dim / 4, 3 * dim / 4);
    let spatial_scale = spatial_interpolation_scale as f32;
    let temporal_scale = temporal_interpolation_scale as f32;
    let mut table = Vec::with_capacity(t * h * w * dim);
    let mut temporal = Vec::with_capacity(dim_t);
    for ti in 0..t {
        temporal.clear();
        sincos_1d(dim_t, (ti as f32 / temporal_scale) as f64, &mut temporal);
        for hi in 0..h {
            for wi in 0..w {
                table.extend(&temporal);
                sincos_1d(dim_s / 2, (wi as f32 / spatial_scale) as f64, &mut table);
                sincos_1d(dim_s / 2, (hi as f32 / spatial_scale) as f64, &mut table);
            }
        }
    }
    let table: Vec<f32> = table.into_iter().map(|v| v as f32).collect();
    Tensor::from_vec(table, (t * h * w, dim), device)
}

/// Python's `round` (half to even), which the reference's crop box uses: `round(4.5) == 4`.
fn round_half_even(x: f64) -> i64 {
    x.round_ties_even() as i64
}

/// The crop box `((top, left), (bottom, right))` of a `(h, w)` patch grid resized into the
/// training grid `(base_h, base_w)` keeping its aspect ratio, centred
/// (`get_resize_crop_region_for_grid`).
pub fn resize_crop_region(
    grid_hw: (usize, usize),
    base_hw: (usize, usize),
) -> ((i64, i64), (i64, i64)) {
    let (h, w) = (grid_hw.0 as f64, grid_hw.1 as f64);
    let (th, tw) = (base_hw.0 as f64, base_hw.1 as f64);
    let (resize_h, resize_w) = if h / w > th / tw {
        (base_hw.0 as i64, round_half_even(th / h * w))
    } else {
        (round_half_even(tw / w * h), base_hw.1 as i64)
    };
    let top = round_half_even((th - resize_h as f64) / 2.0);
    let left = round_half_even((tw - resize_w as f64) / 2.0);
    ((top, left), (top + resize_h, left + resize_w))
}

/// `torch.linspace(start, end, steps)` in f32, evaluated as PyTorch's CPU kernel does (from the
/// start for the first half, from the end for the second).
fn linspace_f32(start: f64, end: f64, steps: usize) -> Vec<f32> {
    let (start, end) = (start as f32, end as f32);
    if steps == 1 {
        return vec![start];
    }
    let step = (end - start) / (steps - 1) as f32;
    (0..steps)
        .map(|i| {
            if i < steps / 2 {
                start + step * i as f32
            } else {
                end - step * (steps - i - 1) as f32
            }
        })
        .collect()
}

/// One axis of RoPE: `(positions, dim/2)` angles `pos · θ^(-2j/dim)`, all f32 as the reference.
fn rope_angles(dim: usize, positions: &[f32], theta: f32) -> Vec<Vec<f32>> {
    let freqs: Vec<f32> = (0..dim / 2)
        .map(|j| 1.0 / theta.powf((2 * j) as f32 / dim as f32))
        .collect();
    positions
        .iter()
        .map(|&p| freqs.iter().map(|f| p * f).collect())
        .collect()
}

/// 3D RoPE tables of CogVideoX 1.0 (`get_3d_rotary_pos_embed`, `grid_type="linspace"`), as the
/// pipeline's `_prepare_rotary_positional_embeddings` computes them.
///
/// * `head_dim` — `d`, split t/h/w = `d/4`, `3d/8`, `3d/8`
/// * `grid` — `(T, h, w)` patch grid of the latents
/// * `base_hw` — training patch grid `(sample_height / p, sample_width / p)`
///
/// Returns `(cos, sin)`, each `(T·h·w, d/2)` f32: one angle per rotated channel pair, the
/// halved form of the reference's pair-repeated `(N, d)` tables.
pub fn rope_3d_tables(
    head_dim: usize,
    grid: (usize, usize, usize),
    base_hw: (usize, usize),
    device: &Device,
) -> Result<(Tensor, Tensor)> {
    let (t, h, w) = grid;
    let ((top, left), (bottom, right)) = resize_crop_region((h, w), base_hw);
    // The positions span the crop box: [start, stop · (n-1)/n], n points.
    let pos_h = linspace_f32(top as f64, bottom as f64 * (h - 1) as f64 / h as f64, h);
    let pos_w = linspace_f32(left as f64, right as f64 * (w - 1) as f64 / w as f64, w);
    let pos_t = linspace_f32(0.0, t as f64 * (t - 1) as f64 / t as f64, t);
    let (dim_t, dim_h, dim_w) = (head_dim / 4, head_dim / 8 * 3, head_dim / 8 * 3);
    let theta = 10000f32;
    let (ang_t, ang_h, ang_w) = (
        rope_angles(dim_t, &pos_t, theta),
        rope_angles(dim_h, &pos_h, theta),
        rope_angles(dim_w, &pos_w, theta),
    );
    let half = (dim_t + dim_h + dim_w) / 2;
    let n = t * h * w;
    let (mut cos, mut sin) = (Vec::with_capacity(n * half), Vec::with_capacity(n * half));
    for at in &ang_t {
        for ah in &ang_h {
            for aw in &ang_w {
                for a in at.iter().chain(ah).chain(aw) {
                    cos.push(a.cos());
                    sin.push(a.sin());
                }
            }
        }
    }
    Ok((
        Tensor::from_vec(cos, (n, half), device)?,
        Tensor::from_vec(sin, (n, half), device)?,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crop_box_rounds_half_to_even_like_python() {
        // grid 2x3 into base 3x5: width 3/2·3 = 4.5 → 4, left (5-4)/2 = 0.5 → 0.
        assert_eq!(resize_crop_region((2, 3), (3, 5)), ((0, 0), (3, 4)));
        // CogVideoX at its own resolution: the box is the whole grid.
        assert_eq!(resize_crop_region((30, 45), (30, 45)), ((0, 0), (30, 45)));
    }

    #[test]
    fn linspace_hits_both_ends() {
        let v = linspace_f32(0.0, 1.5, 4);
        assert_eq!(v, vec![0.0, 0.5, 1.0, 1.5]);
    }

    #[test]
    fn sincos_table_starts_with_sines_of_time() -> Result<()> {
        // D = 16: 4 temporal channels [sin, sin, cos, cos], then w and h.
        let table = sincos_3d_table(16, (2, 1, 1), 1.0, 1.0, &Device::Cpu)?.to_vec2::<f32>()?;
        assert_eq!(&table[0][..4], &[0.0, 0.0, 1.0, 1.0]);
        assert!((table[1][0] - 1f32.sin()).abs() < 1e-7);
        Ok(())
    }
}
