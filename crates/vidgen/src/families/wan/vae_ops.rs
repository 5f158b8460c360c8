//! In-place elementwise steps of the Wan VAE for the CPU, where each fresh full-resolution
//! activation would otherwise cost an allocation (page faults included) and a pass: SiLU after
//! the RMS norm and the residual add. Elsewhere they fall back to the plain candle ops.
//!
//! Only call them on a tensor that owns its storage alone (a fresh op output): the write is
//! visible through every tensor sharing that storage.

use candle_core::{CpuStorage, InplaceOp1, InplaceOp2, Layout, Result, Tensor};
use half::{bf16, f16};
use rayon::prelude::*;

/// Elements per parallel work unit.
const CHUNK: usize = 1 << 14;

/// `x * sigmoid(x)`, on a fresh `x`; returns `x` itself on the CPU.
pub(crate) fn silu_inplace(x: Tensor) -> Result<Tensor> {
    if !x.device().is_cpu() || !x.is_contiguous() || x.track_op() {
        return x.silu();
    }
    x.inplace_op1(&Silu)?;
    Ok(x)
}

/// `a + b` for same-shape tensors, written into a fresh `a` on the CPU.
pub(crate) fn add_inplace(a: Tensor, b: &Tensor) -> Result<Tensor> {
    let plain = !a.device().is_cpu() || !a.is_contiguous() || !b.is_contiguous();
    // writing into `a` would corrupt a graph being trained
    if plain || a.dims() != b.dims() || a.track_op() || b.track_op() {
        return a + b;
    }
    a.inplace_op2(b, &Add)?;
    Ok(a)
}

fn silu(v: f32) -> f32 {
    v / (1.0 + (-v).exp())
}

struct Silu;

impl InplaceOp1 for Silu {
    fn name(&self) -> &'static str {
        "silu-inplace"
    }

    fn cpu_fwd(&self, s: &mut CpuStorage, l: &Layout) -> Result<()> {
        let (start, n) = (l.start_offset(), l.shape().elem_count());
        match s {
            CpuStorage::F32(v) => v[start..start + n]
                .par_chunks_mut(CHUNK)
                .for_each(|c| c.iter_mut().for_each(|x| *x = silu(*x))),
            CpuStorage::BF16(v) => v[start..start + n].par_chunks_mut(CHUNK).for_each(|c| {
                c.iter_mut()
                    .for_each(|x| *x = bf16::from_f32(silu(x.to_f32())))
            }),
            CpuStorage::F16(v) => v[start..start + n].par_chunks_mut(CHUNK).for_each(|c| {
                c.iter_mut()
                    .for_each(|x| *x = f16::from_f32(silu(x.to_f32())))
            }),
            _ => candle_core::bail!("silu-inplace: unsupported dtype"),
        }
        Ok(())
    }
}

struct Add;

impl InplaceOp2 for Add {
    fn name(&self) -> &'static str {
        "add-inplace"
    }

    fn cpu_fwd(&self, a: &mut CpuStorage, la: &Layout, b: &CpuStorage, lb: &Layout) -> Result<()> {
        let n = la.shape().elem_count();
        let (sa, sb) = (la.start_offset(), lb.start_offset());
        macro_rules! add {
            ($x:expr, $y:expr) => {
                $x[sa..sa + n]
                    .par_chunks_mut(CHUNK)
                    .zip($y[sb..sb + n].par_chunks(CHUNK))
                    .for_each(|(x, y)| x.iter_mut().zip(y).for_each(|(x, y)| *x += *y))
            };
        }
        match (a, b) {
            (CpuStorage::F32(x), CpuStorage::F32(y)) => add!(x, y),
            (CpuStorage::BF16(x), CpuStorage::BF16(y)) => add!(x, y),
            (CpuStorage::F16(x), CpuStorage::F16(y)) => add!(x, y),
            _ => candle_core::bail!("add-inplace: unsupported or mismatched dtypes"),
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, D};

    #[test]
    fn inplace_ops_match_candle() -> Result<()> {
        let x = Tensor::randn(0f32, 3.0, (3, 70_000), &Device::Cpu)?;
        let y = Tensor::randn(0f32, 1.0, (3, 70_000), &Device::Cpu)?;
        let want_silu = x.silu()?;
        let want_add = (&x + &y)?;
        let got_silu = silu_inplace(x.copy()?)?;
        let got_add = add_inplace(x.copy()?, &y)?;
        let diff = |a: &Tensor, b: &Tensor| -> Result<f32> {
            (a - b)?.abs()?.flatten_all()?.max(D::Minus1)?.to_scalar()
        };
        assert!(diff(&got_silu, &want_silu)? < 1e-6);
        assert_eq!(diff(&got_add, &want_add)?, 0.0);
        Ok(())
    }
}
