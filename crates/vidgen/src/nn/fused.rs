//! One-pass, multi-threaded CPU versions of the elementwise chains around the DiT's matmuls.
//! In candle each step of `LayerNorm → ·(1 + scale) + shift → cast`, `h + y·gate → cast`,
//! `cast → RMS norm → cast` or GELU is its own single-threaded pass over memory (with a
//! widening per element in bf16, and row sums as one serial chain of adds);
//! here each chain is one pass over rows split across threads, computing in f32 whatever the
//! storage dtype (as the reference does), for f32 and bf16 tensors.
//!
//! Inference only (no backward pass), but for GELU, whose fused pass also trains on the CPU:
//! [`applies`] says when the callers may use them; the candle-op chains stay for training,
//! other devices and as the tests' oracle.

use candle_core::{
    CpuStorage, CustomOp1, CustomOp2, CustomOp3, DType, Layout, Result, Shape, Tensor,
};
use half::bf16;
use rayon::prelude::*;

/// Whether the fused passes may replace the candle-op chains for these tensors: on the CPU,
/// f32 or bf16, nothing being trained, and not switched off with `VIDGEN_FUSED=off`.
pub fn applies(tensors: &[&Tensor]) -> bool {
    static OFF: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    let off = *OFF.get_or_init(|| std::env::var("VIDGEN_FUSED").is_ok_and(|v| v == "off"));
    !off && tensors.iter().all(|t| {
        t.device().is_cpu() && matches!(t.dtype(), DType::F32 | DType::BF16) && !t.track_op()
    })
}

/// Whether `per_sample` is `(B, 1, D)` for `x` `(B, N, D)`: the shapes the fused passes take
/// (a broadcast over the batch takes the candle ops).
pub fn per_sample_fits(x: &Tensor, per_sample: &Tensor) -> bool {
    match (x.dims(), per_sample.dims()) {
        (&[b, _, d], &[bs, 1, ds]) => (b, d) == (bs, ds),
        _ => false,
    }
}

/// `LayerNorm(x) · (1 + scale) + shift` (layer norm without affine, in f32) as `dtype`.
/// `x` `(B, N, D)`; `shift`, `scale` `(B, 1, D)`.
pub fn modulated_layer_norm(
    x: &Tensor,
    shift: &Tensor,
    scale: &Tensor,
    eps: f32,
    dtype: DType,
) -> Result<Tensor> {
    let f32c = |t: &Tensor| t.to_dtype(DType::F32)?.contiguous();
    x.contiguous()?
        .apply_op3_no_bwd(&f32c(shift)?, &f32c(scale)?, &ModulatedNorm { eps, dtype })
}

/// `h + y · gate` in f32, as `h`'s dtype. `h`, `y` `(B, N, D)` of one dtype; `gate` `(B, 1, D)`.
pub fn gated_residual(h: &Tensor, y: &Tensor, gate: &Tensor) -> Result<Tensor> {
    let gate = gate.to_dtype(DType::F32)?.contiguous()?;
    h.contiguous()?
        .apply_op3_no_bwd(&y.to_dtype(h.dtype())?.contiguous()?, &gate, &GatedResidual)
}

/// RMS norm over the last dimension, `x / sqrt(mean(x²) + eps) · weight`, in f32, as `x`'s
/// dtype. `weight` `(D,)` f32.
pub fn rms_norm(x: &Tensor, weight: &Tensor, eps: f32) -> Result<Tensor> {
    rms_norm_as(x, weight, eps, x.dtype())
}

/// [`rms_norm`] returned as `dtype` (one rounding, in the same pass).
pub fn rms_norm_as(x: &Tensor, weight: &Tensor, eps: f32, dtype: DType) -> Result<Tensor> {
    let weight = weight.to_dtype(DType::F32)?.contiguous()?;
    x.contiguous()?
        .apply_op2_no_bwd(&weight, &RmsNormOp { eps, dtype })
}

/// Layer norm over the last dimension with an affine transform, `(x − mean) / sqrt(var + eps)
/// · weight + bias`, computed and returned in f32 (diffusers' `FP32LayerNorm`). `weight`,
/// `bias` `(D,)`.
pub fn layer_norm(x: &Tensor, weight: &Tensor, bias: &Tensor, eps: f32) -> Result<Tensor> {
    let f32c = |t: &Tensor| t.to_dtype(DType::F32)?.contiguous();
    x.contiguous()?
        .apply_op3_no_bwd(&f32c(weight)?, &f32c(bias)?, &LayerNormOp { eps })
}

