//! The layers of the LTX-Video VAE (diffusers' `LTXVideoCausalConv3d`, `LTXVideoResnetBlock3d`,
//! the down/up samplers and blocks, and the timestep embedder of the 0.9.1+ decoder).
//!
//! Everything runs channels-last, `(B, T, H, W, C)`: the convs are matmuls over channels and the
//! RMS norms reduce over the contiguous last axis. Unlike the Wan VAE there is no frame cache:
//! the reference runs the whole clip through each layer at once, and the time padding of its
//! convs (copies of the first/last frame) makes that the definition of the result.

use candle_core::{DType, Module, Result, Tensor, D};
use candle_nn::{Linear, VarBuilder};

use crate::nn::conv3d::{Conv3d, Padding3d};
use crate::nn::embed::timestep_embedding;
use crate::nn::norm::LayerNorm;

/// `LTXVideoCausalConv3d`: a conv whose time padding repeats the first frame `kt - 1` times in
/// front (causal) or the first and last frame `(kt - 1) / 2` times on each side (non-causal);
/// space is zero-padded by `k / 2`. Weights live under `conv.`.
#[derive(Clone, Debug)]
pub(crate) struct CausalConv3d {
    conv: Conv3d,
    is_causal: bool,
}

impl CausalConv3d {
    pub(crate) fn load(
        vb: VarBuilder,
        c_in: usize,
        c_out: usize,
        kernel: usize,
        stride: (usize, usize, usize),
        is_causal: bool,
    ) -> Result<Self> {
        let k = (kernel, kernel, kernel);
        let conv = Conv3d::load(
            vb.pp("conv"),
            c_in,
            c_out,
            k,
            stride,
            (0, kernel / 2, kernel / 2),
        )?;
        Ok(Self { conv, is_causal })
    }

    /// `(B, T, H, W, C_in)` -> `(B, T', H', W', C_out)`.
    pub(crate) fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (kt, kh, kw) = self.conv.kernel();
        let t = x.dim(1)?;
        let (front, back) = if self.is_causal {
            (kt - 1, 0)
        } else {
            ((kt - 1) / 2, (kt - 1) / 2)
        };
        // replicate padding in time, without copying the clip
        let first = x.narrow(1, 0, 1)?;
        let last = x.narrow(1, t - 1, 1)?;
        let mut parts = vec![&first; front];
        parts.push(x);
        parts.extend(std::iter::repeat_n(&last, back));
        let pad = Padding3d {
            t: (0, 0),
            h: (kh / 2, kh / 2),
            w: (kw / 2, kw / 2),
        };
        self.conv.forward_cl_padded(&parts, pad)
    }
}

/// diffusers' `RMSNorm(C, eps=1e-8, elementwise_affine=False)` over the channels of
/// `(..., C)`, computed in f32 and cast back.
pub(crate) fn rms_norm(x: &Tensor) -> Result<Tensor> {
    let c = x.dim(D::Minus1)?;
    let ones = Tensor::ones(c, DType::F32, x.device())?;
    candle_nn::ops::rms_norm(&x.to_dtype(DType::F32)?.contiguous()?, &ones, 1e-8)?
        .to_dtype(x.dtype())
}

/// `x * (1 + scale) + shift` with `shift`, `scale` `(B, C)` broadcast over `(B, T, H, W, C)`.
fn modulate(x: &Tensor, shift: &Tensor, scale: &Tensor) -> Result<Tensor> {
    let (b, c) = shift.dims2()?;
    let shift = shift.reshape((b, 1, 1, 1, c))?;
    let scale = (scale.reshape((b, 1, 1, 1, c))? + 1.0)?;
    x.broadcast_mul(&scale)?.broadcast_add(&shift)
}

/// `PixArtAlphaCombinedTimestepSizeEmbeddings` without size conditions: a 256-channel sinusoidal
/// embedding (cosines first) through `linear_1`, SiLU, `linear_2`.
#[derive(Clone, Debug)]
pub(crate) struct TimeEmbedder {
    linear_1: Linear,
    linear_2: Linear,
}

impl TimeEmbedder {
    /// Loads `timestep_embedder.linear_{1,2}` under `vb` (the module's `time_embedder`).
    pub(crate) fn load(vb: VarBuilder, dim: usize) -> Result<Self> {
        let vb = vb.pp("timestep_embedder");
        Ok(Self {
            linear_1: candle_nn::linear(256, dim, vb.pp("linear_1"))?,
            linear_2: candle_nn::linear(dim, dim, vb.pp("linear_2"))?,
        })
    }

