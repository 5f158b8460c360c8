//! Broadcasts that train fast on the CPU.
//!
//! candle's backward pass of `broadcast_add` / `broadcast_mul` sums the gradient over the
//! broadcast dimensions with `sum_keepdim`, whose CPU kernel reduces non-trailing dimensions
//! one element at a time through a strided index (an integer division per element, one
//! thread): a third of a DiT training step's backward pass went there (bias adds, AdaLN
//! modulation, norm weights). [`expand`] makes the broadcast an explicit product with a ones
//! column instead, so that the backward pass's sum is a GEMM.

use candle_core::{DType, Result, Shape, Tensor};

/// `t` broadcast to `shape`, to be combined with a tensor of that shape by a plain (same-shape)
/// binary op. For a tensor being trained on the CPU whose broadcast is over rows — `t` with
/// only its last dimension not 1 (a bias or a norm weight), or `(B, 1, D)` against `(B, N, D)`
/// (a per-sample modulation) — a product with ones, whose gradient is a GEMM; otherwise a
/// zero-copy broadcast view (what `broadcast_add` / `broadcast_mul` use themselves).
pub fn expand(t: &Tensor, shape: impl Into<Shape>) -> Result<Tensor> {
    let shape: Shape = shape.into();
    let dims = shape.dims();
    let trained_on_cpu = t.track_op() && t.device().is_cpu();
    let Some(&d) = dims.last() else {
        return t.broadcast_as(shape);
    };
    if !trained_on_cpu || t.dims().last() != Some(&d) || t.rank() > dims.len() {
        return t.broadcast_as(shape);
    }
    let rows = shape.elem_count() / d.max(1);
    let dtype = t.dtype();
    if t.elem_count() == d {
        // (1, …, 1, D) -> (rows, D)
        let ones = Tensor::ones((rows, 1), dtype, t.device())?;
        return ones.matmul(&t.reshape((1, d))?)?.reshape(shape);
    }
    if let (&[b, 1, dt], &[bs, n, ds]) = (t.dims(), dims) {
        if (b, dt) == (bs, ds) {
            // (B, 1, D) -> (B, N, D)
            let ones = Tensor::ones((b, n, 1), dtype, t.device())?;
            return ones.matmul(&t.contiguous()?);
        }
    }
    t.broadcast_as(shape)
}

/// `x · w` with `w` broadcast to `x`'s shape ([`expand`]).
pub fn mul(x: &Tensor, w: &Tensor) -> Result<Tensor> {
    x.mul(&expand(w, x.shape())?)
}

/// `x + b` with `b` broadcast to `x`'s shape ([`expand`]).
pub fn add(x: &Tensor, b: &Tensor) -> Result<Tensor> {
    x.add(&expand(b, x.shape())?)
}

/// RMS norm over the last dimension, `x / sqrt(mean(x²) + eps) · weight`, in `x`'s dtype, as
/// candle's `rms_norm_slow` (the differentiable composite) with the weight through [`expand`].
pub fn rms_norm(x: &Tensor, weight: &Tensor, eps: f32) -> Result<Tensor> {
    let ms = x.sqr()?.mean_keepdim(candle_core::D::Minus1)?;
    let normed = x.broadcast_div(&(ms + eps as f64)?.sqrt()?)?;
    mul(&normed, &weight.to_dtype(x.dtype())?)
}

/// Layer norm over the last dimension with an affine transform, as candle's `layer_norm_slow`
/// with the weight and bias through [`expand`]; f32 in, f32 out.
pub fn layer_norm(x: &Tensor, weight: &Tensor, bias: &Tensor, eps: f32) -> Result<Tensor> {
    let x = x.to_dtype(DType::F32)?;
    let centred = x.broadcast_sub(&x.mean_keepdim(candle_core::D::Minus1)?)?;
    let var = centred.sqr()?.mean_keepdim(candle_core::D::Minus1)?;
    let normed = centred.broadcast_div(&(var + eps as f64)?.sqrt()?)?;
    add(&mul(&normed, weight)?, bias)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    fn max_err(a: &Tensor, b: &Tensor) -> Result<f32> {
        (a - b)?.abs()?.max_all()?.to_scalar::<f32>()
    }

    #[test]
    fn expanded_broadcasts_give_the_broadcast_ops_results_and_gradients() -> Result<()> {
        let dev = Device::Cpu;
        let x = Var::from_tensor(&Tensor::randn(0f32, 1., (3, 7, 5), &dev)?)?;
        let bias = Var::from_tensor(&Tensor::randn(0f32, 1., 5, &dev)?)?;
        let per_sample = Var::from_tensor(&Tensor::randn(0f32, 1., (3, 1, 5), &dev)?)?;
        let probe = Tensor::randn(0f32, 1., (3, 7, 5), &dev)?;
        let (xt, bt, st) = (x.as_tensor(), bias.as_tensor(), per_sample.as_tensor());
        // both expand paths are taken: trained CPU tensors of the two broadcast shapes
        let ours = mul(&add(xt, bt)?, st)?;
        let want = xt.broadcast_add(bt)?.broadcast_mul(st)?;
        assert!(max_err(&ours, &want)? < 1e-6, "forward");
        let g1 = (&ours * &probe)?.sum_all()?.backward()?;
        let g2 = (&want * &probe)?.sum_all()?.backward()?;
        for v in [&x, &bias, &per_sample] {
            let (a, b) = (
                g1.get(v.as_tensor()).expect("grad"),
                g2.get(v.as_tensor()).expect("grad"),
            );
            assert_eq!(a.dims(), v.as_tensor().dims());
            assert!(
                max_err(a, b)? < 1e-5,
                "gradient of {:?}",
                v.as_tensor().dims()
            );
        }
        Ok(())
    }

    #[test]
    fn norms_match_candle_composites() -> Result<()> {
        let dev = Device::Cpu;
        let x = Var::from_tensor(&(Tensor::randn(0f32, 1., (2, 9, 6), &dev)? * 2.0)?)?;
        let w = Var::from_tensor(&Tensor::randn(1f32, 0.3, 6, &dev)?)?;
        let b = Var::from_tensor(&Tensor::randn(0f32, 0.3, 6, &dev)?)?;
        let probe = Tensor::randn(0f32, 1., (2, 9, 6), &dev)?;
        let (xt, wt, bt) = (x.as_tensor(), w.as_tensor(), b.as_tensor());
        let pairs = [
            (
                rms_norm(xt, wt, 1e-6)?,
                candle_nn::ops::rms_norm_slow(xt, wt, 1e-6)?,
            ),
            (
                layer_norm(xt, wt, bt, 1e-5)?,
                candle_nn::ops::layer_norm_slow(xt, wt, bt, 1e-5)?,
            ),
        ];
        for (ours, want) in pairs {
            assert!(max_err(&ours, &want)? < 1e-5, "forward");
            let g1 = (&ours * &probe)?.sum_all()?.backward()?;
            let g2 = (&want * &probe)?.sum_all()?.backward()?;
            for v in [&x, &w] {
                let (a, b) = (
                    g1.get(v.as_tensor()).expect("grad"),
                    g2.get(v.as_tensor()).expect("grad"),
                );
                assert!(max_err(a, b)? < 1e-4, "gradient");
            }
        }
        Ok(())
    }
}