/// `gelu(a) · b` (GELU with the tanh approximation) in f32, as `a`'s dtype: the gated
/// feed-forward of T5 (`gated-gelu`) in one pass. `a`, `b` of one shape.
pub fn gelu_mul(a: &Tensor, b: &Tensor) -> Result<Tensor> {
    a.contiguous()?
        .apply_op2_no_bwd(&b.to_dtype(a.dtype())?.contiguous()?, &GeluMul)
}

/// GELU with the tanh approximation (PyTorch's `approximate="tanh"`), same dtype.
pub fn gelu_tanh(x: &Tensor) -> Result<Tensor> {
    x.contiguous()?.apply_op1_no_bwd(&GeluTanh)
}

/// The gated residual `h + y · gate` in f32, as `h`'s dtype (`gate` `(B, 1, D)`, or anything
/// that broadcasts): one fused pass where [`applies`], else candle ops.
pub fn gated_add(h: &Tensor, y: &Tensor, gate: &Tensor) -> Result<Tensor> {
    if applies(&[h, y, gate]) && h.dims() == y.dims() && per_sample_fits(h, gate) {
        return gated_residual(h, y, gate);
    }
    let y = super::broadcast::mul(&y.to_dtype(DType::F32)?, &gate.to_dtype(DType::F32)?)?;
    (h.to_dtype(DType::F32)? + y)?.to_dtype(h.dtype())
}

/// Rotary embedding on consecutive channel pairs, `(x₀, x₁) → (x₀c − x₁s, x₀s + x₁c)`, in f32
/// (one rounding per output, as the reference's float rotation), as `x`'s dtype. `x`
/// `(B, H, N, d)`; `cos`, `sin` `(N, d/2)` f32. candle's `rope_i` computes a bf16 input in bf16
/// arithmetic, one scalar element at a time.
pub fn rope_interleaved(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    let f32c = |t: &Tensor| t.to_dtype(DType::F32)?.contiguous();
    x.contiguous()?
        .apply_op3_no_bwd(&f32c(cos)?, &f32c(sin)?, &RopeInterleaved)
}

/// GELU with the tanh approximation (candle's `gelu`): one fused pass where [`applies`]; in
/// training on the CPU (f32), a fused pass with a fused backward pass (candle's backward of
/// `gelu` is a chain of single-threaded scalar `powf`/`tanh` passes: ~12 % of a DiT training
/// step); elsewhere candle's.
pub fn gelu(x: &Tensor) -> Result<Tensor> {
    if applies(&[x]) {
        gelu_tanh(x)
    } else if x.track_op() && x.device().is_cpu() && x.dtype() == DType::F32 {
        x.contiguous()?.apply_op1(GeluTanh)
    } else {
        x.gelu()
    }
}

/// A contiguous f32 or bf16 CPU slice.
enum Src<'a> {
    F32(&'a [f32]),
    Bf16(&'a [bf16]),
}

impl<'a> Src<'a> {
    fn new(s: &'a CpuStorage, l: &Layout, what: &str) -> Result<Self> {
        let Some((start, end)) = l.contiguous_offsets() else {
            candle_core::bail!("{what}: expected a contiguous tensor")
        };
        match s {
            CpuStorage::F32(v) => Ok(Src::F32(&v[start..end])),
            CpuStorage::BF16(v) => Ok(Src::Bf16(&v[start..end])),
            _ => candle_core::bail!("{what}: expected f32 or bf16"),
        }
    }

    fn dtype(&self) -> DType {
        match self {
            Src::F32(_) => DType::F32,
            Src::Bf16(_) => DType::BF16,
        }
    }

    fn len(&self) -> usize {
        match self {
            Src::F32(v) => v.len(),
            Src::Bf16(v) => v.len(),
        }
    }

    /// Elements `start..start + dst.len()` widened into `dst`.
    fn read(&self, start: usize, dst: &mut [f32]) {
        let end = start + dst.len();
        match self {
            Src::F32(v) => dst.copy_from_slice(&v[start..end]),
            Src::Bf16(v) => {
                for (d, s) in dst.iter_mut().zip(&v[start..end]) {
                    *d = s.to_f32();
                }
            }
        }
    }

    fn f32(&self, what: &str) -> Result<&'a [f32]> {
        match self {
            Src::F32(v) => Ok(v),
            Src::Bf16(_) => candle_core::bail!("{what}: expected f32"),
        }
    }
}