    /// `timestep` `(B,)` -> `(B, dim)` in `dtype`.
    pub(crate) fn forward(&self, timestep: &Tensor, dtype: DType) -> Result<Tensor> {
        timestep_embedding(timestep, 256)?
            .to_dtype(dtype)?
            .apply(&self.linear_1)?
            .silu()?
            .apply(&self.linear_2)
    }
}

/// `LTXVideoResnetBlock3d`: (RMS norm, [AdaLN], SiLU, causal 3x3x3 conv) twice plus a shortcut
/// (layer norm and 1x1x1 conv when the channel count changes).
#[derive(Clone, Debug)]
pub(crate) struct ResnetBlock {
    conv1: CausalConv3d,
    conv2: CausalConv3d,
    norm3: Option<LayerNorm>,
    conv_shortcut: Option<CausalConv3d>,
    /// `(4, C_in)`: shift/scale offsets of the timestep-conditioned decoder.
    scale_shift_table: Option<Tensor>,
}

impl ResnetBlock {
    pub(crate) fn load(
        vb: VarBuilder,
        c_in: usize,
        c_out: usize,
        eps: f64,
        is_causal: bool,
        timestep_conditioning: bool,
    ) -> Result<Self> {
        let conv3 = |vb, ci, co| CausalConv3d::load(vb, ci, co, 3, (1, 1, 1), is_causal);
        let (norm3, conv_shortcut) = if c_in != c_out {
            (
                Some(LayerNorm::new(c_in, eps, true, vb.pp("norm3"))?),
                Some(CausalConv3d::load(
                    vb.pp("conv_shortcut"),
                    c_in,
                    c_out,
                    1,
                    (1, 1, 1),
                    is_causal,
                )?),
            )
        } else {
            (None, None)
        };
        let scale_shift_table = if timestep_conditioning {
            Some(vb.get((4, c_in), "scale_shift_table")?)
        } else {
            None
        };
        Ok(Self {
            conv1: conv3(vb.pp("conv1"), c_in, c_out)?,
            conv2: conv3(vb.pp("conv2"), c_out, c_out)?,
            norm3,
            conv_shortcut,
            scale_shift_table,
        })
    }

    /// `x` `(B, T, H, W, C_in)`, `temb` `(B, 4 C_in)` when timestep-conditioned.
    ///
    /// Returns `(B, T, H, W, C_out)`.
    pub(crate) fn forward(&self, x: &Tensor, temb: Option<&Tensor>) -> Result<Tensor> {
        // shift_1, scale_1, shift_2, scale_2, each (B, C_in)
        let mods = match (&self.scale_shift_table, temb) {
            (Some(table), Some(temb)) => {
                let (b, c4) = temb.dims2()?;
                // b (4 c) -> b 4 c, plus the learned offsets
                let m = temb
                    .reshape((b, 4, c4 / 4))?
                    .broadcast_add(&table.unsqueeze(0)?)?;
                Some(
                    (0..4)
                        .map(|i| m.narrow(1, i, 1)?.squeeze(1))
                        .collect::<Result<Vec<_>>>()?,
                )
            }
            (Some(_), None) => {
                candle_core::bail!("timestep-conditioned resnet block needs a timestep embedding")
            }
            (None, _) => None,
        };
        let mut h = rms_norm(x)?;
        if let Some(m) = &mods {
            h = modulate(&h, &m[0], &m[1])?;
        }
        let mut h = self.conv1.forward(&h.silu()?)?;
        h = rms_norm(&h)?;
        if let Some(m) = &mods {
            h = modulate(&h, &m[2], &m[3])?;
        }
        // dropout is the identity at inference
        let h = self.conv2.forward(&h.silu()?)?;
        let mut shortcut = x.clone();
        if let Some(norm3) = &self.norm3 {
            shortcut = norm3.forward(&shortcut)?.to_dtype(x.dtype())?;
        }
        if let Some(conv) = &self.conv_shortcut {
            shortcut = conv.forward(&shortcut)?;
        }
        h + shortcut
    }
}

/// Space-to-depth: `(B, T s0, H s1, W s2, C)` -> `(B, T, H, W, C s0 s1 s2)`, channels ordered
/// `(c, s0, s1, s2)` as the reference's `permute(0, 1, 3, 5, 7, 2, 4, 6)`.
fn space_to_depth(x: &Tensor, (s0, s1, s2): (usize, usize, usize)) -> Result<Tensor> {
    let (b, t, h, w, c) = x.dims5()?;
    let (t2, h2, w2) = (t / s0, h / s1, w / s2);
    // b (t s0) (h s1) (w s2) c -> b t h w c s0 s1 s2
    x.reshape(vec![b, t2, s0, h2, s1, w2, s2, c])?
        .permute(vec![0, 1, 3, 5, 7, 2, 4, 6])?
        .reshape((b, t2, h2, w2, c * s0 * s1 * s2))
}

