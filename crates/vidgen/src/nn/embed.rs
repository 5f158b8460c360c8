//! Sinusoidal timestep embedding.

use candle_core::{Result, Tensor};

/// Sinusoidal embedding of diffusion timesteps, as diffusers' `get_timestep_embedding` with
/// `flip_sin_to_cos=true` (cosines first) and `downscale_freq_shift=0`, `max_period=10000`.
///
/// * `timesteps` — `(B,)` values (any float dtype; converted to f32 like the reference)
///
/// Returns `(B, dim)` f32: `[cos(t·f_0), …, cos(t·f_{h-1}), sin(t·f_0), …]` with
/// `f_j = exp(-ln(10000)·j/h)`, `h = dim/2`; an odd `dim` gets a zero last column.
pub fn timestep_embedding(timesteps: &Tensor, dim: usize) -> Result<Tensor> {
    let half = dim / 2;
    let device = timesteps.device();
    // The reference computes the frequencies in f32 on the device; f64 rounded once to f32 is
    // within an ulp of it.
    let freqs: Vec<f32> = (0..half)
        .map(|j| (-(10000f64).ln() * j as f64 / half as f64).exp() as f32)
        .collect();
    let freqs = Tensor::from_vec(freqs, (1, half), device)?;
    let args = timesteps
        .to_dtype(candle_core::DType::F32)?
        .unsqueeze(1)?
        .broadcast_mul(&freqs)?;
    let mut emb = Tensor::cat(&[args.cos()?, args.sin()?], 1)?;
    if dim % 2 == 1 {
        let zeros = Tensor::zeros((emb.dim(0)?, 1), emb.dtype(), device)?;
        emb = Tensor::cat(&[emb, zeros], 1)?;
    }
    Ok(emb)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn zero_timestep_gives_cos_one_sin_zero() -> Result<()> {
        let t = Tensor::full(0f32, 2, &Device::Cpu)?;
        let e = timestep_embedding(&t, 6)?.to_vec2::<f32>()?;
        assert_eq!(e[0], vec![1., 1., 1., 0., 0., 0.]);
        Ok(())
    }

    #[test]
    fn first_frequency_is_one() -> Result<()> {
        let t = Tensor::full(2f32, 1, &Device::Cpu)?;
        let e = timestep_embedding(&t, 8)?.to_vec2::<f32>()?;
        assert!((e[0][0] - 2f32.cos()).abs() < 1e-6);
        assert!((e[0][4] - 2f32.sin()).abs() < 1e-6);
        // f_1 = 10000^(-1/4) = 0.1
        assert!((e[0][1] - 0.2f32.cos()).abs() < 1e-6);
        Ok(())
    }
}