/// Runs `f(row index, f32 scratch for that row)` over `rows` rows of `d` values in parallel and
/// stores each row's scratch as `dtype`.
fn map_rows(
    rows: usize,
    d: usize,
    dtype: DType,
    f: impl Fn(usize, &mut [f32]) + Sync,
) -> Result<CpuStorage> {
    // a few rows per task keeps the scheduling cost below the work
    let rows_per_task = (16_384 / d.max(1)).max(1);
    Ok(match dtype {
        DType::F32 => {
            let mut out = vec![0f32; rows * d];
            out.par_chunks_mut(rows_per_task * d)
                .enumerate()
                .for_each(|(t, chunk)| {
                    for (i, row) in chunk.chunks_exact_mut(d).enumerate() {
                        f(t * rows_per_task + i, row);
                    }
                });
            CpuStorage::F32(out)
        }
        DType::BF16 => {
            // every element is written below, so the buffer is not zeroed first
            let mut out: Vec<bf16> = Vec::with_capacity(rows * d);
            out.spare_capacity_mut()[..rows * d]
                .par_chunks_mut(rows_per_task * d)
                .enumerate()
                .for_each_init(
                    || vec![0f32; d],
                    |buf, (t, chunk)| {
                        for (i, row) in chunk.chunks_exact_mut(d).enumerate() {
                            f(t * rows_per_task + i, buf);
                            round_row(buf, row);
                        }
                    },
                );
            // SAFETY: the chunks cover all rows · d elements and each row was written whole
            unsafe { out.set_len(rows * d) };
            CpuStorage::BF16(out)
        }
        other => candle_core::bail!("fused CPU passes write f32 or bf16, not {other:?}"),
    })
}

struct ModulatedNorm {
    eps: f32,
    dtype: DType,
}

impl CustomOp3 for ModulatedNorm {
    fn name(&self) -> &'static str {
        "modulated-layer-norm"
    }

    fn cpu_fwd(
        &self,
        sx: &CpuStorage,
        lx: &Layout,
        s_shift: &CpuStorage,
        l_shift: &Layout,
        s_scale: &CpuStorage,
        l_scale: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (&[b, n, d], &[bs, 1, ds]) = (lx.dims(), l_shift.dims()) else {
            candle_core::bail!("modulated-layer-norm: x (B, N, D) and shift (B, 1, D) expected")
        };
        if (bs, ds) != (b, d) || l_scale.dims() != l_shift.dims() {
            candle_core::bail!("modulated-layer-norm: shift/scale do not match x ({b}, {n}, {d})")
        }
        let x = Src::new(sx, lx, "modulated-layer-norm")?;
        let shift = Src::new(s_shift, l_shift, "modulated-layer-norm")?.f32("shift")?;
        let scale = Src::new(s_scale, l_scale, "modulated-layer-norm")?.f32("scale")?;
        debug_assert_eq!(x.len(), b * n * d);
        let eps = self.eps;
        let out = map_rows(b * n, d, self.dtype, |r, row| {
            x.read(r * d, row);
            let (mean, inv) = mean_inv_std(row, eps);
            let bi = r / n;
            let (sh, sc) = (&shift[bi * d..(bi + 1) * d], &scale[bi * d..(bi + 1) * d]);
            for ((v, sh), sc) in row.iter_mut().zip(sh).zip(sc) {
                // plain * and +: `mul_add` without the fma target feature is a libm call
                *v = (*v - mean) * inv * (1.0 + sc) + sh;
            }
        })?;
        Ok((out, Shape::from((b, n, d))))
    }
}

/// `Σ f(x)` over `row` in 16 interleaved partial sums: a sum the compiler can vectorise (one
/// running sum is a serial chain of adds, float addition not being associative).
#[inline(always)]
fn lane_sum(row: &[f32], f: impl Fn(f32) -> f32) -> f32 {
    let mut lanes = [0f32; 16];
    let chunks = row.chunks_exact(16);
    let tail: f32 = chunks.remainder().iter().map(|&v| f(v)).sum();
    for chunk in chunks {
        for (l, &v) in lanes.iter_mut().zip(chunk) {
            *l += f(v);
        }
    }
    lanes.iter().sum::<f32>() + tail
}

