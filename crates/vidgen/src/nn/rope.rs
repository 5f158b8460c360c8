//! 3D rotary position embedding over (frame, row, column) token positions.

use candle_core::{bail, DType, Device, Result, Tensor};

/// Per-axis rotary frequencies split across one attention head, as Wan does: the head's
/// `d` channels are `t_dim + h_dim + w_dim` with `h_dim = w_dim = 2·⌊d/6⌋`; each axis rotates
/// consecutive channel pairs `(2i, 2i+1)` by `pos · θ^(-2i/axis_dim)`.
#[derive(Debug, Clone)]
pub struct Rope3d {
    head_dim: usize,
    axis_dims: [usize; 3],
    theta: f64,
}

impl Rope3d {
    /// Splits `head_dim` (even, ≥ 6) across time, height and width as Wan does.
    pub fn wan(head_dim: usize, theta: f64) -> Result<Self> {
        let h_dim = 2 * (head_dim / 6);
        let t_dim = head_dim - 2 * h_dim;
        if !head_dim.is_multiple_of(2) || h_dim == 0 || !t_dim.is_multiple_of(2) {
            bail!("3D RoPE needs an even attention head dim of at least 6, got {head_dim}")
        }
        Ok(Self {
            head_dim,
            axis_dims: [t_dim, h_dim, h_dim],
            theta,
        })
    }

    /// Cosines and sines for a `(t, h, w)` token grid, each `(t·h·w, d/2)` f32, token index
    /// `(i_t·h + i_h)·w + i_w`, pair order `[t pairs | h pairs | w pairs]`.
    pub fn cos_sin(
        &self,
        grid: (usize, usize, usize),
        device: &Device,
    ) -> Result<(Tensor, Tensor)> {
        let (t, h, w) = grid;
        let half = self.head_dim / 2;
        // Angles in f64 like the reference's buffers, rounded to f32 once.
        let axis_freqs: Vec<Vec<f64>> = self
            .axis_dims
            .iter()
            .map(|&dim| {
                (0..dim / 2)
                    .map(|i| 1.0 / self.theta.powf((2 * i) as f64 / dim as f64))
                    .collect()
            })
            .collect();
        let n = t * h * w;
        let mut cos = Vec::with_capacity(n * half);
        let mut sin = Vec::with_capacity(n * half);
        for it in 0..t {
            for ih in 0..h {
                for iw in 0..w {
                    for (freqs, pos) in axis_freqs.iter().zip([it, ih, iw]) {
                        for f in freqs {
                            let angle = pos as f64 * f;
                            cos.push(angle.cos() as f32);
                            sin.push(angle.sin() as f32);
                        }
                    }
                }
            }
        }
        Ok((
            Tensor::from_vec(cos, (n, half), device)?,
            Tensor::from_vec(sin, (n, half), device)?,
        ))
    }
}

/// Rotates consecutive channel pairs of `x` `(B, H, N, d)` by the angles of `cos`, `sin`
/// `(N, d/2)`: `(x₀, x₁) → (x₀c − x₁s, x₀s + x₁c)`. Returns `x`'s shape and dtype.
pub fn apply_rotary_interleaved(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    let pairs_per_token = |x: &Tensor| match x.dims() {
        &[_, _, n, d] => cos.dims() == [n, d / 2] && sin.dims() == [n, d / 2],
        _ => false,
    };
    if super::fused::applies(&[x]) && pairs_per_token(x) {
        return super::fused::rope_interleaved(x, cos, sin);
    }
    let dtype = x.dtype();
    let (cos, sin) = if dtype == DType::F32 {
        (cos.clone(), sin.clone())
    } else {
        (cos.to_dtype(dtype)?, sin.to_dtype(dtype)?)
    };
    let x = x.contiguous()?;
    if x.track_op() {
        // the fused kernel has no backward pass
        candle_nn::rotary_emb::rope_i_slow(&x, &cos, &sin)
    } else {
        candle_nn::rotary_emb::rope_i(&x, &cos, &sin)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn head_dim_split_matches_wan() -> Result<()> {
        // Wan2.1: head dim 128 → t 44, h 42, w 42.
        let rope = Rope3d::wan(128, 10000.0)?;
        assert_eq!(rope.axis_dims, [44, 42, 42]);
        assert!(Rope3d::wan(4, 10000.0).is_err());
        Ok(())
    }

    #[test]
    fn fused_rotation_matches_candle_rope_in_f32_and_bf16() -> Result<()> {
        let dev = Device::Cpu;
        let (b, h, n, d) = (2, 3, 37, 12);
        let x = Tensor::randn(0f32, 1., (b, h, n, d), &dev)?;
        let angles = Tensor::randn(0f32, 2., (n, d / 2), &dev)?;
        let (cos, sin) = (angles.cos()?, angles.sin()?);
        let want = candle_nn::rotary_emb::rope_i_slow(&x, &cos, &sin)?;
        let got = apply_rotary_interleaved(&x, &cos, &sin)?;
        let err = (&got - &want)?.abs()?.max_all()?.to_scalar::<f32>()?;
        assert!(err < 1e-6, "f32: max abs error {err}");
        // bf16: rotated in f32 and rounded once, so within half an ulp of bf16 of the f32 result
        let got = apply_rotary_interleaved(&x.to_dtype(DType::BF16)?, &cos, &sin)?;
        assert_eq!(got.dtype(), DType::BF16);
        let want_bf16 = candle_nn::rotary_emb::rope_i_slow(
            &x.to_dtype(DType::BF16)?.to_dtype(DType::F32)?,
            &cos,
            &sin,
        )?;
        let rel = ((got.to_dtype(DType::F32)? - &want_bf16)?.abs()? / (want_bf16.abs()? + 1e-3)?)?
            .max_all()?
            .to_scalar::<f32>()?;
        assert!(rel <= 1.0 / 256.0, "bf16: max relative error {rel}");
        Ok(())
    }

    #[test]
    fn rotation_matches_pairwise_formula() -> Result<()> {
        let dev = Device::Cpu;
        let rope = Rope3d::wan(12, 10000.0)?;
        let (cos, sin) = rope.cos_sin((2, 2, 3), &dev)?;
        let x = Tensor::randn(0f32, 1., (1, 1, 12, 12), &dev)?;
        let y = apply_rotary_interleaved(&x, &cos, &sin)?;
        let (xv, yv) = (
            x.squeeze(0)?.to_vec3::<f32>()?,
            y.squeeze(0)?.to_vec3::<f32>()?,
        );
        let (c, s) = (cos.to_vec2::<f32>()?, sin.to_vec2::<f32>()?);
        // token 7 = (t 1, h 0, w 1); pair 0 is the time axis: angle 1.
        let (tok, pair) = (7, 0);
        assert!((c[tok][pair] - 1f32.cos()).abs() < 1e-6);
        let (x0, x1) = (xv[0][tok][2 * pair], xv[0][tok][2 * pair + 1]);
        let want0 = x0 * c[tok][pair] - x1 * s[tok][pair];
        assert!((yv[0][tok][2 * pair] - want0).abs() < 1e-5);
        Ok(())
    }
}
