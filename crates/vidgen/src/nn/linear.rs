//! The linear layer every family uses: `y = x·Wᵀ + b` as one 2D matmul over all leading dims.
//! bf16 on a CPU with AVX-512 BF16 takes [`super::bf16_gemm`] (inference only; it has no
//! backward); everything else candle's matmul. Layers built inside [`quantized`] store their
//! weight 8-bit (GGUF's Q8_0) and multiply with candle's quantized matmul.

use std::cell::Cell;

use candle_core::quantized::{GgmlDType, QMatMul, QTensor};
use candle_core::{CpuStorage, CustomOp2, DType, Layout, Module, Result, Shape, Tensor};
use candle_nn::VarBuilder;

/// A linear layer whose weight is stored `(out, in)` as in PyTorch checkpoints. Leading
/// dimensions are flattened so the product is a single `(rows, in) × (in, out)` matmul rather
/// than a batched one over a broadcast weight.
#[derive(Debug, Clone)]
pub struct Linear {
    weight: Weight,
    bias: Option<Tensor>,
}

#[derive(Debug, Clone)]
enum Weight {
    /// `(in, out)`: a transposed view of the checkpoint's `(out, in)` weight (no copy).
    Dense(Tensor),
    /// The `(out, in)` weight in a GGUF block format; activations go in and out as f32.
    Quantized(QMatMul),
}

thread_local! {
    static QUANTIZE: Cell<Option<GgmlDType>> = const { Cell::new(None) };
}

/// Builds with `build`; the linear layers it loads with [`linear`] are stored as `dtype`
/// (`None`: as loaded) where their input width is a multiple of its block (32 for Q8_0).
/// The setting is the calling thread's and lasts for the call only.
pub fn quantized<T>(dtype: Option<GgmlDType>, build: impl FnOnce() -> T) -> T {
    /// Puts the previous setting back, also when `build` panics.
    struct Restore(Option<GgmlDType>);
    impl Drop for Restore {
        fn drop(&mut self) {
            QUANTIZE.set(self.0);
        }
    }
    let _restore = Restore(QUANTIZE.replace(dtype));
    build()
}

impl Linear {
    /// From a `(out, in)` weight and an optional `(out,)` bias.
    pub fn new(weight: Tensor, bias: Option<Tensor>) -> Self {
        Self {
            weight: Weight::Dense(weight.t().expect("a linear weight is 2D")),
            bias,
        }
    }

    /// From a `(out, in)` weight stored as `dtype` (e.g. [`GgmlDType::Q8_0`]; its input width
    /// must be a multiple of the format's block).
    pub fn new_quantized(weight: &Tensor, bias: Option<Tensor>, dtype: GgmlDType) -> Result<Self> {
        let q = QTensor::quantize(&weight.to_dtype(DType::F32)?, dtype)?;
        Ok(Self {
            weight: Weight::Quantized(QMatMul::from_qtensor(q)?),
            bias,
        })
    }

    /// The `(out, in)` weight (dequantized, if stored quantized).
    pub fn weight(&self) -> Result<Tensor> {
        match &self.weight {
            Weight::Dense(w) => w.t(),
            Weight::Quantized(QMatMul::QTensor(q)) => q.dequantize(&candle_core::Device::Cpu),
            Weight::Quantized(QMatMul::Tensor(w) | QMatMul::TensorF16(w)) => Ok(w.clone()),
        }
    }

    /// Whether its weight is stored quantized.
    pub fn is_quantized(&self) -> bool {
        matches!(self.weight, Weight::Quantized(_))
    }
}

impl Linear {
    /// bf16 inference on a CPU that has the bf16 dot product, unless
    /// `VIDGEN_MATMUL=generic` (for before/after benchmarks in one run).
    fn bf16_kernel_applies(&self, xs: &Tensor) -> bool {
        static GENERIC: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        let generic =
            *GENERIC.get_or_init(|| std::env::var("VIDGEN_MATMUL").is_ok_and(|v| v == "generic"));
        let Weight::Dense(weight_t) = &self.weight else {
            return false;
        };
        xs.dtype() == DType::BF16
            && weight_t.dtype() == DType::BF16
            && xs.device().is_cpu()
            && xs.dim(1).is_ok_and(|k| k % 2 == 0)
            && weight_t.t().is_ok_and(|w| w.is_contiguous())
            && !xs.track_op()
            && !weight_t.track_op()
            && !generic
            && super::bf16_gemm::available()
    }
}

/// `(rows, in)` × the `(out, in)` weight (+ bias) on [`super::bf16_gemm`].
struct Bf16Linear {
    bias: Option<Vec<f32>>,
}