/// A row's mean and `1 / sqrt(var + eps)` (biased variance), as a layer norm takes them.
#[inline(always)]
fn mean_inv_std(row: &[f32], eps: f32) -> (f32, f32) {
    let d = row.len() as f32;
    let mean = lane_sum(row, |v| v) / d;
    let var = lane_sum(row, |v| (v - mean) * (v - mean)) / d;
    (mean, 1.0 / (var + eps).sqrt())
}

/// `dst[j] = src[j]` rounded to bf16 ([`round_bf16`]), vectorised.
pub(crate) fn round_to_bf16(src: &[f32], dst: &mut [bf16]) {
    // SAFETY: `MaybeUninit<bf16>` has bf16's layout, and only initialised values are written
    let dst = unsafe { &mut *(dst as *mut [bf16] as *mut [std::mem::MaybeUninit<bf16>]) };
    round_row(src, dst)
}

/// `dst[j] = src[j]` rounded to bf16 ([`round_bf16`]) into a buffer that may be
/// uninitialised: AVX2 where the CPU has it (the baseline build rounds with SSE2 only).
fn round_row(src: &[f32], dst: &mut [std::mem::MaybeUninit<bf16>]) {
    #[cfg(target_arch = "x86_64")]
    {
        if is_x86_feature_detected!("avx2") {
            // SAFETY: the feature was just detected.
            return unsafe { round_row_avx2(src, dst) };
        }
    }
    round_row_generic(src, dst)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn round_row_avx2(src: &[f32], dst: &mut [std::mem::MaybeUninit<bf16>]) {
    round_row_generic(src, dst)
}

#[inline(always)]
fn round_row_generic(src: &[f32], dst: &mut [std::mem::MaybeUninit<bf16>]) {
    for (o, v) in dst.iter_mut().zip(src) {
        o.write(round_bf16(*v));
    }
}

/// f32 -> bf16, round to nearest even (as `bf16::from_f32`), without branches so that loops
/// of it vectorise; NaN stays a (quiet) NaN.
#[inline(always)]
pub(crate) fn round_bf16(x: f32) -> bf16 {
    let bits = x.to_bits();
    let rounded = (bits.wrapping_add(0x7fff + ((bits >> 16) & 1)) >> 16) as u16;
    let nan = ((bits >> 16) as u16) | 0x40;
    bf16::from_bits(if x.is_nan() { nan } else { rounded })
}

struct RmsNormOp {
    eps: f32,
    /// The output's dtype.
    dtype: DType,
}

impl CustomOp2 for RmsNormOp {
    fn name(&self) -> &'static str {
        "rms-norm"
    }

    fn cpu_fwd(
        &self,
        sx: &CpuStorage,
        lx: &Layout,
        sw: &CpuStorage,
        lw: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = Src::new(sx, lx, "rms-norm")?;
        let weight = Src::new(sw, lw, "rms-norm")?.f32("weight")?;
        let d = weight.len();
        if lx.dims().last() != Some(&d) {
            candle_core::bail!(
                "rms-norm: x {:?} does not end in the weight's {d}",
                lx.dims()
            )
        }
        let eps = self.eps;
        let out = map_rows(x.len() / d.max(1), d, self.dtype, |r, row| {
            x.read(r * d, row);
            let inv = 1.0 / (lane_sum(row, |v| v * v) / d as f32 + eps).sqrt();
            for (v, w) in row.iter_mut().zip(weight) {
                *v *= inv * w;
            }
        })?;
        Ok((out, lx.shape().clone()))
    }
}

struct LayerNormOp {
    eps: f32,
}

impl CustomOp3 for LayerNormOp {
    fn name(&self) -> &'static str {
        "layer-norm"
    }

    fn cpu_fwd(
        &self,
        sx: &CpuStorage,
        lx: &Layout,
        sw: &CpuStorage,
        lw: &Layout,
        sb: &CpuStorage,
        lb: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let x = Src::new(sx, lx, "layer-norm")?;
        let weight = Src::new(sw, lw, "layer-norm")?.f32("weight")?;
        let bias = Src::new(sb, lb, "layer-norm")?.f32("bias")?;
        let d = weight.len();
        if lx.dims().last() != Some(&d) || bias.len() != d {
            candle_core::bail!(
                "layer-norm: x {:?}, weight and bias ({d},) do not fit",
                lx.dims()
            )
        }
        let eps = self.eps;
        let out = map_rows(x.len() / d.max(1), d, DType::F32, |r, row| {
            x.read(r * d, row);
            let (mean, inv) = mean_inv_std(row, eps);
            for ((v, w), b) in row.iter_mut().zip(weight).zip(bias) {
                *v = (*v - mean) * inv * w + b;
            }
        })?;
        Ok((out, lx.shape().clone()))
    }
}

