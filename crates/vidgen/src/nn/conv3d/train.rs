//! The conv3d of training (and of inference on GPUs): the forward as im2col + matmul over the
//! padded input, with a backward pass. The inference path's band-wise im2col has none, and
//! backpropagating through it (per batch element and band, hundreds of `narrow`s, each of whose
//! gradients is a zero-padded copy of the whole input) costs ~10x the forward. On the CPU (f32)
//! the im2col is a custom op whose backward is one col2im scatter; elsewhere (CUDA, Metal, other
//! dtypes) it is built from candle ops over the whole batch at once: one strided view per kernel
//! tap, so a few dozen ops per convolution instead of thousands.

use candle_core::{CpuStorage, CustomOp1, DType, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

use super::{Conv3d, Padding3d};

/// `(B, T, H, W, C)` (already padded) -> im2col `(B T' H' W', kt kh kw C)`.
struct Im2col3d {
    kernel: (usize, usize, usize),
    stride: (usize, usize, usize),
}

impl Im2col3d {
    fn out_dims(&self, (t, h, w): (usize, usize, usize)) -> (usize, usize, usize) {
        let ((kt, kh, kw), (st, sh, sw)) = (self.kernel, self.stride);
        ((t - kt) / st + 1, (h - kh) / sh + 1, (w - kw) / sw + 1)
    }

    /// Calls `f(row, k, input_index)` for every im2col element, rows in parallel chunks of one
    /// output frame.
    fn input_index(
        &self,
        dims: (usize, usize, usize, usize, usize),
        row: usize,
        k: usize,
    ) -> usize {
        let (_, t, h, w, c) = dims;
        let (to, ho, wo) = self.out_dims((t, h, w));
        let ((_, kh, kw), (st, sh, sw)) = (self.kernel, self.stride);
        let (x, rest) = (row % wo, row / wo);
        let (y, rest) = (rest % ho, rest / ho);
        let (tt, b) = (rest % to, rest / to);
        let (ci, rest) = (k % c, k / c);
        let (dx, rest) = (rest % kw, rest / kw);
        let (dy, dt) = (rest % kh, rest / kh);
        (((b * t + tt * st + dt) * h + y * sh + dy) * w + x * sw + dx) * c + ci
    }
}

impl CustomOp1 for Im2col3d {
    fn name(&self) -> &'static str {
        "im2col3d-train"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let CpuStorage::F32(v) = s else {
            candle_core::bail!("im2col3d-train supports f32 only")
        };
        let (Some((start, _)), [b, t, h, w, c]) = (l.contiguous_offsets(), l.dims()) else {
            candle_core::bail!("im2col3d-train needs a contiguous (B, T, H, W, C) input")
        };
        let dims = (*b, *t, *h, *w, *c);
        let (to, ho, wo) = self.out_dims((*t, *h, *w));
        let k = self.kernel.0 * self.kernel.1 * self.kernel.2 * c;
        let rows = b * to * ho * wo;
        let src = &v[start..];
        let mut out = vec![0f32; rows * k];
        out.par_chunks_mut(k).enumerate().for_each(|(row, dst)| {
            // consecutive columns of one (dt, dy, dx) tap are consecutive channels
            for (tap, chunk) in dst.chunks_exact_mut(*c).enumerate() {
                let i = self.input_index(dims, row, tap * c);
                chunk.copy_from_slice(&src[i..i + c]);
            }
        });
        Ok((CpuStorage::F32(out), Shape::from((rows, k))))
    }

    fn bwd(&self, arg: &Tensor, _res: &Tensor, grad_res: &Tensor) -> Result<Option<Tensor>> {
        let col2im = Col2im3d {
            im2col: Im2col3d {
                kernel: self.kernel,
                stride: self.stride,
            },
            dims: arg.dims5()?,
        };
        Ok(Some(grad_res.contiguous()?.apply_op1_no_bwd(&col2im)?))
    }
}

/// The adjoint of [`Im2col3d`]: scatters-adds `(rows, K)` back into `(B, T, H, W, C)`.
struct Col2im3d {
    im2col: Im2col3d,
    dims: (usize, usize, usize, usize, usize),
}

