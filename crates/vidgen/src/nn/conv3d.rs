//! 3D convolution (PyTorch's `nn.Conv3d`) and the causal variant with the frame cache that the
//! Wan VAE uses to process a video chunk by chunk. candle has no conv3d, so it is built here from
//! candle ops and runs on any device.
//!
//! How: activations are kept channels-last, `(T, H, W, C)`, and a conv is im2col + matmul. For a
//! band of output rows the im2col matrix has one row per output pixel and columns ordered
//! `(t, dy, dx, c)` over all input frames, so the `kt` frames one output frame reads are a column
//! window of it: each output frame is one matmul with `K = kt * kh * kw * C` against the weight
//! reshaped to `(kt kh kw C_in, C_out)`, with no copy of the window. Frames that are pure zero
//! padding are skipped (with their rows of the weight) instead of being multiplied. Bands bound
//! the scratch memory. The im2col comes from `im2col.rs`: on the CPU a parallel custom op that
//! reads the unpadded input, elsewhere candle ops only. 2.5-5x faster than per-frame candle
//! `conv2d` calls at Wan VAE sizes; see `examples/vae_decode_bench.rs conv`.
//!
//! On the CPU, 3x3 spatial kernels at spatial stride 1 (nearly all of a VAE's FLOPs) take
//! `winograd.rs` instead: the same frame windows in Winograd's domain, F(4x4, 3x3) (4x fewer
//! multiply-adds) or F(2x2, 3x3) (2.25x) for small frames; 1.6-3.2x faster than im2col at Wan VAE
//! sizes. `VIDGEN_CONV=im2col` switches it off for before/after measurements.

use candle_core::{CpuStorage, DType, Device, IndexOp, InplaceOp1, Layout, Module, Result, Tensor};
use candle_nn::VarBuilder;
use rayon::prelude::*;

mod im2col;
mod train;
mod winograd;
use im2col::{CpuIm2col, Generic, Geometry};

/// Frames of its input a causal conv keeps for the next chunk (the `CACHE_T` of the reference).
pub const CACHE_T: usize = 2;

/// Most im2col elements built at once (per band of output rows); bounds the conv's scratch memory.
const IM2COL_BUDGET: usize = 1 << 22;

/// Largest column matrix (bytes) a GPU builds for one whole-batch im2col; bigger convolutions
/// take the band-wise path.
const DEVICE_IM2COL_BYTES: usize = 2 << 30;

/// Zero padding `(before, after)` on each convolved axis.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Padding3d {
    /// Frames of zeros before and after the input.
    pub t: (usize, usize),
    /// Rows of zeros above and below.
    pub h: (usize, usize),
    /// Columns of zeros left and right.
    pub w: (usize, usize),
}

impl Padding3d {
    /// The same padding on both sides of each axis, as PyTorch's `padding=(pt, ph, pw)`.
    pub fn symmetric((pt, ph, pw): (usize, usize, usize)) -> Self {
        Self {
            t: (pt, pt),
            h: (ph, ph),
            w: (pw, pw),
        }
    }
}

/// A 3D convolution with PyTorch's `nn.Conv3d` weights and semantics (no dilation, no groups).
#[derive(Clone, Debug)]
pub struct Conv3d {
    /// `(C_out,)`.
    bias: Option<Tensor>,
    /// `(kt * kh * kw * C_in, C_out)`, rows ordered `(dt, dy, dx, c_in)` like the im2col columns.
    w_mat: Tensor,
    kernel: (usize, usize, usize),
    stride: (usize, usize, usize),
    padding: (usize, usize, usize),
}

impl Conv3d {
    /// Wraps a `(C_out, C_in, kt, kh, kw)` weight and optional `(C_out,)` bias.
    pub fn new(
        weight: Tensor,
        bias: Option<Tensor>,
        stride: (usize, usize, usize),
        padding: (usize, usize, usize),
    ) -> Result<Self> {
        let (c_out, c_in, kt, kh, kw) = weight.dims5()?;
        if stride.0 == 0 || stride.1 == 0 || stride.2 == 0 {
            candle_core::bail!("conv3d stride must be positive, got {stride:?}")
        }
        if let Some(b) = &bias {
            if b.dims() != [c_out] {
                candle_core::bail!("conv3d bias must be ({c_out},), got {:?}", b.shape())
            }
        }
        // (C_out, C_in, kt, kh, kw) -> (kt, kh, kw, C_in, C_out) -> (kt kh kw C_in, C_out)
        let w_mat = weight
            .permute((2, 3, 4, 1, 0))?
            .contiguous()?
            .reshape((kt * kh * kw * c_in, c_out))?;
        Ok(Self {
            bias,
            w_mat,
            kernel: (kt, kh, kw),
            stride,
            padding,
        })
    }