struct GatedResidual;

impl CustomOp3 for GatedResidual {
    fn name(&self) -> &'static str {
        "gated-residual"
    }

    fn cpu_fwd(
        &self,
        sh: &CpuStorage,
        lh: &Layout,
        sy: &CpuStorage,
        ly: &Layout,
        sg: &CpuStorage,
        lg: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let (&[b, n, d], &[bg, 1, dg]) = (lh.dims(), lg.dims()) else {
            candle_core::bail!("gated-residual: h (B, N, D) and gate (B, 1, D) expected")
        };
        if ly.dims() != lh.dims() || (bg, dg) != (b, d) {
            candle_core::bail!("gated-residual: y/gate do not match h ({b}, {n}, {d})")
        }
        let h = Src::new(sh, lh, "gated-residual")?;
        let y = Src::new(sy, ly, "gated-residual")?;
        let gate = Src::new(sg, lg, "gated-residual")?.f32("gate")?;
        let out = map_rows(b * n, d, h.dtype(), |r, row| {
            h.read(r * d, row);
            let g = &gate[(r / n) * d..(r / n + 1) * d];
            match &y {
                Src::F32(y) => {
                    for ((v, y), g) in row.iter_mut().zip(&y[r * d..(r + 1) * d]).zip(g) {
                        *v += y * g;
                    }
                }
                Src::Bf16(y) => {
                    for ((v, y), g) in row.iter_mut().zip(&y[r * d..(r + 1) * d]).zip(g) {
                        *v += y.to_f32() * g;
                    }
                }
            }
        })?;
        Ok((out, Shape::from((b, n, d))))
    }
}

struct RopeInterleaved;

impl CustomOp3 for RopeInterleaved {
    fn name(&self) -> &'static str {
        "rope-interleaved"
    }

    fn cpu_fwd(
        &self,
        sx: &CpuStorage,
        lx: &Layout,
        sc: &CpuStorage,
        lc: &Layout,
        ss: &CpuStorage,
        ls: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        let &[b, h, n, d] = lx.dims() else {
            candle_core::bail!(
                "rope-interleaved: x (B, H, N, d) expected, got {:?}",
                lx.dims()
            )
        };
        if d % 2 != 0 || lc.dims() != [n, d / 2] || ls.dims() != [n, d / 2] {
            candle_core::bail!(
                "rope-interleaved: cos and sin must be ({n}, {}) for x {:?}, got {:?} and {:?}",
                d / 2,
                lx.dims(),
                lc.dims(),
                ls.dims()
            )
        }
        let x = Src::new(sx, lx, "rope-interleaved")?;
        let cos = Src::new(sc, lc, "rope-interleaved")?.f32("cos")?;
        let sin = Src::new(ss, ls, "rope-interleaved")?.f32("sin")?;
        let half = d / 2;
        let out = map_rows(b * h * n, d, x.dtype(), |r, row| {
            x.read(r * d, row);
            let t = r % n;
            let (c, s) = (
                &cos[t * half..(t + 1) * half],
                &sin[t * half..(t + 1) * half],
            );
            for ((pair, c), s) in row.chunks_exact_mut(2).zip(c).zip(s) {
                let (x0, x1) = (pair[0], pair[1]);
                pair[0] = x0 * c - x1 * s;
                pair[1] = x0 * s + x1 * c;
            }
        })?;
        Ok((out, lx.shape().clone()))
    }
}

struct GeluMul;