impl CustomOp2 for Bf16Linear {
    fn name(&self) -> &'static str {
        "bf16-linear"
    }

    fn cpu_fwd(
        &self,
        x: &CpuStorage,
        lx: &Layout,
        w: &CpuStorage,
        lw: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (CpuStorage::BF16(x), CpuStorage::BF16(w)) = (x, w) else {
            candle_core::bail!("bf16-linear takes bf16 operands")
        };
        let (Some((xs, xe)), Some((ws, we))) = (lx.contiguous_offsets(), lw.contiguous_offsets())
        else {
            candle_core::bail!("bf16-linear takes contiguous operands")
        };
        let (&[m, k], &[n, kw]) = (lx.dims(), lw.dims()) else {
            candle_core::bail!("bf16-linear takes 2D operands")
        };
        if k != kw {
            candle_core::bail!("bf16-linear: x is (_, {k}) but the weight is ({n}, {kw})")
        }
        let y = super::bf16_gemm::linear(&x[xs..xe], &w[ws..we], self.bias.as_deref(), (m, n, k));
        Ok((CpuStorage::BF16(y), Shape::from((m, n))))
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
    match QUANTIZE.get() {
        Some(q) if in_dim.is_multiple_of(q.block_size()) => Linear::new_quantized(&weight, bias, q),
        _ => Ok(Linear::new(weight, bias)),
    }
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
        let xs2 = xs.contiguous()?.reshape((rows, in_dim))?;
        let ys = match &self.weight {
            Weight::Quantized(q) => {
                // candle's quantized matmul takes f32 activations
                let ys = q.forward(&xs2.to_dtype(DType::F32)?)?;
                let ys = match &self.bias {
                    Some(b) => ys.broadcast_add(&b.to_dtype(DType::F32)?)?,
                    None => ys,
                };
                ys.to_dtype(xs.dtype())?
            }
            Weight::Dense(weight_t) if self.bf16_kernel_applies(&xs2) => {
                let bias = match &self.bias {
                    Some(b) => Some(b.to_dtype(DType::F32)?.to_vec1::<f32>()?),
                    None => None,
                };
                xs2.apply_op2_no_bwd(&weight_t.t()?, &Bf16Linear { bias })?
            }
            Weight::Dense(weight_t) => {
                let ys = xs2.matmul(weight_t)?;
                match &self.bias {
                    Some(b) => super::broadcast::add(&ys, b)?,
                    None => ys,
                }
            }
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

    #[test]
    fn q8_0_is_close_to_f32_and_built_only_in_scope() -> Result<()> {
        let dev = Device::Cpu;
        let w = Tensor::randn(0f32, 1., (48, 64), &dev)?;
        let b = Tensor::randn(0f32, 1., 48, &dev)?;
        let x = Tensor::randn(0f32, 1., (2, 5, 64), &dev)?;
        let mut map = std::collections::HashMap::new();
        map.insert("weight".to_string(), w.clone());
        map.insert("bias".to_string(), b.clone());
        let vb = VarBuilder::from_tensors(map, DType::F32, &dev);
        let q = quantized(Some(GgmlDType::Q8_0), || linear(64, 48, true, vb.clone()))?;
        let dense = linear(64, 48, true, vb)?;
        assert!(q.is_quantized() && !dense.is_quantized());
        let (got, want) = (q.forward(&x)?, dense.forward(&x)?);
        assert_eq!(got.dims(), &[2, 5, 48]);
        // 8-bit weights and activations: each of the 64 products is off by ~1/254 of its
        // block's largest value; the sum of 64 unit-variance products errs by a few 0.01
        let err = (&got - &want)?.abs()?.max_all()?.to_scalar::<f32>()?;
        let scale = want.abs()?.max_all()?.to_scalar::<f32>()?;
        assert!(err > 0.0 && err < 0.02 * scale, "{err} of {scale}");
        // a width that is not a multiple of the block stays dense
        let vb = VarBuilder::zeros(DType::F32, &dev);
        assert!(!quantized(Some(GgmlDType::Q8_0), || linear(40, 8, false, vb))?.is_quantized());
        Ok(())
    }

    #[test]
    fn bf16_matches_f32_within_one_rounding() -> Result<()> {
        // on a CPU with AVX-512 BF16 this goes through the bf16 kernel, else candle's matmul
        let dev = Device::Cpu;
        let w = Tensor::randn(0f32, 1., (40, 66), &dev)?.to_dtype(DType::BF16)?;
        let b = Tensor::randn(0f32, 1., 40, &dev)?.to_dtype(DType::BF16)?;
        let x = Tensor::randn(0f32, 1., (3, 9, 66), &dev)?.to_dtype(DType::BF16)?;
        let ours = Linear::new(w.clone(), Some(b.clone())).forward(&x)?;
        assert_eq!((ours.dims(), ours.dtype()), (&[3, 9, 40][..], DType::BF16));
        let f32 = |t: &Tensor| t.to_dtype(DType::F32);
        let want = Linear::new(f32(&w)?, Some(f32(&b)?)).forward(&f32(&x)?)?;
        // bf16 keeps 8 bits of mantissa: one rounding of the output (plus, on the candle
        // path, of the product before the bias) is ~1 % of the value
        let err = (f32(&ours)? - &want)?.abs()?;
        let bound = ((want.abs()? * 0.01)? + 0.05)?;
        let worst = (err - bound)?.max_all()?.to_scalar::<f32>()?;
        assert!(worst <= 0.0, "{worst}");
        Ok(())
    }
}