    /// Loads `weight` and `bias` from `vb`, checking their shapes.
    pub fn load(
        vb: VarBuilder,
        c_in: usize,
        c_out: usize,
        kernel: (usize, usize, usize),
        stride: (usize, usize, usize),
        padding: (usize, usize, usize),
    ) -> Result<Self> {
        let weight = vb.get((c_out, c_in, kernel.0, kernel.1, kernel.2), "weight")?;
        let bias = vb.get(c_out, "bias")?;
        Self::new(weight, Some(bias), stride, padding)
    }

    /// Loads a 2D conv (`(C_out, C_in, kh, kw)` weight) as a conv3d with `kt = 1`.
    pub fn load_2d(
        vb: VarBuilder,
        c_in: usize,
        c_out: usize,
        kernel: usize,
        stride: usize,
        padding: usize,
    ) -> Result<Self> {
        let weight = vb.get((c_out, c_in, kernel, kernel), "weight")?;
        let bias = vb.get(c_out, "bias")?;
        Self::new(
            weight.unsqueeze(2)?,
            Some(bias),
            (1, stride, stride),
            (0, padding, padding),
        )
    }

    /// The `(C_out, C_in, kt, kh, kw)` weight (rebuilt from the matmul layout, which is all the
    /// conv keeps).
    pub fn weight(&self) -> Result<Tensor> {
        let (kt, kh, kw) = self.kernel;
        let (k, c_out) = self.w_mat.dims2()?;
        // (kt kh kw C_in, C_out) -> (C_out, C_in, kt, kh, kw)
        self.w_mat
            .reshape((kt, kh, kw, k / (kt * kh * kw), c_out))?
            .permute((4, 3, 0, 1, 2))?
            .contiguous()
    }

    /// The `(C_out,)` bias.
    pub fn bias(&self) -> Option<&Tensor> {
        self.bias.as_ref()
    }

    /// `(kt, kh, kw)`.
    pub fn kernel(&self) -> (usize, usize, usize) {
        self.kernel
    }