impl CustomOp2 for GeluMul {
    fn name(&self) -> &'static str {
        "gelu-mul"
    }

    fn cpu_fwd(
        &self,
        sa: &CpuStorage,
        la: &Layout,
        sb: &CpuStorage,
        lb: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        if la.dims() != lb.dims() {
            candle_core::bail!("gelu-mul: {:?} and {:?} differ", la.dims(), lb.dims())
        }
        let a = Src::new(sa, la, "gelu-mul")?;
        let b = Src::new(sb, lb, "gelu-mul")?;
        let d = la.dims().last().copied().unwrap_or(1).max(1);
        let out = map_rows(a.len() / d, d, a.dtype(), |r, row| {
            a.read(r * d, row);
            gelu_row(row);
            match &b {
                Src::F32(b) => row
                    .iter_mut()
                    .zip(&b[r * d..(r + 1) * d])
                    .for_each(|(v, b)| *v *= b),
                Src::Bf16(b) => row
                    .iter_mut()
                    .zip(&b[r * d..(r + 1) * d])
                    .for_each(|(v, b)| *v *= b.to_f32()),
            }
        })?;
        Ok((out, la.shape().clone()))
    }
}

struct GeluTanh;

impl CustomOp1 for GeluTanh {
    fn name(&self) -> &'static str {
        "gelu-tanh"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = Src::new(s, l, "gelu-tanh")?;
        // rows of the last dimension (any length) as the unit of work
        let d = l.dims().last().copied().unwrap_or(1).max(1);
        let rows = x.len() / d;
        let out = map_rows(rows, d, x.dtype(), |r, row| {
            x.read(r * d, row);
            gelu_row(row);
        })?;
        Ok((out, l.shape().clone()))
    }

    /// `d gelu(x) / dx · grad` in one fused pass ([`GeluTanhGrad`]).
    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad_res: &Tensor) -> Result<Option<Tensor>> {
        let grad = grad_res.to_dtype(DType::F32)?.contiguous()?;
        let arg = arg.to_dtype(DType::F32)?.contiguous()?;
        Ok(Some(
            arg.apply_op2_no_bwd(&grad, &GeluTanhGrad)?
                .to_dtype(grad_res.dtype())?,
        ))
    }
}

/// `g · gelu'(x)` for f32 `x` and `g` of one shape: with `s = σ(2u)`, `u = √(2/π)(x +
/// 0.044715x³)`, `gelu(x) = x·s` and `gelu'(x) = s + 2x·s(1 − s)·√(2/π)(1 + 3·0.044715x²)`.
struct GeluTanhGrad;

impl CustomOp2 for GeluTanhGrad {
    fn name(&self) -> &'static str {
        "gelu-tanh-grad"
    }

    fn cpu_fwd(
        &self,
        sx: &CpuStorage,
        lx: &Layout,
        sg: &CpuStorage,
        lg: &Layout,
    ) -> Result<(CpuStorage, Shape)> {
        if lx.dims() != lg.dims() {
            candle_core::bail!(
                "gelu-tanh-grad: x {:?} and grad {:?} differ",
                lx.dims(),
                lg.dims()
            )
        }
        let x = Src::new(sx, lx, "gelu-tanh-grad")?.f32("x")?;
        let g = Src::new(sg, lg, "gelu-tanh-grad")?.f32("grad")?;
        let d = lx.dims().last().copied().unwrap_or(1).max(1);
        let out = map_rows(x.len() / d, d, DType::F32, |r, row| {
            row.copy_from_slice(&g[r * d..(r + 1) * d]);
            gelu_grad_row(&x[r * d..(r + 1) * d], row);
        })?;
        Ok((out, lx.shape().clone()))
    }
}

/// `grad[i] *= gelu'(x[i])`.
fn gelu_grad_row(x: &[f32], grad: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    {
        if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
            // SAFETY: the features were just detected.
            return unsafe { gelu_grad_row_avx2(x, grad) };
        }
    }
    gelu_grad_row_generic(x, grad)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn gelu_grad_row_avx2(x: &[f32], grad: &mut [f32]) {
    gelu_grad_row_generic(x, grad)
}

#[inline(always)]
fn gelu_grad_row_generic(x: &[f32], grad: &mut [f32]) {
    for (g, &x) in grad.iter_mut().zip(x) {
        let s = gelu_gate(x);
        let du = GELU_C * (3.0 * GELU_A * x).mul_add(x, 1.0);
        *g *= s + 2.0 * x * s * (1.0 - s) * du;
    }
}

/// `x·σ(2u)` in place ([`gelu_gate`]), which is `0.5x(1 + tanh u)`.
fn gelu_row(row: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    {
        if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
            // SAFETY: the features were just detected.
            return unsafe { gelu_row_avx2(row) };
        }
    }
    gelu_row_generic(row)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn gelu_row_avx2(row: &mut [f32]) {
    gelu_row_generic(row)
}

