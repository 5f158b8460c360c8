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
    let d = q.dim(D::Minus1)?;
    attention_with_scale(q, k, v, bias, 1.0 / (d as f64).sqrt())
}

/// `softmax(q·kᵀ · scale + bias) · v`: [`scaled_dot_product_attention_with_bias`] with the
/// scores' scale given (T5 uses 1: it folds `1/√d` into its query weights).
pub fn attention_with_scale(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    bias: Option<&Tensor>,
    scale: f64,
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
    let trained =
        q.track_op() || k.track_op() || v.track_op() || bias.as_ref().is_some_and(|b| b.track_op());
    if q.device().is_cpu() && !trained && !generic_forced() {
        return fused_cpu(q, k, v, bias.as_ref(), scale as f32)?.to_dtype(dtype);
    }
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

/// `VIDGEN_ATTENTION=generic` turns the fused CPU kernel off (for benchmarks: the same run
/// with and without it).
fn generic_forced() -> bool {
    static GENERIC: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *GENERIC.get_or_init(|| std::env::var("VIDGEN_ATTENTION").is_ok_and(|v| v == "generic"))
}

/// The fused CPU kernel ([`super::flash`]): for bf16 inputs on a CPU with the bf16 dot product,
/// on the bf16 operands; otherwise on f32 copies (no copy when already contiguous f32). `bias`
/// is `(B', H', 1, M)` (a key mask) or `(B', H', N, M)` (one row per query), read in place.
fn fused_cpu(
    q: &Tensor,
    k: &Tensor,
    v: &Tensor,
    bias: Option<&Tensor>,
    scale: f32,
) -> Result<Tensor> {
    let (b, h, n, d) = q.dims4()?;
    let m = k.dim(2)?;
    let prep = |t: &Tensor| t.to_dtype(DType::F32)?.contiguous();
    let bias = bias.map(prep).transpose()?;
    let bias_guard = bias.as_ref().map(|b| b.storage_and_layout());
    let score_bias = match (&bias, &bias_guard) {
        (Some(bias), Some((storage, layout))) => {
            let (bb, bh, bn, _) = bias.dims4()?;
            Some(super::flash::ScoreBias {
                values: super::cpu_slice(storage, layout, bias.elem_count())?,
                m,
                query_rows: bn,
                batch_rows: bb,
                heads: h,
                per_head: bh == h && h > 1,
            })
        }
        _ => None,
    };
    let bf16 = [q, k, v].iter().all(|t| t.dtype() == DType::BF16)
        && d % 2 == 0
        && super::bf16_gemm::available();
    if bf16 {
        // both block products on the bf16 dot product, no widened copies
        let (q, k, v) = (q.contiguous()?, k.contiguous()?, v.contiguous()?);
        let out = with_cpu_slice(&q, |q| {
            with_cpu_slice(&k, |k| {
                with_cpu_slice(&v, |v| {
                    let dims = (b * h, n, m, d);
                    Ok(super::flash::attention_bf16(
                        q, k, v, score_bias, dims, scale,
                    ))
                })
            })
        })?;
        return Tensor::from_vec(out, (b, h, n, d), q.device());
    }
    let (q, k, v) = (prep(q)?, prep(k)?, prep(v)?);
    let out = with_cpu_slice(&q, |q| {
        with_cpu_slice(&k, |k| {
            with_cpu_slice(&v, |v| {
                Ok(super::flash::attention_f32(
                    q,
                    k,
                    v,
                    score_bias,
                    (b * h, n, m, d),
                    scale,
                ))
            })
        })
    })?;
    Tensor::from_vec(out, (b, h, n, d), q.device())
}

/// Calls `f` with the data of a contiguous CPU tensor.
fn with_cpu_slice<T: candle_core::WithDType, R>(
    t: &Tensor,
    f: impl FnOnce(&[T]) -> Result<R>,
) -> Result<R> {
    let (storage, layout) = t.storage_and_layout();
    f(super::cpu_slice(&storage, layout, t.elem_count())?)
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

    /// The generic blocked path (what runs on other devices and under training).
    fn generic(q: &Tensor, k: &Tensor, v: &Tensor, bias: Option<&Tensor>) -> Result<Tensor> {
        // a tracked input takes the composite path
        let q = candle_core::Var::from_tensor(q)?;
        scaled_dot_product_attention_with_bias(q.as_tensor(), k, v, bias)
    }

    #[test]
    fn fused_cpu_kernel_matches_the_generic_path() -> Result<()> {
        let dev = Device::Cpu;
        // several key tiles (BK = 256) and query tiles (BQ = 64) with ragged ends
        for (b, h, n, m, d) in [(1, 2, 300, 600, 64), (2, 3, 65, 257, 16), (1, 1, 1, 1, 8)] {
            let q = Tensor::randn(0f32, 1., (b, h, n, d), &dev)?;
            let k = Tensor::randn(0f32, 1., (b, h, m, d), &dev)?;
            let v = Tensor::randn(0f32, 1., (b, h, m, d), &dev)?;
            let mask: Vec<f32> = (0..b * m)
                .map(|j| if j % 7 == 3 { -1e9 } else { 0.0 })
                .collect();
            let key_bias = Tensor::new(mask, &dev)?.reshape((b, 1, 1, m))?;
            let head_bias = Tensor::randn(0f32, 1., (b, h, 1, m), &dev)?;
            // one row per query: a T5-style position bias shared by the batch, and one per sample
            let position_bias = Tensor::randn(0f32, 1., (1, h, n, m), &dev)?;
            let sample_bias = Tensor::randn(0f32, 1., (b, 1, n, m), &dev)?;
            for bias in [
                None,
                Some(&key_bias),
                Some(&head_bias),
                Some(&position_bias),
                Some(&sample_bias),
            ] {
                let got = scaled_dot_product_attention_with_bias(&q, &k, &v, bias)?;
                let want = generic(&q, &k, &v, bias)?;
                let err = (got - want)?.abs()?.max_all()?.to_scalar::<f32>()?;
                assert!(
                    err < 2e-5,
                    "{:?} bias {:?}: max abs error {err}",
                    (b, h, n, m, d),
                    bias.map(|t| t.dims().to_vec())
                );
                // bf16: the same values through the bf16 kernel (on CPUs that have the bf16
                // dot product) against the generic path's f32 math; probabilities and the
                // output are rounded to bf16 (8 bits), so ~1e-2 of values of a few units
                let bf = |t: &Tensor| t.to_dtype(DType::BF16);
                let got =
                    scaled_dot_product_attention_with_bias(&bf(&q)?, &bf(&k)?, &bf(&v)?, bias)?;
                assert_eq!(got.dtype(), DType::BF16);
                let want = generic(&bf(&q)?, &bf(&k)?, &bf(&v)?, bias)?;
                let err = (got.to_dtype(DType::F32)? - want.to_dtype(DType::F32)?)?
                    .abs()?
                    .max_all()?
                    .to_scalar::<f32>()?;
                assert!(
                    err < 0.04,
                    "bf16 {:?}: max abs error {err}",
                    (b, h, n, m, d)
                );
            }
        }
        // bf16 inputs come back bf16
        let q = Tensor::randn(0f32, 1., (1, 2, 70, 32), &dev)?.to_dtype(DType::BF16)?;
        let out = scaled_dot_product_attention(&q, &q, &q)?;
        assert_eq!(out.dtype(), DType::BF16);
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