impl CustomOp1 for Col2im3d {
    fn name(&self) -> &'static str {
        "col2im3d-train"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let CpuStorage::F32(v) = s else {
            candle_core::bail!("col2im3d-train supports f32 only")
        };
        let Some((start, _)) = l.contiguous_offsets() else {
            candle_core::bail!("col2im3d-train needs a contiguous input")
        };
        let (b, t, h, w, c) = self.dims;
        let (to, ho, wo) = self.im2col.out_dims((t, h, w));
        let k = self.im2col.kernel.0 * self.im2col.kernel.1 * self.im2col.kernel.2 * c;
        let src = &v[start..];
        let per_batch = t * h * w * c;
        let mut out = vec![0f32; b * per_batch];
        // one batch element per task: rows of different elements never touch the same input
        out.par_chunks_mut(per_batch)
            .enumerate()
            .for_each(|(bi, dst)| {
                let rows = to * ho * wo;
                for r in 0..rows {
                    let row = bi * rows + r;
                    let cols = &src[row * k..(row + 1) * k];
                    for (tap, chunk) in cols.chunks_exact(c).enumerate() {
                        let i = self.im2col.input_index(self.dims, row, tap * c) - bi * per_batch;
                        for (d, g) in dst[i..i + c].iter_mut().zip(chunk) {
                            *d += g;
                        }
                    }
                }
            });
        Ok((CpuStorage::F32(out), Shape::from((b, t, h, w, c))))
    }
}

/// The differentiable forward of `conv` over the time-concatenation of `parts` (each
/// `(B, T_i, H, W, C_in)`) with zero padding `pad`: `(B, T', H', W', C_out)`. Also the
/// inference path on GPUs, where one whole-batch im2col beats the band-wise one.
pub(super) fn conv3d_train(conv: &Conv3d, parts: &[&Tensor], pad: Padding3d) -> Result<Tensor> {
    let x = if parts.len() == 1 {
        parts[0].clone()
    } else {
        Tensor::cat(parts, 1)?
    };
    let x = x
        .pad_with_zeros(1, pad.t.0, pad.t.1)?
        .pad_with_zeros(2, pad.h.0, pad.h.1)?
        .pad_with_zeros(3, pad.w.0, pad.w.1)?
        .contiguous()?;
    let (b, t, h, w, _) = x.dims5()?;
    let (kt, kh, kw) = conv.kernel;
    if t < kt || h < kh || w < kw {
        candle_core::bail!(
            "conv3d input ({t}, {h}, {w}) after padding is smaller than the kernel {:?}",
            conv.kernel
        )
    }
    let op = Im2col3d {
        kernel: conv.kernel,
        stride: conv.stride,
    };
    let (to, ho, wo) = op.out_dims((t, h, w));
    let cols = if x.device().is_cpu() && x.dtype() == DType::F32 {
        x.apply_op1(op)?
    } else {
        im2col_ops(&x, conv.kernel, conv.stride, (to, ho, wo))?
    };
    let y = cols.matmul(&conv.w_mat)?; // (B T' H' W', C_out)
    let y = match &conv.bias {
        Some(bias) => y.broadcast_add(bias)?,
        None => y,
    };
    y.reshape((b, to, ho, wo, conv.w_mat.dim(1)?))
}

/// [`Im2col3d`] from candle ops, for any device and dtype: the padded `(B, T, H, W, C)` ->
/// `(B T' H' W', kt kh kw C)`, taps in the weight matrix's order (`dt`, `dy`, `dx`, channel).
fn im2col_ops(
    x: &Tensor,
    (kt, kh, kw): (usize, usize, usize),
    stride: (usize, usize, usize),
    (to, ho, wo): (usize, usize, usize),
) -> Result<Tensor> {
    let (b, _, _, _, c) = x.dims5()?;
    let mut taps = Vec::with_capacity(kt * kh * kw);
    for dt in 0..kt {
        let xt = strided(x, 1, dt, to, stride.0)?;
        for dy in 0..kh {
            let xy = strided(&xt, 2, dy, ho, stride.1)?;
            for dx in 0..kw {
                taps.push(strided(&xy, 3, dx, wo, stride.2)?);
            }
        }
    }
    Tensor::cat(&taps, 4)?.reshape((b * to * ho * wo, kt * kh * kw * c))
}