#[inline(always)]
fn gelu_row_generic(row: &mut [f32]) {
    for v in row.iter_mut() {
        *v *= gelu_gate(*v);
    }
}

/// √(2/π) and the cubic coefficient of GELU's tanh approximation.
const GELU_C: f32 = 0.797_884_6;
const GELU_A: f32 = 0.044_715;

/// GELU's gate `σ(2u) = (1 + tanh u) / 2`, `u = √(2/π)(x + 0.044715x³)`, so `gelu(x) = x·σ(2u)`;
/// `σ` from `e^{−2|u|}` so the exponential's argument is never positive.
#[inline(always)]
fn gelu_gate(x: f32) -> f32 {
    let u = GELU_C * x.mul_add(GELU_A * x * x, x);
    let e = super::flash::fast_exp(-2.0 * u.abs());
    (if u >= 0.0 { 1.0 } else { e }) / (1.0 + e)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn max_err(a: &Tensor, b: &Tensor) -> Result<f32> {
        let (a, b) = (a.to_dtype(DType::F32)?, b.to_dtype(DType::F32)?);
        (a - b)?.abs()?.max_all()?.to_scalar::<f32>()
    }

    #[test]
    fn gelu_mul_and_rms_norm_as_match_the_candle_ops() -> Result<()> {
        let dev = Device::Cpu;
        let a = (Tensor::randn(0f32, 1., (2, 7, 24), &dev)? * 3.0)?;
        let b = Tensor::randn(0f32, 1., (2, 7, 24), &dev)?;
        let w = Tensor::randn(1f32, 0.2, 24, &dev)?;
        let want = (a.gelu()? * &b)?;
        assert!(max_err(&gelu_mul(&a, &b)?, &want)? < 1e-5, "gelu_mul f32");
        let (ab, bb) = (a.to_dtype(DType::BF16)?, b.to_dtype(DType::BF16)?);
        let got = gelu_mul(&ab, &bb)?;
        assert_eq!(got.dtype(), DType::BF16);
        let want = (ab.to_dtype(DType::F32)?.gelu()? * bb.to_dtype(DType::F32)?)?;
        assert!(max_err(&got, &want)? < 0.1, "gelu_mul bf16");
        let want = candle_nn::ops::rms_norm_slow(&a, &w, 1e-6)?;
        let got = rms_norm_as(&a, &w, 1e-6, DType::BF16)?;
        assert_eq!(got.dtype(), DType::BF16);
        assert!(max_err(&got, &want)? < 0.02, "rms_norm_as bf16");
        assert!(max_err(&rms_norm_as(&a, &w, 1e-6, DType::F32)?, &want)? < 1e-5);
        Ok(())
    }

    #[test]
    fn gelu_gradient_matches_candle_gelu() -> Result<()> {
        use candle_core::Var;
        let dev = Device::Cpu;
        let x = Var::from_tensor(&(Tensor::randn(0f32, 1., (3, 5, 40), &dev)? * 3.0)?)?;
        let probe = Tensor::randn(0f32, 1., (3, 5, 40), &dev)?;
        let ours = gelu(x.as_tensor())?;
        let want = x.as_tensor().gelu()?;
        assert!(max_err(&ours, &want)? < 1e-5, "forward");
        let g1 = (&ours * &probe)?.sum_all()?.backward()?;
        let g2 = (&want * &probe)?.sum_all()?.backward()?;
        let (a, b) = (
            g1.get(x.as_tensor()).expect("grad"),
            g2.get(x.as_tensor()).expect("grad"),
        );
        let err = max_err(a, b)?;
        assert!(err < 1e-5, "gradient: max abs error {err}");
        Ok(())
    }

    #[test]
    fn passes_match_the_candle_op_chains() -> Result<()> {
        let dev = Device::Cpu;
        let (b, n, d) = (2, 37, 48);
        let x = (Tensor::randn(0f32, 1., (b, n, d), &dev)? * 3.0)?;
        let y = Tensor::randn(0f32, 1., (b, n, d), &dev)?;
        let shift = Tensor::randn(0f32, 1., (b, 1, d), &dev)?;
        let scale = Tensor::randn(0f32, 0.5, (b, 1, d), &dev)?;
        let eps = 1e-6;
        let (ones, zeros) = (
            Tensor::ones(d, DType::F32, &dev)?,
            Tensor::zeros(d, DType::F32, &dev)?,
        );
        for dtype in [DType::F32, DType::BF16] {
            // bf16 storage: the chains round once at the end too, so the same tolerance holds
            let tol = if dtype == DType::F32 { 1e-5 } else { 0.07 };
            let (xd, yd) = (x.to_dtype(dtype)?, y.to_dtype(dtype)?);
            assert!(applies(&[&xd, &yd]));

            let norm = candle_nn::ops::layer_norm(&xd.to_dtype(DType::F32)?, &ones, &zeros, eps)?;
            let want = norm
                .broadcast_mul(&(&scale + 1.0)?)?
                .broadcast_add(&shift)?
                .to_dtype(dtype)?;
            let got = modulated_layer_norm(&xd, &shift, &scale, eps, dtype)?;
            assert_eq!((got.dims(), got.dtype()), (want.dims(), dtype));
            assert!(
                max_err(&got, &want)? <= tol,
                "norm {dtype:?}: {}",
                max_err(&got, &want)?
            );

            let want = (xd.to_dtype(DType::F32)?
                + yd.to_dtype(DType::F32)?.broadcast_mul(&scale)?)?
            .to_dtype(dtype)?;
            let got = gated_residual(&xd, &yd, &scale)?;
            assert_eq!(got.dtype(), dtype);
            assert!(
                max_err(&got, &want)? <= tol,
                "residual {dtype:?}: {}",
                max_err(&got, &want)?
            );

            let bias = Tensor::randn(0f32, 1., d, &dev)?;
            let weight = (Tensor::randn(0f32, 1., d, &dev)? + 1.0)?;
            let want = candle_nn::ops::layer_norm(&xd.to_dtype(DType::F32)?, &weight, &bias, eps)?;
            let got = layer_norm(&xd, &weight, &bias, eps)?;
            assert_eq!(got.dtype(), DType::F32);
            assert!(
                max_err(&got, &want)? <= 1e-5,
                "layer norm {dtype:?}: {}",
                max_err(&got, &want)?
            );

            let want = candle_nn::ops::rms_norm(&xd.to_dtype(DType::F32)?, &weight, eps)?
                .to_dtype(dtype)?;
            let got = rms_norm(&xd, &weight, eps)?;
            assert_eq!(got.dtype(), dtype);
            assert!(
                max_err(&got, &want)? <= tol,
                "rms norm {dtype:?}: {}",
                max_err(&got, &want)?
            );

            let got = gelu_tanh(&xd)?;
            let want = xd.gelu()?;
            assert_eq!(got.dtype(), dtype);
            assert!(
                max_err(&got, &want)? <= tol,
                "gelu {dtype:?}: {}",
                max_err(&got, &want)?
            );
        }
        Ok(())
    }

    #[test]
    fn bf16_rounding_matches_the_half_crate() {
        let mut bits = 0x1234_5678u32;
        let specials = [
            0.0,
            -0.0,
            1.0,
            f32::MAX,
            f32::MIN_POSITIVE,
            f32::INFINITY,
            1e-40,
        ];
        for i in 0..200_000 {
            bits = bits.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            let x = specials.get(i).copied().unwrap_or(f32::from_bits(bits));
            let (got, want) = (round_bf16(x), bf16::from_f32(x));
            if x.is_nan() {
                assert!(got.is_nan(), "{x:e} ({bits:#x})");
            } else {
                assert_eq!(got.to_bits(), want.to_bits(), "{x:e}");
            }
        }
    }

    #[test]
    fn gelu_is_accurate_over_the_whole_range() {
        let mut row: Vec<f32> = (-4000..=4000).map(|i| i as f32 / 100.0).collect();
        let xs = row.clone();
        gelu_row(&mut row);
        for (x, got) in xs.iter().zip(&row) {
            let x64 = *x as f64;
            let u = (2.0 / std::f64::consts::PI).sqrt() * (x64 + 0.044715 * x64.powi(3));
            let want = 0.5 * x64 * (1.0 + u.tanh());
            assert!(
                ((*got as f64) - want).abs() <= 2e-6 * (1.0 + want.abs()),
                "gelu({x}) = {got}, want {want}"
            );
        }
    }
}
