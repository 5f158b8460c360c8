//! LTX-Video's fractional 3D rotary position embedding.
//!
//! Unlike Wan's integer positions per head, LTX rotates the whole hidden vector (before it is
//! split into heads) by angles of *fractional* positions: a token's frame, row and column are
//! scaled by the VAE's compression (and, in time, by `1 / frame_rate`) and divided by a base
//! extent (20 frames, 2048 × 2048 pixels), then mapped from [0, 1] to [-1, 1]. Every frequency
//! rotates all three axes, so the pairs interleave as `[f0·t, f0·h, f0·w, f1·t, …]`; when the
//! hidden size is not a multiple of 6 the leftover pairs come first and are not rotated.

use candle_core::{bail, Device, Result, Tensor};

/// Base extents the positions are divided by (`LTXVideoRotaryPosEmbed`'s defaults, fixed by the
/// transformer): frames, pixel rows, pixel columns.
const BASE_NUM_FRAMES: f32 = 20.0;
const BASE_HEIGHT: f32 = 2048.0;
const BASE_WIDTH: f32 = 2048.0;
const THETA: f64 = 10000.0;

/// The `rope_interpolation_scale` `LTXPipeline` passes: `(temporal ratio / frame_rate, spatial
/// ratio, spatial ratio)` of the VAE, e.g. `(8 / 25, 32, 32)` for LTX-Video at 25 fps.
pub fn rope_interpolation_scale(
    temporal_compression_ratio: usize,
    spatial_compression_ratio: usize,
    frame_rate: f64,
) -> [f64; 3] {
    [
        temporal_compression_ratio as f64 / frame_rate,
        spatial_compression_ratio as f64,
        spatial_compression_ratio as f64,
    ]
}

/// Rotary tables of one LTX transformer (hidden size `dim`, patch sizes of its config).
#[derive(Debug, Clone)]
pub struct LtxRope {
    dim: usize,
    patch_size: usize,
    patch_size_t: usize,
}

impl LtxRope {
    /// `dim` is the hidden size `heads · head_dim` (even, ≥ 6).
    pub fn new(dim: usize, patch_size: usize, patch_size_t: usize) -> Result<Self> {
        if dim < 6 || !dim.is_multiple_of(2) {
            bail!("LTX RoPE needs an even hidden size of at least 6, got {dim}")
        }
        Ok(Self {
            dim,
            patch_size,
            patch_size_t,
        })
    }

    /// Fractional `(frame, row, column)` position of every token of a `(T, H, W)` latent grid,
    /// token index `(t·H + h)·W + w`. Without a scale the positions are the integer indices
    /// (the reference does not divide by the base extents then).
    ///
    /// Computed in f32 in the reference's order (`((i · scale) · patch) / base`) so that the
    /// angles, which reach 10⁴ rad, agree to the bit.
    pub fn grid_positions(
        &self,
        grid: (usize, usize, usize),
        interpolation_scale: Option<[f64; 3]>,
    ) -> Vec<[f32; 3]> {
        let (t, h, w) = grid;
        let axis = |i: usize, k: usize| -> f32 {
            match interpolation_scale {
                None => i as f32,
                Some(scale) => {
                    let (patch, base) = match k {
                        0 => (self.patch_size_t, BASE_NUM_FRAMES),
                        1 => (self.patch_size, BASE_HEIGHT),
                        _ => (self.patch_size, BASE_WIDTH),
                    };
                    i as f32 * scale[k] as f32 * patch as f32 / base
                }
            }
        };
        let mut positions = Vec::with_capacity(t * h * w);
        for it in 0..t {
            for ih in 0..h {
                for iw in 0..w {
                    positions.push([axis(it, 0), axis(ih, 1), axis(iw, 2)]);
                }
            }
        }
        positions
    }

    /// The `dim / 6` frequencies `θ^linspace(0, 1) · π / 2`, f32 as the reference computes them.
    fn frequencies(&self) -> Vec<f32> {
        let n = self.dim / 6;
        linspace_f32(0.0, 1.0, n)
            .into_iter()
            // torch evaluates `float ** tensor` in double and rounds once.
            .map(|e| (THETA.powf(e as f64) as f32) * std::f32::consts::PI / 2.0)
            .collect()
    }

