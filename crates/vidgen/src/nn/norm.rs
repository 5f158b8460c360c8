//! Normalisations: RMS norm (query/key norm) and layer norm computed in f32.

use candle_core::{DType, Module, Result, Tensor};
use candle_nn::VarBuilder;

/// RMS norm over the last dimension with a learned scale, as `torch.nn.RMSNorm`:
/// `x / sqrt(mean(x²) + eps) * weight`. Computed in f32 whatever the input dtype.
#[derive(Debug, Clone)]
pub struct RmsNorm {
    weight: Tensor,
    eps: f32,
}

impl RmsNorm {
    /// Loads `weight` of shape `(dim,)`.
    pub fn new(dim: usize, eps: f64, vb: VarBuilder) -> Result<Self> {
        let weight = vb.get(dim, "weight")?.to_dtype(DType::F32)?;
        Ok(Self {
            weight,
            eps: eps as f32,
        })
    }

    /// Without a learned scale (diffusers' `RMSNorm(elementwise_affine=False)`): weight 1.
    pub fn without_weight(dim: usize, eps: f64, device: &candle_core::Device) -> Result<Self> {
        Ok(Self {
            weight: Tensor::ones(dim, DType::F32, device)?,
            eps: eps as f32,
        })
    }
}

impl Module for RmsNorm {
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        if super::fused::applies(&[xs, &self.weight]) {
            return super::fused::rms_norm(xs, &self.weight, self.eps);
        }
        let dtype = xs.dtype();
        let xs = xs.to_dtype(DType::F32)?.contiguous()?;
        // candle's fused kernel has no backward pass: training takes the composite ops
        let normed = if xs.track_op() || self.weight.track_op() {
            super::broadcast::rms_norm(&xs, &self.weight, self.eps)?
        } else {
            candle_nn::ops::rms_norm(&xs, &self.weight, self.eps)?
        };
        normed.to_dtype(dtype)
    }
}

/// Layer norm over the last dimension, computed in f32 (diffusers' `FP32LayerNorm`), with or
/// without a learned affine transform. Returns f32; callers cast back where the reference does.
#[derive(Debug, Clone)]
pub struct LayerNorm {
    weight: Tensor,
    bias: Tensor,
    eps: f32,
    affine: bool,
}

impl LayerNorm {
    /// With `affine`, loads `weight` and `bias` of shape `(dim,)`; without, uses 1 and 0.
    pub fn new(dim: usize, eps: f64, affine: bool, vb: VarBuilder) -> Result<Self> {
        let (weight, bias) = if affine {
            (
                vb.get(dim, "weight")?.to_dtype(DType::F32)?,
                vb.get(dim, "bias")?.to_dtype(DType::F32)?,
            )
        } else {
            (
                Tensor::ones(dim, DType::F32, vb.device())?,
                Tensor::zeros(dim, DType::F32, vb.device())?,
            )
        };
        Ok(Self {
            weight,
            bias,
            eps: eps as f32,
            affine,
        })
    }

    /// AdaLN modulation: `LayerNorm(x) · (1 + scale) + shift` as `dtype` (`x` `(B, N, D)`,
    /// `shift`/`scale` `(B, 1, D)`), in f32. One fused pass on the CPU in inference for a norm
    /// without affine ([`super::fused`]), else candle ops.
    pub fn forward_modulated(
        &self,
        xs: &Tensor,
        shift: &Tensor,
        scale: &Tensor,
        dtype: DType,
    ) -> Result<Tensor> {
        use super::fused;
        if !self.affine
            && fused::applies(&[xs, shift, scale])
            && fused::per_sample_fits(xs, shift)
            && fused::per_sample_fits(xs, scale)
        {
            return fused::modulated_layer_norm(xs, shift, scale, self.eps, dtype);
        }
        use super::broadcast::{add, mul};
        add(&mul(&self.forward(xs)?, &(scale + 1.0)?)?, shift)?.to_dtype(dtype)
    }
}

impl Module for LayerNorm {
    /// `(…, D)` in any float dtype → `(…, D)` f32.
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        if super::fused::applies(&[xs, &self.weight, &self.bias]) {
            return super::fused::layer_norm(xs, &self.weight, &self.bias, self.eps);
        }
        let xs = xs.to_dtype(DType::F32)?.contiguous()?;
        // candle's fused kernel has no backward pass: training takes the composite ops
        if xs.track_op() || self.weight.track_op() || self.bias.track_op() {
            super::broadcast::layer_norm(&xs, &self.weight, &self.bias, self.eps)
        } else {
            candle_nn::ops::layer_norm(&xs, &self.weight, &self.bias, self.eps)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn layer_norm_without_affine_has_zero_mean_unit_variance() -> Result<()> {
        let dev = Device::Cpu;
        let vb = VarBuilder::zeros(DType::F32, &dev);
        let norm = LayerNorm::new(8, 1e-6, false, vb)?;
        let xs = Tensor::arange(0f32, 16., &dev)?.reshape((2, 8))?;
        let ys = norm.forward(&xs)?;
        let mean = ys.mean_keepdim(1)?.flatten_all()?.to_vec1::<f32>()?;
        let var = ys.sqr()?.mean_keepdim(1)?.flatten_all()?.to_vec1::<f32>()?;
        for (m, v) in mean.iter().zip(&var) {
            assert!(m.abs() < 1e-5, "mean {m}");
            assert!((v - 1.0).abs() < 1e-4, "var {v}");
        }
        Ok(())
    }
}
