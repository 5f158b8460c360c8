//! The linear layer every family uses: `y = x·Wᵀ + b` as one 2D matmul over all leading dims.

use candle_core::{Module, Result, Tensor};
use candle_nn::VarBuilder;

/// A linear layer whose weight is stored `(out, in)` as in PyTorch checkpoints. Leading
/// dimensions are flattened so the product is a single `(rows, in) × (in, out)` matmul rather
/// than a batched one over a broadcast weight.
#[derive(Debug, Clone)]
pub struct Linear {
    /// `(in, out)`: a transposed view of the checkpoint's `(out, in)` weight (no copy).
    weight_t: Tensor,
    bias: Option<Tensor>,
}

impl Linear {
    /// From a `(out, in)` weight and an optional `(out,)` bias.
    pub fn new(weight: Tensor, bias: Option<Tensor>) -> Self {
        Self {
            weight_t: weight.t().expect("a linear weight is 2D"),
            bias,
        }
    }

    /// The `(out, in)` weight.
    pub fn weight(&self) -> Result<Tensor> {
        self.weight_t.t()
    }
}

/// Loads `weight` `(out_dim, in_dim)` and, with `bias`, `bias` `(out_dim,)` from `vb`.
pub fn linear(in_dim: usize, out_dim: usize, bias: bool, vb: VarBuilder) -> Result<Linear> {
    let weight = vb.get((out_dim, in_dim), "weight")?;
    let bias = if bias {
        Some(vb.get(out_dim, "bias")?)
    } else {
        None
    };
    Ok(Linear::new(weight, bias))
}

impl Module for Linear {
    /// `(…, in)` → `(…, out)`.
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let mut dims = xs.dims().to_vec();
        let in_dim = match dims.last() {
            Some(&d) => d,
            None => candle_core::bail!("linear layer on a scalar"),
        };
        let rows = xs.elem_count() / in_dim.max(1);
        let ys = xs
            .contiguous()?
            .reshape((rows, in_dim))?
            .matmul(&self.weight_t)?;
        let ys = match &self.bias {
            Some(b) => ys.broadcast_add(b)?,
            None => ys,
        };
        *dims.last_mut().expect("checked above") = ys.dim(1)?;
        ys.reshape(dims)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{DType, Device};

    #[test]
    fn matches_candles_batched_linear() -> Result<()> {
        let dev = Device::Cpu;
        let w = Tensor::randn(0f32, 1., (5, 3), &dev)?;
        let b = Tensor::randn(0f32, 1., 5, &dev)?;
        let x = Tensor::randn(0f32, 1., (2, 4, 3), &dev)?;
        let ours = Linear::new(w.clone(), Some(b.clone())).forward(&x)?;
        let theirs = candle_nn::Linear::new(w, Some(b)).forward(&x)?;
        assert_eq!(ours.dims(), &[2, 4, 5]);
        let err = (ours - theirs)?.abs()?.max_all()?.to_scalar::<f32>()?;
        assert!(err < 1e-5, "{err}");
        let no_bias = linear(3, 5, false, VarBuilder::zeros(DType::F32, &dev))?;
        assert_eq!(no_bias.forward(&x)?.dims(), &[2, 4, 5]);
        Ok(())
    }
}