/// Depth-to-space: `(B, T, H, W, C s0 s1 s2)` (channels ordered `(c, s0, s1, s2)`) ->
/// `(B, T s0, H s1, W s2, C)`.
fn depth_to_space(x: &Tensor, (s0, s1, s2): (usize, usize, usize)) -> Result<Tensor> {
    let (b, t, h, w, cs) = x.dims5()?;
    let c = cs / (s0 * s1 * s2);
    // b t h w (c s0 s1 s2) -> b t s0 h s1 w s2 c
    x.reshape(vec![b, t, h, w, c, s0, s1, s2])?
        .permute(vec![0, 1, 5, 2, 6, 3, 7, 4])?
        .reshape((b, t * s0, h * s1, w * s2, c))
}

/// `LTXVideoDownsampler3d` (0.9.5): a conv to `C_out / (s0 s1 s2)` channels, space-to-depth,
/// plus the space-to-depth input averaged over groups of channels as a residual.
#[derive(Clone, Debug)]
pub(crate) struct Downsampler3d {
    conv: CausalConv3d,
    stride: (usize, usize, usize),
    group_size: usize,
}

impl Downsampler3d {
    pub(crate) fn load(
        vb: VarBuilder,
        c_in: usize,
        c_out: usize,
        stride: (usize, usize, usize),
        is_causal: bool,
    ) -> Result<Self> {
        let n = stride.0 * stride.1 * stride.2;
        if !c_out.is_multiple_of(n) || !(c_in * n).is_multiple_of(c_out) {
            candle_core::bail!(
                "downsampler {c_in} -> {c_out} channels does not divide by stride {stride:?}"
            )
        }
        Ok(Self {
            conv: CausalConv3d::load(vb.pp("conv"), c_in, c_out / n, 3, (1, 1, 1), is_causal)?,
            stride,
            group_size: c_in * n / c_out,
        })
    }

    /// `(B, T, H, W, C_in)` -> `(B, (T + s0 - 1) / s0, H / s1, W / s2, C_out)`.
    pub(crate) fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let s0 = self.stride.0;
        // the first s0 - 1 frames go in front again so that frame 0 forms its own group
        let x = if s0 > 1 {
            Tensor::cat(&[&x.narrow(1, 0, s0 - 1)?, x], 1)?
        } else {
            x.clone()
        };
        let (_, t, h, w, _) = x.dims5()?;
        let (s0, s1, s2) = self.stride;
        if !t.is_multiple_of(s0) || !h.is_multiple_of(s1) || !w.is_multiple_of(s2) {
            candle_core::bail!(
                "downsampler with stride {:?} got (T, H, W) = ({t}, {h}, {w}) (after repeating the first frame); \
                 use sizes the compression divides",
                self.stride
            )
        }
        let residual = space_to_depth(&x, self.stride)?;
        let (b, t, h, w, cs) = residual.dims5()?;
        let residual = residual
            .reshape(vec![b, t, h, w, cs / self.group_size, self.group_size])?
            .mean(D::Minus1)?;
        space_to_depth(&self.conv.forward(&x)?, self.stride)? + residual
    }
}

/// `LTXVideoUpsampler3d`: a conv to `C · 8 / upscale_factor` channels, depth-to-space over
/// (2, 2, 2), the first `s0 - 1` frames dropped; optionally plus the depth-to-space input
/// tiled over channels.
#[derive(Clone, Debug)]
pub(crate) struct Upsampler3d {
    conv: CausalConv3d,
    stride: (usize, usize, usize),
    residual: bool,
    upscale_factor: usize,
}

impl Upsampler3d {
    pub(crate) fn load(
        vb: VarBuilder,
        c_in: usize,
        is_causal: bool,
        residual: bool,
        upscale_factor: usize,
    ) -> Result<Self> {
        let stride = (2, 2, 2);
        let n = stride.0 * stride.1 * stride.2;
        if !(c_in * n).is_multiple_of(upscale_factor) || (residual && !c_in.is_multiple_of(n)) {
            candle_core::bail!(
                "upsampler of {c_in} channels does not divide by upscale factor {upscale_factor}"
            )
        }
        Ok(Self {
            conv: CausalConv3d::load(
                vb.pp("conv"),
                c_in,
                c_in * n / upscale_factor,
                3,
                (1, 1, 1),
                is_causal,
            )?,
            stride,
            residual,
            upscale_factor,
        })
    }