    /// The PyTorch-layout forward: `(B, C_in, T, H, W)` -> `(B, C_out, T', H', W')`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        // b c t h w -> b t h w c
        let x_cl = x.permute((0, 2, 3, 4, 1))?.contiguous()?;
        let y = self.forward_cl(&x_cl)?;
        // b t h w c -> b c t h w
        y.permute((0, 4, 1, 2, 3))?.contiguous()
    }

    /// Channels-last forward with the layer's own padding: `(B, T, H, W, C_in)` ->
    /// `(B, T', H', W', C_out)`.
    pub fn forward_cl(&self, x: &Tensor) -> Result<Tensor> {
        self.forward_cl_padded(&[x], Padding3d::symmetric(self.padding))
    }

    /// Channels-last forward over the time-concatenation of `parts` (each `(B, T_i, H, W, C_in)`)
    /// with explicit zero padding `pad` (the layer's own padding is ignored).
    ///
    /// Returns `(B, T', H', W', C_out)`.
    pub fn forward_cl_padded(&self, parts: &[&Tensor], pad: Padding3d) -> Result<Tensor> {
        self.forward_parts(parts, pad, false)
    }

    /// [`Self::forward_cl_padded`], optionally forcing the band-wise device-agnostic im2col (on
    /// the CPU, and in training instead of the whole-batch one of `train`).
    fn forward_parts(&self, parts: &[&Tensor], pad: Padding3d, generic: bool) -> Result<Tensor> {
        let (kt, kh, kw) = self.kernel;
        let c_in = self.w_mat.dim(0)? / (kt * kh * kw);
        let Some(first) = parts.first() else {
            candle_core::bail!("conv3d needs at least one input part")
        };
        let (b, _, h, w, _) = first.dims5()?;
        for p in parts {
            let (pb, _, ph, pw, pc) = p.dims5()?;
            if (pb, ph, pw, pc) != (b, h, w, c_in) {
                candle_core::bail!(
                    "conv3d expected input (B, T, H, W, C) = ({b}, _, {h}, {w}, {c_in}), got {:?}",
                    p.shape()
                )
            }
        }
        let training = self.w_mat.track_op() || parts.iter().any(|p| p.track_op());
        if training && !generic {
            return train::conv3d_train(self, parts, pad);
        }
        // On a GPU one whole-batch im2col and matmul (a few dozen kernels) is far faster than
        // the band-wise path's matmul per batch element, band and output frame (thousands of
        // small launches), when its column matrix fits.
        if !first.device().is_cpu()
            && !generic
            && self.cols_bytes(parts, pad)? <= DEVICE_IM2COL_BYTES
        {
            return train::conv3d_train(self, parts, pad);
        }
        let outs = (0..b)
            .map(|i| {
                let frames = parts.iter().map(|p| p.i(i)).collect::<Result<Vec<_>>>()?;
                let frames: Vec<&Tensor> = frames.iter().collect();
                self.conv_one(&frames, pad, generic)
            })
            .collect::<Result<Vec<_>>>()?;
        Tensor::stack(&outs, 0)
    }

    /// Bytes of the whole-batch im2col matrix `(B T' H' W', kt kh kw C_in)` of `parts` padded
    /// by `pad` (0 when the padded input is smaller than the kernel: the conv then fails).
    fn cols_bytes(&self, parts: &[&Tensor], pad: Padding3d) -> Result<usize> {
        let ((kt, kh, kw), (st, sh, sw)) = (self.kernel, self.stride);
        let (b, _, h, w, c) = parts[0].dims5()?;
        let t: usize = parts.iter().map(|p| p.dim(1)).sum::<Result<usize>>()?;
        let out = |n: usize, k: usize, s: usize| n.checked_sub(k).map_or(0, |d| d / s + 1);
        let rows = b
            * out(t + pad.t.0 + pad.t.1, kt, st)
            * out(h + pad.h.0 + pad.h.1, kh, sh)
            * out(w + pad.w.0 + pad.w.1, kw, sw);
        Ok(rows * kt * kh * kw * c * self.w_mat.dtype().size_in_bytes())
    }

    /// One batch element: `parts` each `(T_i, H, W, C_in)` -> `(T', H', W', C_out)`. On the CPU
    /// the im2col is the parallel custom op unless `generic` asks for the candle-ops one.
    fn conv_one(&self, parts: &[&Tensor], pad: Padding3d, generic: bool) -> Result<Tensor> {
        let (kt, kh, kw) = self.kernel;
        let (st, sh, sw) = self.stride;
        let (_, h, w, c) = parts[0].dims4()?;
        let c_out = self.w_mat.dim(1)?;
        let t_in: usize = parts.iter().map(|p| p.dim(0)).sum::<Result<usize>>()?;
        let (hp, wp) = (h + pad.h.0 + pad.h.1, w + pad.w.0 + pad.w.1);
        let t_total = t_in + pad.t.0 + pad.t.1;
        if t_total < kt || hp < kh || wp < kw {
            candle_core::bail!(
                "conv3d input ({t_total}, {hp}, {wp}) after padding is smaller than the kernel {:?}",
                self.kernel
            )
        }
        let t_out = (t_total - kt) / st + 1;
        let (h_out, w_out) = ((hp - kh) / sh + 1, (wp - kw) / sw + 1);
        let geo = Geometry {
            kernel: (kh, kw),
            stride: (sh, sw),
            pad_top: pad.h.0,
            pad_left: pad.w.0,
            w_out,
        };
        let on_cpu = self.w_mat.device().is_cpu();
        // the CPU im2col op has no backward pass: a graph being trained takes the candle ops
        let training = self.w_mat.track_op() || parts.iter().any(|p| p.track_op());
        // Winograd takes any number of parts (the replicate-padded first chunks of CogVideoX and
        // LTX-Video come as three or more); the CPU im2col op one or two
        let empty = h * w * c * c_out == 0;
        if on_cpu && !generic && !training && !empty && self.winograd_applies(parts) {
            let shapes = winograd::Shapes {
                t_in,
                h,
                w,
                c,
                c_out,
                kt,
                st,
                pad,
            };
            return self.conv_winograd(parts, shapes);
        }
        let cpu_op = on_cpu && !generic && !training && parts.len() <= 2;
        let candle_ops = if cpu_op {
            None
        } else {
            Some(Generic::new(parts, geo, pad, h_out)?)
        };
        let grid_w = candle_ops.as_ref().map_or(w_out, |g| g.grid_w);

        // Bands of output rows, each with one im2col matrix (rows grid_w, T_in kh kw C) and one
        // matmul per output frame over the column window of the frames it reads.
        let tap_k = kh * kw * c;
        let band_rows = (IM2COL_BUDGET / (grid_w * t_in * tap_k).max(1)).clamp(1, h_out);
        let mut band_outs: Vec<Vec<Tensor>> = vec![Vec::new(); t_out];
        for y0 in (0..h_out).step_by(band_rows) {
            let rows = band_rows.min(h_out - y0);
            let cols = match &candle_ops {
                None => CpuIm2col { geo, y0, rows }.apply(parts)?,
                Some(g) => g.band(y0, rows)?,
            };
            for (to, outs) in band_outs.iter_mut().enumerate() {
                // input frames of this output in padded time, clipped to the real frames
                let first = to * st;
                let lo = first.max(pad.t.0);
                let hi = (first + kt).min(pad.t.0 + t_in);
                if lo >= hi {
                    continue;
                }
                let mut lhs = cols.narrow(1, (lo - pad.t.0) * tap_k, (hi - lo) * tap_k)?;
                if !on_cpu {
                    lhs = lhs.contiguous()?; // cuBLAS / MPS want dense operands
                }
                let rhs = self
                    .w_mat
                    .narrow(0, (lo - first) * tap_k, (hi - lo) * tap_k)?;
                let y = lhs.matmul(&rhs)?; // (rows grid_w, C_out)
                                           // (rows grid_w) c -> rows grid_w c, keep the w_out valid columns
                outs.push(y.reshape((rows, grid_w, c_out))?.narrow(1, 0, w_out)?);
            }
        }
        let mut pieces: Vec<Tensor> = Vec::new();
        for outs in band_outs {
            if outs.is_empty() {
                // every frame this output reads is padding
                let (dt, dev) = (self.w_mat.dtype(), self.w_mat.device());
                pieces.push(Tensor::zeros((h_out, w_out, c_out), dt, dev)?);
            } else {
                pieces.extend(outs);
            }
        }
        // (t_out h_out) w_out c_out -> t_out h_out w_out c_out
        let y = Tensor::cat(&pieces, 0)?.reshape((t_out, h_out, w_out, c_out))?;
        drop(pieces);
        // once over the whole output: per band, the many small adds cost more in thread syncs;
        // in place on the CPU, as `y` is fresh
        match &self.bias {
            Some(bias) if cpu_op => {
                y.inplace_op1(&AddBias(bias.to_dtype(DType::F32)?.to_vec1::<f32>()?))?;
                Ok(y)
            }
            Some(bias) => y.broadcast_add(bias),
            None => Ok(y),
        }
    }
}