    /// Cosines and sines `(N, dim / 2)` f32 for the given positions, one angle per channel pair
    /// in [`apply_rotary`]'s layout: `dim % 6 / 2` unrotated pairs, then `[f·t, f·h, f·w]` per
    /// frequency `f`.
    pub fn cos_sin_at(&self, positions: &[[f32; 3]], device: &Device) -> Result<(Tensor, Tensor)> {
        let freqs = self.frequencies();
        let pad = (self.dim % 6) / 2;
        let half = self.dim / 2;
        let n = positions.len();
        let mut cos = Vec::with_capacity(n * half);
        let mut sin = Vec::with_capacity(n * half);
        for pos in positions {
            cos.extend(std::iter::repeat_n(1f32, pad));
            sin.extend(std::iter::repeat_n(0f32, pad));
            // Positions in [0, 1] become [-1, 1].
            let centred = pos.map(|p| p * 2.0 - 1.0);
            for f in &freqs {
                for c in centred {
                    let angle = f * c;
                    cos.push(angle.cos());
                    sin.push(angle.sin());
                }
            }
        }
        Ok((
            Tensor::from_vec(cos, (n, half), device)?,
            Tensor::from_vec(sin, (n, half), device)?,
        ))
    }

    /// [`Self::cos_sin_at`] the [`Self::grid_positions`] of a `(T, H, W)` latent grid.
    pub fn cos_sin(
        &self,
        grid: (usize, usize, usize),
        interpolation_scale: Option<[f64; 3]>,
        device: &Device,
    ) -> Result<(Tensor, Tensor)> {
        self.cos_sin_at(&self.grid_positions(grid, interpolation_scale), device)
    }
}

/// `torch.linspace(start, end, n)` in f32 as its scalar CPU kernel computes it: the first half
/// counts up from `start`, the second half down from `end`.
fn linspace_f32(start: f32, end: f32, n: usize) -> Vec<f32> {
    if n == 1 {
        return vec![start];
    }
    let step = (end - start) / (n - 1) as f32;
    (0..n)
        .map(|i| {
            if i < n / 2 {
                start + step * i as f32
            } else {
                end - step * (n - 1 - i) as f32
            }
        })
        .collect()
}

/// Rotates consecutive channel pairs of `x` `(B, N, D)` (all heads together) by the angles of
/// `cos`, `sin` `(N, D/2)`: `(x₀, x₁) → (x₀c − x₁s, x₀s + x₁c)`. Returns `(B, N, D)`.
pub fn apply_rotary(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    let (b, n, d) = x.dims3()?;
    // b n d -> b 1 n d: one "head" of all the channels
    let x4 = x.reshape((b, 1, n, d))?;
    crate::nn::rope::apply_rotary_interleaved(&x4, cos, sin)?.reshape((b, n, d))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn linspace_ends_exactly_at_its_bounds() {
        let v = linspace_f32(0.0, 1.0, 7);
        assert_eq!(v[0], 0.0);
        assert_eq!(v[6], 1.0);
        assert_eq!(v.len(), 7);
    }

    #[test]
    fn leftover_pairs_are_not_rotated_and_axes_interleave() -> Result<()> {
        // dim 40: 6 frequencies × 3 axes = 18 pairs, 2 leftover pairs in front.
        let rope = LtxRope::new(40, 1, 1)?;
        let positions = [[0.5f32, 0.5, 1.0]]; // centred: t 0, h 0, w 1
        let (cos, sin) = rope.cos_sin_at(&positions, &Device::Cpu)?;
        let (c, s) = (cos.to_vec2::<f32>()?, sin.to_vec2::<f32>()?);
        assert_eq!(c[0].len(), 20);
        assert_eq!((c[0][0], s[0][0], c[0][1], s[0][1]), (1.0, 0.0, 1.0, 0.0));
        // Frequency 0 is π/2: t and h sit at the centre (angle 0), w at +1 (angle π/2).
        assert_eq!((c[0][2], s[0][2]), (1.0, 0.0));
        assert_eq!((c[0][3], s[0][3]), (1.0, 0.0));
        assert!(c[0][4].abs() < 1e-6 && (s[0][4] - 1.0).abs() < 1e-6);
        Ok(())
    }

    #[test]
    fn positions_follow_the_pipeline_scale() {
        let rope = LtxRope::new(48, 1, 1).unwrap();
        let scale = rope_interpolation_scale(8, 32, 25.0);
        let p = rope.grid_positions((2, 2, 3), Some(scale));
        // token 11 = (t 1, h 1, w 2)
        assert!((p[11][0] - 8.0 / 25.0 / 20.0).abs() < 1e-7);
        assert!((p[11][1] - 32.0 / 2048.0).abs() < 1e-7);
        assert!((p[11][2] - 64.0 / 2048.0).abs() < 1e-7);
        assert_eq!(rope.grid_positions((1, 1, 2), None)[1], [0.0, 0.0, 1.0]);
    }
}