/// Elements `first, first + stride, ..` (`n` of them) of dimension `dim`.
fn strided(x: &Tensor, dim: usize, first: usize, n: usize, stride: usize) -> Result<Tensor> {
    if stride == 1 {
        return x.narrow(dim, first, n);
    }
    // n * stride elements from `first` may run past the end: keep (n - 1) * stride + 1, pad
    // the remainder, then fold the stride into its own dimension and take its first entry
    let len = x.dim(dim)?;
    let have = (len - first).min(n * stride);
    let x = x
        .narrow(dim, first, have)?
        .pad_with_zeros(dim, 0, n * stride - have)?;
    let mut dims = x.dims().to_vec();
    dims[dim] = n;
    dims.insert(dim + 1, stride);
    x.reshape(dims)?.narrow(dim + 1, 0, 1)?.squeeze(dim + 1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var};

    #[test]
    fn forward_matches_inference_and_gradients_match_the_generic_path() -> Result<()> {
        let dev = Device::Cpu;
        let w = Var::from_tensor(&Tensor::randn(0f32, 0.3, (5, 3, 3, 3, 2), &dev)?)?;
        let bias = Var::from_tensor(&Tensor::randn(0f32, 0.3, 5, &dev)?)?;
        let x = Var::from_tensor(&Tensor::randn(0f32, 1., (2, 4, 6, 7, 3), &dev)?)?;
        let conv = Conv3d::new(
            w.as_tensor().clone(),
            Some(bias.as_tensor().clone()),
            (2, 1, 2),
            (1, 1, 0),
        )?;
        let pad = Padding3d {
            t: (2, 0),
            h: (1, 1),
            w: (0, 1),
        };
        let ours = conv3d_train(&conv, &[x.as_tensor()], pad)?;
        let generic = conv.forward_parts(&[x.as_tensor()], pad, true)?;
        let err = (&ours - &generic)?.abs()?.max_all()?.to_scalar::<f32>()?;
        assert!(err < 1e-5, "forward {err}");
        // a loss with varied weights per output element
        let probe = Tensor::randn(0f32, 1., ours.shape(), &dev)?;
        let g1 = (&ours * &probe)?.sum_all()?.backward()?;
        let g2 = (&generic * &probe)?.sum_all()?.backward()?;
        for v in [&w, &bias, &x] {
            let (a, b) = (
                g1.get(v.as_tensor()).expect("grad"),
                g2.get(v.as_tensor()).expect("grad"),
            );
            let err = (a - b)?.abs()?.max_all()?.to_scalar::<f32>()?;
            assert!(err < 1e-4, "gradient {err}");
        }
        Ok(())
    }

    #[test]
    fn candle_ops_im2col_matches_the_cpu_op_forward_and_backward() -> Result<()> {
        let dev = Device::Cpu;
        for (kernel, stride) in [
            ((3, 3, 3), (1, 1, 1)),
            ((3, 3, 3), (2, 2, 2)),
            ((1, 2, 3), (1, 2, 3)),
        ] {
            let x = Var::from_tensor(&Tensor::randn(0f32, 1., (2, 6, 7, 9, 3), &dev)?)?;
            let op = Im2col3d { kernel, stride };
            let out = op.out_dims((6, 7, 9));
            let ours = im2col_ops(x.as_tensor(), kernel, stride, out)?;
            let reference = x.as_tensor().apply_op1(op)?;
            assert_eq!(ours.dims(), reference.dims());
            let err = (&ours - &reference)?.abs()?.max_all()?.to_scalar::<f32>()?;
            assert_eq!(err, 0.0, "forward, kernel {kernel:?} stride {stride:?}");
            let probe = Tensor::randn(0f32, 1., ours.shape(), &dev)?;
            let g1 = (&ours * &probe)?.sum_all()?.backward()?;
            let g2 = (&reference * &probe)?.sum_all()?.backward()?;
            let (a, b) = (
                g1.get(x.as_tensor()).expect("grad"),
                g2.get(x.as_tensor()).expect("grad"),
            );
            let err = (a - b)?.abs()?.max_all()?.to_scalar::<f32>()?;
            assert!(
                err < 1e-5,
                "gradient {err}, kernel {kernel:?} stride {stride:?}"
            );
        }
        Ok(())
    }
}