    /// `(B, T, H, W, C)` -> `(B, 2T - 1, 2H, 2W, C / upscale_factor)`.
    pub(crate) fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let s0 = self.stride.0;
        let drop_first = |t: Tensor| -> Result<Tensor> {
            let n = t.dim(1)?;
            t.narrow(1, s0 - 1, n - (s0 - 1))
        };
        let h = drop_first(depth_to_space(&self.conv.forward(x)?, self.stride)?)?;
        if !self.residual {
            return Ok(h);
        }
        let n = self.stride.0 * self.stride.1 * self.stride.2;
        let r = depth_to_space(x, self.stride)?;
        // torch's `repeat` over channels: the whole channel block again, n / factor times
        let r = Tensor::cat(&vec![&r; n / self.upscale_factor], 4)?;
        h + drop_first(r)?
    }
}

/// The spatio-temporal down-sampling of an encoder block.
#[derive(Clone, Debug)]
pub(crate) enum Downsample {
    /// `"conv"`: a stride-(2, 2, 2) causal conv (weights `downsamplers.0.conv.`).
    Conv(CausalConv3d),
    /// `"spatial"`, `"temporal"`, `"spatiotemporal"` (0.9.5): weights `downsamplers.0.conv.conv.`.
    Pixel(Downsampler3d),
}

/// `LTXVideoDownBlock3D` / `LTXVideo095DownBlock3D`: resnets at `C_in`, an optional
/// down-sampling, and (0.9.0 blocks only) a resnet to `C_out`.
#[derive(Clone, Debug)]
pub(crate) struct DownBlock {
    pub(crate) resnets: Vec<ResnetBlock>,
    pub(crate) downsampler: Option<Downsample>,
    pub(crate) conv_out: Option<ResnetBlock>,
}

impl DownBlock {
    /// `(B, T, H, W, C_in)` -> `(B, T', H', W', C_out)`.
    pub(crate) fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let mut h = x.clone();
        for r in &self.resnets {
            h = r.forward(&h, None)?;
        }
        h = match &self.downsampler {
            Some(Downsample::Conv(c)) => c.forward(&h)?,
            Some(Downsample::Pixel(d)) => d.forward(&h)?,
            None => h,
        };
        match &self.conv_out {
            Some(r) => r.forward(&h, None),
            None => Ok(h),
        }
    }
}

/// `LTXVideoMidBlock3d`: resnets, with their own timestep embedder when conditioned.
#[derive(Clone, Debug)]
pub(crate) struct MidBlock {
    time_embedder: Option<TimeEmbedder>,
    resnets: Vec<ResnetBlock>,
}

impl MidBlock {
    pub(crate) fn load(
        vb: VarBuilder,
        c: usize,
        num_layers: usize,
        eps: f64,
        is_causal: bool,
        timestep_conditioning: bool,
    ) -> Result<Self> {
        let time_embedder = if timestep_conditioning {
            Some(TimeEmbedder::load(vb.pp("time_embedder"), 4 * c)?)
        } else {
            None
        };
        let resnets = (0..num_layers)
            .map(|i| {
                ResnetBlock::load(
                    vb.pp("resnets").pp(i),
                    c,
                    c,
                    eps,
                    is_causal,
                    timestep_conditioning,
                )
            })
            .collect::<Result<_>>()?;
        Ok(Self {
            time_embedder,
            resnets,
        })
    }

    /// `x` `(B, T, H, W, C)`, `timestep` `(B,)` (already scaled) when conditioned.
    pub(crate) fn forward(&self, x: &Tensor, timestep: Option<&Tensor>) -> Result<Tensor> {
        let temb = embed(self.time_embedder.as_ref(), timestep, x.dtype())?;
        let mut h = x.clone();
        for r in &self.resnets {
            h = r.forward(&h, temb.as_ref())?;
        }
        Ok(h)
    }
}

/// Runs an optional embedder on an optional timestep (both or neither are needed).
fn embed(
    embedder: Option<&TimeEmbedder>,
    timestep: Option<&Tensor>,
    dtype: DType,
) -> Result<Option<Tensor>> {
    match (embedder, timestep) {
        (Some(e), Some(t)) => Ok(Some(e.forward(t, dtype)?)),
        (Some(_), None) => candle_core::bail!("this timestep-conditioned decoder needs a timestep"),
        (None, _) => Ok(None),
    }
}

