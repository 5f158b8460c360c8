//! Building blocks shared by the model families: device-agnostic candle code.

pub mod attention;
pub mod bf16_gemm;
pub mod broadcast;
pub mod conv3d;
pub mod embed;
pub mod flash;
pub mod fused;
pub mod linear;
pub mod norm;
pub mod patch;
pub mod rope;
pub mod step_cache;

use candle_core::{Layout, Result, Storage, WithDType};

/// The `len` elements of a contiguous CPU tensor's `storage` from its `layout`'s offset (what
/// `Tensor::storage_and_layout` gives); for the CPU kernels that read tensors in place.
pub(crate) fn cpu_slice<'a, T: WithDType>(
    storage: &'a Storage,
    layout: &Layout,
    len: usize,
) -> Result<&'a [T]> {
    match storage {
        Storage::Cpu(cpu) => {
            let start = layout.start_offset();
            Ok(&cpu.as_slice::<T>()?[start..start + len])
        }
        _ => candle_core::bail!("expected a CPU tensor"),
    }
}