impl Conv3d {
    /// Whether [`winograd`] computes this conv: a 3x3 spatial kernel at spatial stride 1, a float
    /// dtype shared by input and weight, not switched off with `VIDGEN_CONV=im2col` (for
    /// before/after benchmarks in one run).
    fn winograd_applies(&self, parts: &[&Tensor]) -> bool {
        static OFF: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
        let off = *OFF.get_or_init(|| std::env::var("VIDGEN_CONV").is_ok_and(|v| v == "im2col"));
        let (_, kh, kw) = self.kernel;
        let (_, sh, sw) = self.stride;
        let dtype = self.w_mat.dtype();
        !off && (kh, kw, sh, sw) == (3, 3, 1, 1)
            && matches!(dtype, DType::F32 | DType::BF16 | DType::F16)
            && parts.iter().all(|p| p.dtype() == dtype)
    }

    /// One batch element on the CPU through [`winograd::conv`]: `parts` each `(T_i, H, W, C_in)`
    /// -> `(T', H', W', C_out)`. A bf16 / f16 conv computes in f32 (an f32 island: candle's
    /// half-precision CPU matmul widens to f32 anyway, and the transforms' sums keep their bits)
    /// and rounds its output once.
    fn conv_winograd(&self, parts: &[&Tensor], shapes: winograd::Shapes) -> Result<Tensor> {
        let dtype = self.w_mat.dtype();
        let parts = parts
            .iter()
            .map(|p| p.to_dtype(DType::F32)?.contiguous())
            .collect::<Result<Vec<_>>>()?;
        let w_mat = self.w_mat.to_dtype(DType::F32)?.contiguous()?;
        let bias = match &self.bias {
            Some(b) => Some(b.to_dtype(DType::F32)?.to_vec1::<f32>()?),
            None => None,
        };
        let guards: Vec<_> = parts.iter().map(|p| p.storage_and_layout()).collect();
        let (w_guard, w_layout) = w_mat.storage_and_layout();
        let frame_len = shapes.h * shapes.w * shapes.c;
        let mut frames = Vec::with_capacity(shapes.t_in);
        for ((g, l), p) in guards.iter().zip(&parts) {
            let data = super::cpu_slice::<f32>(g, l, p.elem_count())?;
            frames.extend(data.chunks_exact(frame_len));
        }
        let w = super::cpu_slice::<f32>(&w_guard, w_layout, w_mat.elem_count())?;
        let y = winograd::conv(&frames, w, bias.as_deref(), shapes);
        let (t_out, h_out, w_out) = shapes.output();
        Tensor::from_vec(y, (t_out, h_out, w_out, shapes.c_out), w_mat.device())?.to_dtype(dtype)
    }
}

/// Adds a per-channel bias to a contiguous channels-last CPU tensor in place.
struct AddBias(Vec<f32>);

impl InplaceOp1 for AddBias {
    fn name(&self) -> &'static str {
        "add-bias-inplace"
    }

    fn cpu_fwd(&self, s: &mut CpuStorage, l: &Layout) -> Result<()> {
        let (start, n, c) = (l.start_offset(), l.shape().elem_count(), self.0.len());
        if !l.is_contiguous() || c == 0 || n % c != 0 {
            candle_core::bail!("add-bias-inplace needs a contiguous (..., {c}) tensor")
        }
        // whole pixels per work unit
        let unit = c * (16384 / c).max(1);
        macro_rules! add {
            ($v:expr, $from:expr, $to:expr) => {
                $v[start..start + n].par_chunks_mut(unit).for_each(|px| {
                    for p in px.chunks_exact_mut(c) {
                        for (x, b) in p.iter_mut().zip(&self.0) {
                            *x = $to($from(*x) + b);
                        }
                    }
                })
            };
        }
        match s {
            CpuStorage::F32(v) => add!(v, |x: f32| x, |x: f32| x),
            CpuStorage::BF16(v) => add!(v, half::bf16::to_f32, half::bf16::from_f32),
            CpuStorage::F16(v) => add!(v, half::f16::to_f32, half::f16::from_f32),
            _ => candle_core::bail!("add-bias-inplace: unsupported dtype"),
        }
        Ok(())
    }
}

