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
        let scores = (q_blk.matmul(&kt)? * scale)?; // (B, H, len, M)
        let probs = candle_nn::ops::softmax_last_dim(&scores)?;
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
    fn mismatched_shapes_are_an_error() {
        let dev = Device::Cpu;
        let q = Tensor::zeros((1, 2, 4, 8), DType::F32, &dev).unwrap();
        let k = Tensor::zeros((1, 2, 4, 6), DType::F32, &dev).unwrap();
        assert!(scaled_dot_product_attention(&q, &k, &k).is_err());
    }
}