/// `LTXVideoUpBlock3d`: an optional resnet to `C_out`, an optional up-sampler, resnets at
/// `C_out`, all conditioned on the timestep when the decoder is.
#[derive(Clone, Debug)]
pub(crate) struct UpBlock {
    pub(crate) conv_in: Option<ResnetBlock>,
    pub(crate) time_embedder: Option<TimeEmbedder>,
    pub(crate) upsampler: Option<Upsampler3d>,
    pub(crate) resnets: Vec<ResnetBlock>,
}

impl UpBlock {
    /// `x` `(B, T, H, W, C)`, `timestep` `(B,)` (already scaled) when conditioned.
    pub(crate) fn forward(&self, x: &Tensor, timestep: Option<&Tensor>) -> Result<Tensor> {
        let mut h = x.clone();
        if let Some(r) = &self.conv_in {
            // the config check rules out conv_in in conditioned decoders (the reference fails)
            h = r.forward(&h, None)?;
        }
        let temb = embed(self.time_embedder.as_ref(), timestep, x.dtype())?;
        if let Some(u) = &self.upsampler {
            h = u.forward(&h)?;
        }
        for r in &self.resnets {
            h = r.forward(&h, temb.as_ref())?;
        }
        Ok(h)
    }
}

/// Pixel patchify of the encoder: `(B, F, H p, W p, C)` -> `(B, F, H, W, C p p)`, channels
/// ordered `(c, pw, ph)` — width before height, as the reference's `permute(0, 1, 3, 7, 5, 2, 4, 6)`.
pub(crate) fn patchify(x: &Tensor, p: usize) -> Result<Tensor> {
    let (b, f, h, w, c) = x.dims5()?;
    let (h2, w2) = (h / p, w / p);
    // b f (h ph) (w pw) c -> b f h w c pw ph
    x.reshape(vec![b, f, h2, p, w2, p, c])?
        .permute(vec![0, 1, 2, 4, 6, 5, 3])?
        .reshape((b, f, h2, w2, c * p * p))
}

/// The decoder's inverse of [`patchify`]: `(B, T, H, W, C p p)` -> `(B, T, H p, W p, C)`.
pub(crate) fn unpatchify(x: &Tensor, p: usize) -> Result<Tensor> {
    let (b, t, h, w, cpp) = x.dims5()?;
    let c = cpp / (p * p);
    // b t h w (c pw ph) -> b t h ph w pw c
    x.reshape(vec![b, t, h, w, c, p, p])?
        .permute(vec![0, 1, 2, 6, 3, 5, 4])?
        .reshape((b, t, h * p, w * p, c))
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn patchify_round_trips() -> Result<()> {
        let x =
            Tensor::arange(0f32, 2. * 3. * 4. * 6. * 3., &Device::Cpu)?.reshape((2, 3, 4, 6, 3))?;
        let y = patchify(&x, 2)?;
        assert_eq!(y.dims(), &[2, 3, 2, 3, 12]);
        let back = unpatchify(&y, 2)?;
        assert_eq!(
            back.flatten_all()?.to_vec1::<f32>()?,
            x.flatten_all()?.to_vec1::<f32>()?
        );
        Ok(())
    }

    #[test]
    fn patchify_puts_width_before_height() -> Result<()> {
        // one channel, one 2x2 patch: pixel (y, x) = 10 y + x
        let x = Tensor::new(&[[0f32, 1.], [10., 11.]], &Device::Cpu)?.reshape((1, 1, 2, 2, 1))?;
        let y = patchify(&x, 2)?.flatten_all()?.to_vec1::<f32>()?;
        // channel (pw, ph): (0,0), (0,1), (1,0), (1,1)
        assert_eq!(y, vec![0., 10., 1., 11.]);
        Ok(())
    }

    #[test]
    fn depth_to_space_inverts_space_to_depth() -> Result<()> {
        let x = Tensor::arange(0f32, 4. * 4. * 6. * 2., &Device::Cpu)?.reshape((1, 4, 4, 6, 2))?;
        let y = space_to_depth(&x, (2, 2, 2))?;
        assert_eq!(y.dims(), &[1, 2, 2, 3, 16]);
        let back = depth_to_space(&y, (2, 2, 2))?;
        assert_eq!(
            back.flatten_all()?.to_vec1::<f32>()?,
            x.flatten_all()?.to_vec1::<f32>()?
        );
        Ok(())
    }
}