/// The Wan VAE's causal conv: zeros (or cached frames) only *before* the input in time, symmetric
/// zero padding in space. Without a cache it equals `Conv3d` on the input with `2 * pt` zero
/// frames prepended; with the previous chunk's last frames as cache, chunked processing equals
/// processing the whole video at once.
#[derive(Clone, Debug)]
pub struct CausalConv3d {
    conv: Conv3d,
}

impl CausalConv3d {
    /// Wraps a conv whose `padding` is PyTorch's `padding=(pt, ph, pw)` argument.
    pub fn new(conv: Conv3d) -> Self {
        Self { conv }
    }

    /// Loads `weight` `(C_out, C_in, kt, kh, kw)` and `bias` from `vb`.
    pub fn load(
        vb: VarBuilder,
        c_in: usize,
        c_out: usize,
        kernel: (usize, usize, usize),
        stride: (usize, usize, usize),
        padding: (usize, usize, usize),
    ) -> Result<Self> {
        Conv3d::load(vb, c_in, c_out, kernel, stride, padding).map(Self::new)
    }

    /// The wrapped conv.
    pub fn conv(&self) -> &Conv3d {
        &self.conv
    }

    /// Channels-last forward: `x` `(B, T, H, W, C_in)`, `cache` `(B, T_c, H, W, C_in)` frames
    /// that precede `x` (used only when the conv pads time, as in the reference).
    ///
    /// Returns `(B, T', H', W', C_out)`.
    pub fn forward_cl(&self, x: &Tensor, cache: Option<&Tensor>) -> Result<Tensor> {
        let (pt, ph, pw) = self.conv.padding;
        let mut front = 2 * pt;
        let mut parts = vec![x];
        if let Some(cache) = cache.filter(|_| pt > 0) {
            let tc = cache.dim(1)?;
            front = front.saturating_sub(tc);
            parts.insert(0, cache);
        }
        let pad = Padding3d {
            t: (front, 0),
            h: (ph, ph),
            w: (pw, pw),
        };
        self.conv.forward_cl_padded(&parts, pad)
    }

    /// PyTorch-layout forward: `x` `(B, C_in, T, H, W)`, `cache` `(B, C_in, T_c, H, W)`.
    ///
    /// Returns `(B, C_out, T', H', W')`.
    pub fn forward(&self, x: &Tensor, cache: Option<&Tensor>) -> Result<Tensor> {
        let to_cl = |t: &Tensor| t.permute((0, 2, 3, 4, 1))?.contiguous();
        let cache = cache.map(to_cl).transpose()?;
        let y = self.forward_cl(&to_cl(x)?, cache.as_ref())?;
        y.permute((0, 4, 1, 2, 3))?.contiguous()
    }
}

/// The frames a causal conv keeps after seeing chunk `x` `(B, T, H, W, C)`: the last
/// [`CACHE_T`] frames of everything seen so far (with one-frame chunks, the previous cache's
/// last frame comes first). Copied, so the chunk can be freed.
pub fn next_cache(x: &Tensor, prev: Option<&Tensor>) -> Result<Tensor> {
    let t = x.dim(1)?;
    let tail = x.narrow(1, t.saturating_sub(CACHE_T), t.min(CACHE_T))?;
    match prev {
        Some(prev) if t < CACHE_T => {
            let tp = prev.dim(1)?;
            Tensor::cat(&[&prev.narrow(1, tp - 1, 1)?, &tail], 1)
        }
        _ => tail.force_contiguous(),
    }
}

impl Module for Conv3d {
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        Conv3d::forward(self, x)
    }
}

