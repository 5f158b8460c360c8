//! The linear layer every family uses: `y = x·Wᵀ + b` as one 2D matmul over all leading dims.
//! A bf16 weight on a CPU with AVX-512 BF16 is packed once, when the layer is built, into the
//! operand layout of [`super::bf16_gemm`] (in place of the dense copy: the same bytes), and
//! bf16 inputs multiply on that kernel (inference only; it has no backward); everything else
//! takes candle's matmul. Layers built inside [`quantized`] store their weight 8-bit (GGUF's
//! Q8_0) and multiply with candle's quantized matmul.

use std::cell::Cell;
use std::sync::Arc;

use candle_core::quantized::{GgmlDType, QMatMul, QTensor};
use candle_core::{CpuStorage, CustomOp1, DType, Device, Layout, Module, Result, Shape, Tensor};
use candle_nn::VarBuilder;

use super::bf16_gemm::{self, Panels};

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
    /// The `(out, in)` bf16 weight packed for [`super::bf16_gemm`] (CPU only).
    PackedBf16(Arc<Panels>),
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
    /// From a `(out, in)` weight and an optional `(out,)` bias. A bf16 CPU weight that is not
    /// being trained is packed for the bf16 kernel where the CPU has it (unless
    /// `VIDGEN_MATMUL=generic`, for before/after benchmarks in one run).
    pub fn new(weight: Tensor, bias: Option<Tensor>) -> Self {
        let weight = match pack_bf16(&weight) {
            Some(panels) => Weight::PackedBf16(Arc::new(panels)),
            None => Weight::Dense(weight.t().expect("a linear weight is 2D")),
        };
        Self { weight, bias }
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
            Weight::PackedBf16(p) => Tensor::from_vec(p.to_rows(), p.dims(), &Device::Cpu),
        }
    }

    /// Whether its weight is stored quantized.
    pub fn is_quantized(&self) -> bool {
        matches!(self.weight, Weight::Quantized(_))
    }
}

/// The bf16 kernel's operand for `weight` `(out, in)` when it applies: bf16 on the CPU, not a
/// trained variable, an even input width, a CPU with AVX-512 BF16, and not
/// `VIDGEN_MATMUL=generic`.
fn pack_bf16(weight: &Tensor) -> Option<Panels> {
    static GENERIC: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    let generic =
        *GENERIC.get_or_init(|| std::env::var("VIDGEN_MATMUL").is_ok_and(|v| v == "generic"));
    let (n, k) = weight.dims2().ok()?;
    let applies = weight.dtype() == DType::BF16
        && weight.device().is_cpu()
        && k % 2 == 0
        && !weight.track_op()
        && !generic
        && bf16_gemm::available();
    if !applies {
        return None;
    }
    let rows = weight.flatten_all().ok()?.to_vec1::<half::bf16>().ok()?;
    Some(Panels::from_rows(&rows, n, k))
}

/// `(rows, in)` × a packed `(out, in)` weight (+ bias) on [`super::bf16_gemm`].
struct Bf16Linear {
    weight: Arc<Panels>,
    bias: Option<Vec<f32>>,
}

impl CustomOp1 for Bf16Linear {
    fn name(&self) -> &'static str {
        "bf16-linear"
    }

    fn cpu_fwd(&self, x: &CpuStorage, lx: &Layout) -> Result<(CpuStorage, Shape)> {
        let CpuStorage::BF16(x) = x else {
            candle_core::bail!("bf16-linear takes bf16 input")
        };
        let Some((xs, xe)) = lx.contiguous_offsets() else {
            candle_core::bail!("bf16-linear takes a contiguous input")
        };
        let (n, k) = self.weight.dims();
        let &[m, kx] = lx.dims() else {
            candle_core::bail!("bf16-linear takes a 2D input")
        };
        if kx != k {
            candle_core::bail!("bf16-linear: x is (_, {kx}) but the weight is ({n}, {k})")
        }
        let y = bf16_gemm::linear_packed(&x[xs..xe], &self.weight, self.bias.as_deref(), m);
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
            Weight::PackedBf16(panels) => {
                if xs2.dtype() == DType::BF16 && xs2.device().is_cpu() && !xs2.track_op() {
                    let bias = match &self.bias {
                        Some(b) => Some(b.to_dtype(DType::F32)?.to_vec1::<f32>()?),
                        None => None,
                    };
                    let op = Bf16Linear {
                        weight: panels.clone(),
                        bias,
                    };
                    xs2.apply_op1_no_bwd(&op)?
                } else {
                    // an input the kernel does not take (another dtype, or one being
                    // differentiated): the dense weight, rebuilt for this call
                    let ys = xs2.matmul(&self.weight()?.t()?)?;
                    match &self.bias {
                        Some(b) => super::broadcast::add(&ys, b)?,
                        None => ys,
                    }
                }
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
        let layer = Linear::new(w.clone(), Some(b.clone()));
        let ours = layer.forward(&x)?;
        assert_eq!((ours.dims(), ours.dtype()), (&[3, 9, 40][..], DType::BF16));
        // packed or not, the layer gives its weight back bit for bit
        let back = layer.weight()?;
        assert_eq!(back.dims(), w.dims());
        let same = back
            .eq(&w)?
            .to_dtype(DType::F32)?
            .min_all()?
            .to_scalar::<f32>()?;
        assert_eq!(same, 1.0);
        // an input the kernel does not take (tracked for a backward pass) multiplies the
        // dense weight instead: the same product to the bf16 rounding of candle's matmul
        let tracked = candle_core::Var::from_tensor(&x)?;
        let via_candle = layer.forward(tracked.as_tensor())?;
        let diff = (via_candle.to_dtype(DType::F32)? - ours.to_dtype(DType::F32)?)?;
        let scale = ours
            .to_dtype(DType::F32)?
            .abs()?
            .max_all()?
            .to_scalar::<f32>()?;
        assert!(diff.abs()?.max_all()?.to_scalar::<f32>()? <= 0.02 * scale);
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
