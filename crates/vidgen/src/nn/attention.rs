//! Scaled dot-product attention that never holds the full `N × N` score matrix.

use candle_core::{bail, DType, Result, Tensor, D};

/// Bytes of attention scores one query block may hold; bounds memory at long sequences
/// (480p × 81 frames is 32,760 tokens: a full f32 score matrix for 12 heads would be ~51 GB).
const SCORE_BUDGET_BYTES: usize = 128 << 20;

/// `softmax(q·kᵀ / √d) · v` over query blocks, without a mask.
///
/// * `q` — `(B, H, N, d)`
/// * `k`, `v` — `(B, H, M, d)`
///
/// Returns `(B, H, N, d)`. Scores and softmax are computed in f32 whatever the input dtype;
/// the result has `q`'s dtype. Query rows are split into blocks so that one block's scores stay
/// under a fixed budget, which keeps memory O(N·M/blocks) rather than O(N·M).
pub fn scaled_dot_product_attention(q: &Tensor, k: &Tensor, v: &Tensor) -> Result<Tensor> {
    scaled_dot_product_attention_with_bias(q, k, v, None)
}

/// [`scaled_dot_product_attention`] with an optional additive bias on the scores,
/// `softmax(q·kᵀ / √d + bias) · v`, as PyTorch's SDPA with a float `attn_mask`.
///
/// * `bias` — broadcastable to `(B, H, N, M)` with each of its dims either full or 1, e.g.
///   `(B, 1, 1, M)` for a key-padding mask (`0` keeps a key, a large negative drops it).
pub fn scaled_dot_product_attention_with_bias(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    bias: Option<&Tensor>,
) -> Result<Tensor> {
    let (b, h, n, d) = q.dims4()?;
    let (kb, kh, m, kd) = k.dims4()?;
    if (kb, kh, kd) != (b, h, d) || v.dims4()? != (b, h, m, d) {
        bail!(
            "attention expects q (B, H, N, d) and k, v (B, H, M, d); got q {:?}, k {:?}, v {:?}",
            q.shape(),
            k.shape(),
            v.shape()
        )
    }
    let bias = match bias {
        None => None,
        Some(bias) => {
            let (bb, bh, bn, bm) = bias.dims4()?;
            let fits = |got: usize, want: usize| got == want || got == 1;
            if !(fits(bb, b) && fits(bh, h) && fits(bn, n) && bm == m) {
                bail!(
                    "attention bias must broadcast to (B, H, N, M) = ({b}, {h}, {n}, {m}), got {:?}",
                    bias.shape()
                )
            }
            Some(bias.to_dtype(DType::F32)?)
        }
    };
    let dtype = q.dtype();
    let scale = 1.0 / (d as f64).sqrt();
    let q = q.to_dtype(DType::F32)?;
    let kt = k.to_dtype(DType::F32)?.transpose(2, 3)?.contiguous()?; // (B, H, d, M)
    let v = v.to_dtype(DType::F32)?.contiguous()?;

    let block = (SCORE_BUDGET_BYTES / (4 * b * h * m).max(1)).clamp(1, n.max(1));
    let mut outputs = Vec::with_capacity(n.div_ceil(block));
    let mut start = 0;
    while start < n {
        let len = block.min(n - start);
        let q_blk = q.narrow(2, start, len)?.contiguous()?;
        let mut scores = (q_blk.matmul(&kt)? * scale)?; // (B, H, len, M)
        if let Some(bias) = &bias {
            let bias_blk = if bias.dim(2)? == 1 {
                bias.clone()
            } else {
                bias.narrow(2, start, len)?
            };
            scores = scores.broadcast_add(&bias_blk)?;
        }
        let probs = softmax_last_dim(&scores)?;
        outputs.push(probs.matmul(&v)?); // (B, H, len, d)
        start += len;
    }
    let out = if outputs.len() == 1 {
        outputs.pop().expect("one block")
    } else {
        Tensor::cat(&outputs, 2)?
    };
    out.to_dtype(dtype)
}

/// Reference attention with the whole score matrix; the oracle for tests.
/// Softmax over the last axis: candle's fused kernel for inference, the composite (and so
/// differentiable) ops when `xs` is part of a graph being trained.
pub fn softmax_last_dim(xs: &Tensor) -> Result<Tensor> {
    if xs.track_op() {
        candle_nn::ops::softmax(xs, D::Minus1)
    } else {
        candle_nn::ops::softmax_last_dim(xs)
    }
}

pub fn naive_attention(q: &Tensor, k: &Tensor, v: &Tensor) -> Result<Tensor> {
    let d = q.dim(D::Minus1)?;
    let scores = (q.matmul(&k.t()?)? / (d as f64).sqrt())?;
    candle_nn::ops::softmax_last_dim(&scores)?.matmul(v)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn blocked_attention_matches_naive() -> Result<()> {
        let dev = Device::Cpu;
        let q = Tensor::randn(0f32, 1., (2, 3, 37, 8), &dev)?;
        let k = Tensor::randn(0f32, 1., (2, 3, 11, 8), &dev)?;
        let v = Tensor::randn(0f32, 1., (2, 3, 11, 8), &dev)?;
        let got = scaled_dot_product_attention(&q, &k, &v)?;
        let want = naive_attention(&q, &k, &v)?;
        let err = (got - want)?.abs()?.max_all()?.to_scalar::<f32>()?;
        assert!(err < 1e-5, "max abs error {err}");
        Ok(())
    }

    #[test]
    fn key_padding_bias_equals_dropping_the_keys() -> Result<()> {
        let dev = Device::Cpu;
        let q = Tensor::randn(0f32, 1., (2, 3, 5, 8), &dev)?;
        let k = Tensor::randn(0f32, 1., (2, 3, 7, 8), &dev)?;
        let v = Tensor::randn(0f32, 1., (2, 3, 7, 8), &dev)?;
        // Keep the first 4 keys of every sample.
        let keep: Vec<f32> = (0..7).map(|j| if j < 4 { 0. } else { -1e4 }).collect();
        let bias = Tensor::new(keep, &dev)?.reshape((1, 1, 1, 7))?;
        let got = scaled_dot_product_attention_with_bias(&q, &k, &v, Some(&bias))?;
        let want = naive_attention(&q, &k.narrow(2, 0, 4)?, &v.narrow(2, 0, 4)?)?;
        let err = (got - want)?.abs()?.max_all()?.to_scalar::<f32>()?;
        assert!(err < 1e-5, "max abs error {err}");
        let wrong = Tensor::zeros((1, 1, 1, 6), DType::F32, &dev)?;
        assert!(scaled_dot_product_attention_with_bias(&q, &k, &v, Some(&wrong)).is_err());
        Ok(())
    }

    #[test]
    fn mismatched_shapes_are_an_error() {
        let dev = Device::Cpu;
        let q = Tensor::zeros((1, 2, 4, 8), DType::F32, &dev).unwrap();
        let k = Tensor::zeros((1, 2, 4, 6), DType::F32, &dev).unwrap();
        assert!(scaled_dot_product_attention(&q, &k, &k).is_err());
    }
}