/// A direct, loop-based conv3d on `(B, C_in, T, H, W)` for tests: obviously right, slow.
pub fn conv3d_naive(
    x: &Tensor,
    weight: &Tensor,
    bias: Option<&Tensor>,
    stride: (usize, usize, usize),
    pad: Padding3d,
) -> Result<Tensor> {
    let (b, c_in, t, h, w) = x.dims5()?;
    let (c_out, _, kt, kh, kw) = weight.dims5()?;
    let xs = x.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
    let ws = weight
        .to_dtype(DType::F32)?
        .flatten_all()?
        .to_vec1::<f32>()?;
    let bs = match bias {
        Some(b) => b.to_dtype(DType::F32)?.to_vec1::<f32>()?,
        None => vec![0.0; c_out],
    };
    let (tp, hp, wp) = (
        t + pad.t.0 + pad.t.1,
        h + pad.h.0 + pad.h.1,
        w + pad.w.0 + pad.w.1,
    );
    let (to, ho, wo) = (
        (tp - kt) / stride.0 + 1,
        (hp - kh) / stride.1 + 1,
        (wp - kw) / stride.2 + 1,
    );
    let at = |bi: usize, ci: usize, ti: isize, yi: isize, xi: isize| -> f32 {
        if ti < 0 || yi < 0 || xi < 0 || ti >= t as isize || yi >= h as isize || xi >= w as isize {
            return 0.0;
        }
        xs[(((bi * c_in + ci) * t + ti as usize) * h + yi as usize) * w + xi as usize]
    };
    let mut out = vec![0f32; b * c_out * to * ho * wo];
    for bi in 0..b {
        for co in 0..c_out {
            for ot in 0..to {
                for oy in 0..ho {
                    for ox in 0..wo {
                        let mut acc = bs[co] as f64;
                        for ci in 0..c_in {
                            for dt in 0..kt {
                                for dy in 0..kh {
                                    for dx in 0..kw {
                                        let ti = (ot * stride.0 + dt) as isize - pad.t.0 as isize;
                                        let yi = (oy * stride.1 + dy) as isize - pad.h.0 as isize;
                                        let xi = (ox * stride.2 + dx) as isize - pad.w.0 as isize;
                                        let wv =
                                            ws[(((co * c_in + ci) * kt + dt) * kh + dy) * kw + dx];
                                        acc += (wv * at(bi, ci, ti, yi, xi)) as f64;
                                    }
                                }
                            }
                        }
                        out[(((bi * c_out + co) * to + ot) * ho + oy) * wo + ox] = acc as f32;
                    }
                }
            }
        }
    }
    Tensor::from_vec(out, (b, c_out, to, ho, wo), &Device::Cpu)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::D;

    fn rand(shape: &[usize], seed: u64) -> Result<Tensor> {
        // a small LCG keeps the test independent of candle's RNG
        let n: usize = shape.iter().product();
        let mut s = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let v: Vec<f32> = (0..n)
            .map(|_| {
                s = s
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((s >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
            })
            .collect();
        Tensor::from_vec(v, shape, &Device::Cpu)
    }

    fn max_diff(a: &Tensor, b: &Tensor) -> Result<f32> {
        assert_eq!(a.dims(), b.dims());
        (a - b)?
            .abs()?
            .flatten_all()?
            .max(D::Minus1)?
            .to_scalar::<f32>()
    }

    #[test]
    fn conv3d_matches_naive_loop() -> Result<()> {
        let cases = [
            // (C_in, C_out, kernel, stride, padding, (T, H, W))
            (3, 5, (3, 3, 3), (1, 1, 1), (1, 1, 1), (4, 6, 7)),
            (4, 2, (3, 3, 3), (1, 1, 1), (0, 0, 0), (3, 5, 5)),
            (2, 3, (1, 1, 1), (1, 1, 1), (0, 0, 0), (2, 3, 4)),
            (3, 4, (3, 1, 1), (2, 1, 1), (0, 0, 0), (5, 3, 3)),
            (3, 4, (1, 3, 3), (1, 2, 2), (0, 1, 1), (2, 7, 6)),
            (2, 3, (2, 3, 2), (1, 2, 3), (1, 0, 2), (3, 8, 9)),
            // frames smaller than the kernel's reach: every tap band is mostly padding
            (3, 2, (3, 3, 3), (1, 1, 1), (1, 1, 1), (2, 1, 1)),
            (2, 2, (3, 3, 3), (1, 1, 1), (1, 1, 1), (3, 2, 1)),
            (2, 2, (1, 3, 3), (1, 1, 1), (0, 2, 1), (1, 1, 3)),
        ];
        for (i, (c_in, c_out, k, s, p, (t, h, w))) in cases.into_iter().enumerate() {
            let x = rand(&[2, c_in, t, h, w], i as u64)?;
            let wt = rand(&[c_out, c_in, k.0, k.1, k.2], 100 + i as u64)?;
            let b = rand(&[c_out], 200 + i as u64)?;
            let conv = Conv3d::new(wt.clone(), Some(b.clone()), s, p)?;
            let want = conv3d_naive(&x, &wt, Some(&b), s, Padding3d::symmetric(p))?;
            let x_cl = x.permute((0, 2, 3, 4, 1))?.contiguous()?;
            for generic in [false, true] {
                let got = conv.forward_parts(&[&x_cl], Padding3d::symmetric(p), generic)?;
                let got = got.permute((0, 4, 1, 2, 3))?;
                let d = max_diff(&got, &want)?;
                assert!(
                    d <= 1e-5,
                    "case {i}, generic im2col {generic}: max abs diff {d}"
                );
            }
        }
        Ok(())
    }

    #[test]
    fn winograd_matches_naive_loop() -> Result<()> {
        let cases = [
            // (C_in, C_out, kt, st, padding (t, h, w), (T, H, W)): channels off the 16-lane
            // blocks, odd sizes (a half tile at the edges), temporal stride, wider padding
            (20, 35, 3, 1, (1, 1, 1), (3, 7, 9)),
            (17, 3, 1, 1, (0, 1, 1), (2, 5, 4)),
            (5, 18, 3, 2, (1, 0, 0), (5, 6, 3)),
            (16, 16, 2, 1, (0, 2, 1), (3, 3, 8)),
            (3, 33, 3, 1, (2, 1, 1), (1, 1, 1)),
            // enough output pixels for F(4x4, 3x3), partial tiles at both edges
            (5, 7, 3, 1, (1, 1, 1), (2, 50, 53)),
            (17, 20, 1, 1, (0, 0, 1), (1, 61, 50)),
        ];
        for (i, (c_in, c_out, kt, st, p, (t, h, w))) in cases.into_iter().enumerate() {
            let x = rand(&[1, c_in, t, h, w], 300 + i as u64)?;
            let wt = rand(&[c_out, c_in, kt, 3, 3], 400 + i as u64)?;
            let b = rand(&[c_out], 500 + i as u64)?;
            let conv = Conv3d::new(wt.clone(), Some(b.clone()), (st, 1, 1), p)?;
            assert!(conv.winograd_applies(&[&x]));
            let want = conv3d_naive(&x, &wt, Some(&b), (st, 1, 1), Padding3d::symmetric(p))?;
            let got = conv.forward(&x)?;
            let d = max_diff(&got, &want)?;
            // F(4x4)'s constants cost ~2 digits: relative to the outputs' scale
            let scale = want.abs()?.max_all()?.to_scalar::<f32>()?;
            println!("case {i}: max abs diff {d:e}, outputs up to {scale}");
            assert!(d <= 1e-5 * scale.max(1.0), "case {i}: max abs diff {d}");
            // bf16: computed in f32 from the bf16 values, so off by the output's rounding only
            let round = |t: &Tensor| t.to_dtype(DType::BF16);
            let conv = Conv3d::new(round(&wt)?, Some(round(&b)?), (st, 1, 1), p)?;
            let got = conv.forward(&round(&x)?)?;
            assert_eq!(got.dtype(), DType::BF16);
            let up = |t: &Tensor| round(t)?.to_dtype(DType::F32);
            let want = conv3d_naive(
                &up(&x)?,
                &up(&wt)?,
                Some(&up(&b)?),
                (st, 1, 1),
                Padding3d::symmetric(p),
            )?;
            let scale = want.abs()?.max_all()?.to_scalar::<f32>()?;
            let d = max_diff(&got.to_dtype(DType::F32)?, &want)?;
            assert!(
                d <= scale / 128.0,
                "case {i}, bf16: max abs diff {d} (outputs up to {scale})"
            );
        }
        Ok(())
    }

    #[test]
    fn winograd_bands_and_caches_do_not_change_the_result() -> Result<()> {
        // tall enough for several bands of F(4x4) tile rows (4 input frames, 36 positions each);
        // two parts (cache, chunk) as the VAE feeds them
        let (c, c_out, h, w): (usize, usize, usize, usize) = (24, 20, 720, 61);
        assert!(w.div_ceil(4) * h.div_ceil(4) * 36 * 4 * c > winograd::SCRATCH_BUDGET);
        let x = rand(&[1, 4, h, w, c], 31)?; // (B, T, H, W, C)
        let wt = rand(&[c_out, c, 3, 3, 3], 32)?;
        let conv = Conv3d::new(wt, Some(rand(&[c_out], 33)?), (1, 1, 1), (1, 1, 1))?;
        let (cache, chunk) = (x.narrow(1, 0, 2)?, x.narrow(1, 2, 2)?);
        let pad = Padding3d {
            t: (0, 0),
            h: (1, 1),
            w: (1, 1),
        };
        let fast = conv.forward_parts(&[&cache, &chunk], pad, false)?;
        let generic = conv.forward_parts(&[&x], pad, true)?;
        assert_eq!(fast.dims(), &[1, 2, h, w, c_out]);
        let d = max_diff(&fast, &generic)?;
        let scale = generic.abs()?.max_all()?.to_scalar::<f32>()?;
        assert!(d <= 1e-5 * scale, "max abs diff {d}, outputs up to {scale}");
        Ok(())
    }

    #[test]
    fn winograd_takes_replicated_first_frames_as_parts() -> Result<()> {
        // CogVideoX / LTX-Video pad a first chunk with copies of its first frame: three parts
        let x = rand(&[1, 3, 9, 10, 6], 41)?; // (B, T, H, W, C)
        let first = x.narrow(1, 0, 1)?;
        let conv = Conv3d::new(rand(&[5, 6, 3, 3, 3], 42)?, None, (1, 1, 1), (0, 1, 1))?;
        let pad = Padding3d::symmetric((0, 1, 1));
        let parts = [&first, &first, &x];
        let fast = conv.forward_parts(&parts, pad, false)?;
        let generic = conv.forward_parts(&parts, pad, true)?;
        assert_eq!(fast.dims(), &[1, 3, 9, 10, 5]);
        assert!(max_diff(&fast, &generic)? <= 1e-5);
        Ok(())
    }

    #[test]
    fn whole_batch_column_bytes_follow_the_output_grid() -> Result<()> {
        let dev = Device::Cpu;
        let w = Tensor::zeros((5, 3, 3, 3, 3), DType::F32, &dev)?;
        let conv = Conv3d::new(w, None, (1, 2, 2), (0, 1, 1))?;
        let x = Tensor::zeros((2, 4, 6, 7, 3), DType::F32, &dev)?;
        let pad = Padding3d {
            t: (2, 0),
            h: (1, 1),
            w: (1, 1),
        };
        // T' = 4, H' = 3, W' = 4 (stride 2 over 8 and 9): rows 2·4·3·4, columns 27·3, f32
        assert_eq!(conv.cols_bytes(&[&x], pad)?, 2 * 4 * 3 * 4 * 81 * 4);
        let tiny = Padding3d::default();
        let short = Tensor::zeros((1, 2, 6, 7, 3), DType::F32, &dev)?;
        assert_eq!(conv.cols_bytes(&[&short], tiny)?, 0);
        Ok(())
    }

    #[test]
    fn im2col_bands_do_not_change_the_result() -> Result<()> {
        // a frame big enough to need several bands of output rows
        let (c, t, h, w) = (32, 3, 96, 120);
        assert!(t * 9 * c * (w + 2) * h > IM2COL_BUDGET);
        let x = rand(&[1, c, t, h, w], 7)?;
        let wt = rand(&[4, c, 3, 3, 3], 8)?;
        let conv = Conv3d::new(wt.clone(), None, (1, 1, 1), (1, 1, 1))?;
        let want = conv3d_naive(&x, &wt, None, (1, 1, 1), Padding3d::symmetric((1, 1, 1)))?;
        let x_cl = x.permute((0, 2, 3, 4, 1))?.contiguous()?;
        // the CPU path of a frame this size is Winograd's F(4x4): relative to the outputs' scale
        let scale = want.abs()?.max_all()?.to_scalar::<f32>()?;
        for generic in [false, true] {
            let got = conv.forward_parts(&[&x_cl], Padding3d::symmetric((1, 1, 1)), generic)?;
            let d = max_diff(&got.permute((0, 4, 1, 2, 3))?, &want)?;
            assert!(d <= 1e-5 * scale, "generic {generic}: max abs diff {d}");
        }
        Ok(())
    }

    #[test]
    fn causal_conv_pads_only_the_past() -> Result<()> {
        let x = rand(&[1, 3, 4, 5, 6], 11)?;
        let wt = rand(&[2, 3, 3, 3, 3], 12)?;
        let b = rand(&[2], 13)?;
        let conv = CausalConv3d::new(Conv3d::new(
            wt.clone(),
            Some(b.clone()),
            (1, 1, 1),
            (1, 1, 1),
        )?);
        let got = conv.forward(&x, None)?;
        let pad = Padding3d {
            t: (2, 0),
            h: (1, 1),
            w: (1, 1),
        };
        let want = conv3d_naive(&x, &wt, Some(&b), (1, 1, 1), pad)?;
        assert_eq!(got.dims(), &[1, 2, 4, 5, 6]);
        assert!(max_diff(&got, &want)? <= 1e-5);
        Ok(())
    }

    #[test]
    fn chunked_with_cache_equals_whole_video() -> Result<()> {
        // chunks of 1, 4, 1, 1, 2 frames, as the VAE feeds them
        let x = rand(&[2, 9, 3, 4, 4], 21)?; // (B, T, H, W, C) channels-last
        let wt = rand(&[5, 4, 3, 3, 3], 22)?;
        let conv = CausalConv3d::new(Conv3d::new(wt, None, (1, 1, 1), (1, 1, 1))?);
        let whole = conv.forward_cl(&x, None)?;
        let mut cache: Option<Tensor> = None;
        let mut outs = Vec::new();
        let mut t0 = 0;
        for n in [1, 4, 1, 1, 2] {
            let chunk = x.narrow(1, t0, n)?;
            outs.push(conv.forward_cl(&chunk, cache.as_ref())?);
            cache = Some(next_cache(&chunk, cache.as_ref())?);
            t0 += n;
        }
        let chunked = Tensor::cat(&outs, 1)?;
        assert!(max_diff(&chunked, &whole)? <= 1e-5);
        // the candle-ops im2col takes the same two parts (cache, chunk)
        let (cache, chunk) = (x.narrow(1, 3, 2)?, x.narrow(1, 5, 4)?);
        let pad = Padding3d {
            t: (0, 0),
            h: (1, 1),
            w: (1, 1),
        };
        let fast = conv.conv().forward_parts(&[&cache, &chunk], pad, false)?;
        let generic = conv.conv().forward_parts(&[&cache, &chunk], pad, true)?;
        assert!(max_diff(&fast, &whole.narrow(1, 5, 4)?)? <= 1e-5);
        assert!(max_diff(&generic, &fast)? <= 1e-5);
        Ok(())
    }

    #[test]
    fn bad_input_channels_are_an_error() -> Result<()> {
        let conv = Conv3d::new(rand(&[2, 3, 1, 1, 1], 1)?, None, (1, 1, 1), (0, 0, 0))?;
        let err = conv
            .forward(&rand(&[1, 4, 1, 2, 2], 2)?)
            .unwrap_err()
            .to_string();
        assert!(err.contains("(B, T, H, W, C)"), "{err}");
        Ok(())
    }
}
