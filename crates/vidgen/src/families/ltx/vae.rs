//! LTX-Video's VAE, diffusers' `AutoencoderKLLTXVideo`: video `(B, 3, F, H, W)` in [-1, 1] ⇄
//! latents `(B, Z, T, H/32, W/32)` with `T = (F - 1) / 8 + 1` (the published configs).
//!
//! The encoder patchifies pixels (4x4 → channels), then causal 3D conv blocks down-sample space
//! and time; the decoder mirrors it and, from 0.9.1 on, is conditioned on a timestep
//! (`decode_timestep`) through AdaLN-style shift/scale in its resnets. Both run over the whole
//! clip at once, as the reference does (no frame cache: its convs pad time with copies of the
//! edge frames, so there is no chunked formulation that gives the same numbers); memory grows
//! with the clip unless large frames are split into overlapping spatial tiles ([`TilingConfig`],
//! diffusers' `enable_tiling`) and long clips into overlapping frame windows
//! ([`FramewiseConfig`], `use_framewise_decoding`), both in `vae_tiling.rs`. The config lives in
//! `vae_config.rs`, the layers in `vae_blocks.rs`.

use candle_core::{DType, Result, Tensor};
use candle_nn::VarBuilder;

use super::vae_blocks::{
    patchify, rms_norm, unpatchify, CausalConv3d, DownBlock, Downsample, Downsampler3d, MidBlock,
    ResnetBlock, TimeEmbedder, UpBlock, Upsampler3d,
};
pub use super::vae_config::AutoencoderKlLtxVideoConfig;
use super::vae_config::{downsample_stride, DOWN_0_9_5};
pub use super::vae_tiling::{FramewiseConfig, TilingConfig};
pub use crate::families::wan::vae::DiagonalGaussian;

/// `LTXVideoEncoder3d`: patchify, `conv_in`, down blocks, mid block, RMS norm, SiLU, `conv_out`
/// to `Z + 1` channels (Z means and one shared log-variance).
#[derive(Clone, Debug)]
pub(super) struct Encoder3d {
    patch_size: usize,
    conv_in: CausalConv3d,
    down_blocks: Vec<DownBlock>,
    mid_block: MidBlock,
    conv_out: CausalConv3d,
}

impl Encoder3d {
    fn load(vb: VarBuilder, cfg: &AutoencoderKlLtxVideoConfig) -> Result<Self> {
        let causal = cfg.encoder_causal;
        let eps = cfg.resnet_norm_eps;
        let p = cfg.patch_size;
        let bo = &cfg.block_out_channels;
        let mut c_out = bo[0];
        let conv_in = CausalConv3d::load(
            vb.pp("conv_in"),
            cfg.in_channels * p * p,
            c_out,
            3,
            (1, 1, 1),
            causal,
        )?;
        let n = cfg.num_down_blocks();
        let mut down_blocks = Vec::with_capacity(n);
        for i in 0..n {
            let c_in = c_out;
            c_out = if cfg.is_ltx_095() || i + 1 < n {
                bo[i + 1]
            } else {
                bo[i]
            };
            let vb = vb.pp("down_blocks").pp(i);
            let resnets = (0..cfg.layers_per_block[i])
                .map(|j| ResnetBlock::load(vb.pp("resnets").pp(j), c_in, c_in, eps, causal, false))
                .collect::<Result<Vec<_>>>()?;
            let is_095 = cfg.down_block_types[i] == DOWN_0_9_5;
            let kind = if is_095 {
                cfg.downsample_type[i].as_str()
            } else {
                "conv"
            };
            let vd = vb.pp("downsamplers").pp(0);
            let downsampler = match (cfg.spatio_temporal_scaling[i], downsample_stride(kind)) {
                (false, _) => None,
                (true, Some(None)) => Some(Downsample::Conv(CausalConv3d::load(
                    vd,
                    c_in,
                    c_in,
                    3,
                    (2, 2, 2),
                    causal,
                )?)),
                (true, Some(Some(stride))) => Some(Downsample::Pixel(Downsampler3d::load(
                    vd, c_in, c_out, stride, causal,
                )?)),
                (true, None) => candle_core::bail!("unknown downsample_type {kind}"),
            };
            // 0.9.0 blocks change channels with a trailing resnet; 0.9.5 ones in the sampler
            let conv_out = if !is_095 && c_in != c_out {
                Some(ResnetBlock::load(
                    vb.pp("conv_out"),
                    c_in,
                    c_out,
                    eps,
                    causal,
                    false,
                )?)
            } else {
                None
            };
            down_blocks.push(DownBlock {
                resnets,
                downsampler,
                conv_out,
            });
        }
        let mid_layers = *cfg.layers_per_block.last().unwrap_or(&0);
        Ok(Self {
            patch_size: p,
            conv_in,
            down_blocks,
            mid_block: MidBlock::load(vb.pp("mid_block"), c_out, mid_layers, eps, causal, false)?,
            conv_out: CausalConv3d::load(
                vb.pp("conv_out"),
                c_out,
                cfg.latent_channels + 1,
                3,
                (1, 1, 1),
                causal,
            )?,
        })
    }

    /// `(B, F, H, W, C_in)` -> `(B, T, h, w, Z + 1)`.
    pub(super) fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let mut h = self.conv_in.forward(&patchify(x, self.patch_size)?)?;
        for block in &self.down_blocks {
            h = block.forward(&h)?;
        }
        h = self.mid_block.forward(&h, None)?;
        self.conv_out.forward(&rms_norm(&h)?.silu()?)
    }
}

/// The decoder's final AdaLN: its own timestep embedder and `(2, C)` shift/scale offsets.
#[derive(Clone, Debug)]
struct OutModulation {
    time_embedder: TimeEmbedder,
    scale_shift_table: Tensor,
}

/// `LTXVideoDecoder3d`: `conv_in`, mid block, up blocks, RMS norm, [AdaLN], SiLU, `conv_out`,
/// unpatchify.
#[derive(Clone, Debug)]
pub(super) struct Decoder3d {
    patch_size: usize,
    conv_in: CausalConv3d,
    mid_block: MidBlock,
    up_blocks: Vec<UpBlock>,
    conv_out: CausalConv3d,
    /// `timestep_scale_multiplier` (1000 in the checkpoints) when conditioned.
    timestep_scale: Option<Tensor>,
    out_modulation: Option<OutModulation>,
}

impl Decoder3d {
    fn load(vb: VarBuilder, cfg: &AutoencoderKlLtxVideoConfig) -> Result<Self> {
        let causal = cfg.decoder_causal;
        let eps = cfg.resnet_norm_eps;
        let cond = cfg.timestep_conditioning;
        let p = cfg.patch_size;
        // the reference reverses every per-block list: index 0 is the lowest resolution
        let rev = |v: &[usize]| v.iter().rev().copied().collect::<Vec<_>>();
        let layers = rev(&cfg.decoder_layers_per_block);
        let scaling: Vec<bool> = cfg
            .decoder_spatio_temporal_scaling
            .iter()
            .rev()
            .copied()
            .collect();
        let residual: Vec<bool> = cfg.upsample_residual.iter().rev().copied().collect();
        let c_mid = rev(&cfg.decoder_block_out_channels)[0];
        let conv_in = CausalConv3d::load(
            vb.pp("conv_in"),
            cfg.latent_channels,
            c_mid,
            3,
            (1, 1, 1),
            causal,
        )?;
        let mid_block = MidBlock::load(vb.pp("mid_block"), c_mid, layers[0], eps, causal, cond)?;
        let mut up_blocks = Vec::new();
        let mut c_out = c_mid;
        for (i, (c_in, out, factor)) in cfg.decoder_up_channels().into_iter().enumerate() {
            c_out = out;
            let vb = vb.pp("up_blocks").pp(i);
            let conv_in = if c_in != c_out {
                Some(ResnetBlock::load(
                    vb.pp("conv_in"),
                    c_in,
                    c_out,
                    eps,
                    causal,
                    cond,
                )?)
            } else {
                None
            };
            let time_embedder = if cond {
                Some(TimeEmbedder::load(vb.pp("time_embedder"), 4 * c_in)?)
            } else {
                None
            };
            let upsampler = if scaling[i] {
                let vu = vb.pp("upsamplers").pp(0);
                Some(Upsampler3d::load(
                    vu,
                    c_out * factor,
                    causal,
                    residual[i],
                    factor,
                )?)
            } else {
                None
            };
            let resnets = (0..layers[i + 1])
                .map(|j| ResnetBlock::load(vb.pp("resnets").pp(j), c_out, c_out, eps, causal, cond))
                .collect::<Result<Vec<_>>>()?;
            up_blocks.push(UpBlock {
                conv_in,
                time_embedder,
                upsampler,
                resnets,
            });
        }
        let (timestep_scale, out_modulation) = if cond {
            let scale = vb.get((), "timestep_scale_multiplier")?;
            let m = OutModulation {
                time_embedder: TimeEmbedder::load(vb.pp("time_embedder"), 2 * c_out)?,
                scale_shift_table: vb.get((2, c_out), "scale_shift_table")?,
            };
            (Some(scale), Some(m))
        } else {
            (None, None)
        };
        Ok(Self {
            patch_size: p,
            conv_in,
            mid_block,
            up_blocks,
            conv_out: CausalConv3d::load(
                vb.pp("conv_out"),
                c_out,
                cfg.out_channels * p * p,
                3,
                (1, 1, 1),
                causal,
            )?,
            timestep_scale,
            out_modulation,
        })
    }

    /// `z` `(B, T, h, w, Z)`, `timestep` `(B,)` when conditioned -> `(B, F, H, W, C_out)`.
    pub(super) fn forward(&self, z: &Tensor, timestep: Option<&Tensor>) -> Result<Tensor> {
        let mut h = self.conv_in.forward(z)?;
        let timestep = match (&self.timestep_scale, timestep) {
            (Some(s), Some(t)) => Some(t.to_dtype(s.dtype())?.broadcast_mul(s)?),
            (Some(_), None) => {
                candle_core::bail!("this decoder is timestep-conditioned: pass a timestep (B,)")
            }
            (None, _) => None,
        };
        let timestep = timestep.as_ref();
        h = self.mid_block.forward(&h, timestep)?;
        for block in &self.up_blocks {
            h = block.forward(&h, timestep)?;
        }
        h = rms_norm(&h)?;
        if let (Some(m), Some(t)) = (&self.out_modulation, timestep) {
            let temb = m.time_embedder.forward(t, h.dtype())?;
            let (b, c2) = temb.dims2()?;
            // b (2 c) -> b 2 c, plus the learned offsets; index 0 shifts, 1 scales
            let temb = temb
                .reshape((b, 2, c2 / 2))?
                .broadcast_add(&m.scale_shift_table.unsqueeze(0)?)?;
            let shift = temb.narrow(1, 0, 1)?.reshape((b, 1, 1, 1, c2 / 2))?;
            let scale = (temb.narrow(1, 1, 1)?.reshape((b, 1, 1, 1, c2 / 2))? + 1.0)?;
            h = h.broadcast_mul(&scale)?.broadcast_add(&shift)?;
        }
        let h = self.conv_out.forward(&h.silu()?)?;
        unpatchify(&h, self.patch_size)
    }
}

/// LTX-Video's VAE. Weight names are the checkpoint's: `encoder.…`, `decoder.…`, and the
/// per-channel buffers `latents_mean`, `latents_std`.
#[derive(Clone, Debug)]
pub struct AutoencoderKlLtxVideo {
    config: AutoencoderKlLtxVideoConfig,
    pub(super) encoder: Encoder3d,
    pub(super) decoder: Decoder3d,
    pub(super) tiling: Option<TilingConfig>,
    pub(super) framewise: Option<FramewiseConfig>,
    /// `(Z,)`, f32.
    latents_mean: Tensor,
    /// `(Z,)`, f32.
    latents_std: Tensor,
}

impl AutoencoderKlLtxVideo {
    /// Builds the model from `vb` (its dtype is the compute dtype; norms run in f32).
    pub fn new(cfg: &AutoencoderKlLtxVideoConfig, vb: VarBuilder) -> Result<Self> {
        cfg.check()
            .map_err(|e| candle_core::Error::Msg(e.to_string()))?;
        let z = cfg.latent_channels;
        Ok(Self {
            config: cfg.clone(),
            encoder: Encoder3d::load(vb.pp("encoder"), cfg)?,
            decoder: Decoder3d::load(vb.pp("decoder"), cfg)?,
            tiling: None,
            framewise: None,
            latents_mean: vb.get(z, "latents_mean")?.to_dtype(DType::F32)?,
            latents_std: vb.get(z, "latents_std")?.to_dtype(DType::F32)?,
        })
    }

    /// The config it was built from.
    pub fn config(&self) -> &AutoencoderKlLtxVideoConfig {
        &self.config
    }

    /// Turns spatial tiling on (`Some`) or off (`None`, the default).
    pub fn set_tiling(&mut self, tiling: Option<TilingConfig>) {
        self.tiling = tiling;
    }

    /// Turns spatial tiling with the reference's tiles (512 px every 448) on or off, as diffusers'
    /// `enable_tiling()` / `disable_tiling()`.
    pub fn enable_tiling(&mut self, on: bool) {
        self.set_tiling(on.then(TilingConfig::default));
    }

    /// The tiling in use, if any.
    pub fn tiling(&self) -> Option<TilingConfig> {
        self.tiling
    }

    /// Turns temporal tiling on (`Some`) or off (`None`, the default).
    pub fn set_framewise(&mut self, framewise: Option<FramewiseConfig>) {
        self.framewise = framewise;
    }

    /// Encodes `video` `(B, C_in, F, H, W)` in [-1, 1] into the latent distribution, mean and
    /// log-variance each `(B, Z, T, h, w)`; with `F = 1 + k·t` and `H`, `W` multiples of `s`
    /// (`t`, `s` the temporal / spatial compression) that is `T = 1 + k`, `h = H/s`, `w = W/s`.
    /// As in the reference, other sizes work where every stage can take them (`H`, `W`
    /// multiples of `patch_size`; strided convs round up). All Z log-variances are the
    /// encoder's one extra channel, clamped to [-30, 20] as the reference does.
    pub fn encode(&self, video: &Tensor) -> Result<DiagonalGaussian> {
        let p = self.config.patch_size;
        let ok = matches!(video.dims(), &[_, c, f, h, w] if c == self.config.in_channels
            && f > 0 && h % p == 0 && w % p == 0 && h > 0 && w > 0);
        if !ok {
            candle_core::bail!(
                "expected video (B, {}, F, H, W) with H, W positive multiples of {p} (best F = 1 + {}k, H, W multiples of {}), got {:?}",
                self.config.in_channels,
                self.config.temporal_compression(),
                self.config.spatial_compression(),
                video.shape()
            )
        }
        // b c f h w -> b f h w c
        let x = video.permute((0, 2, 3, 4, 1))?.contiguous()?;
        let moments = match self.framewise {
            Some(f) if x.dim(1)? > f.tile_sample_min_num_frames => self.framewise_encode(&x, &f)?,
            _ => self.encode_frames(&x)?,
        };
        let z = self.config.latent_channels;
        // b t h w c -> b c t h w
        let to_cf = |x: Tensor| x.permute((0, 4, 1, 2, 3))?.contiguous();
        let (b, t, h, w, _) = moments.dims5()?;
        let mean = to_cf(moments.narrow(4, 0, z)?)?;
        // the reference repeats the last channel to make Z log-variances
        let logvar = moments
            .narrow(4, z, 1)?
            .clamp(-30f32, 20f32)?
            .broadcast_as((b, t, h, w, z))?;
        let logvar = to_cf(logvar.contiguous()?)?;
        Ok(DiagonalGaussian { mean, logvar })
    }

    /// Decodes latents `z` `(B, Z, T, h, w)` (already un-normalised, see
    /// [`Self::denormalize_latents`]) into a video `(B, C_out, 1 + t(T - 1), s·h, s·w)`, not
    /// clamped (the pipeline's post-processing clamps). `timestep` `(B,)` is the
    /// `decode_timestep` of a timestep-conditioned decoder (required there, ignored otherwise).
    pub fn decode(&self, z: &Tensor, timestep: Option<&Tensor>) -> Result<Tensor> {
        let dims = z.dims();
        let lc = self.config.latent_channels;
        if !matches!(dims, &[_, c, t, h, w] if c == lc && t > 0 && h > 0 && w > 0) {
            candle_core::bail!("expected latents (B, {lc}, T, h, w), got {:?}", z.shape())
        }
        if let (true, Some(t)) = (self.config.timestep_conditioning, timestep) {
            if t.dims() != [dims[0]] {
                candle_core::bail!(
                    "expected decode timestep ({},), got {:?}",
                    dims[0],
                    t.shape()
                )
            }
        }
        // b z t h w -> b t h w z
        let zc = z.permute((0, 2, 3, 4, 1))?.contiguous()?;
        let tc = self.config.temporal_compression();
        let video = match self.framewise {
            Some(f) if dims[2] > f.tile_sample_min_num_frames / tc => {
                self.framewise_decode(&zc, timestep, &f)?
            }
            _ => self.decode_frames(&zc, timestep)?,
        };
        // b f h w c -> b c f h w
        video.permute((0, 4, 1, 2, 3))?.contiguous()
    }

    /// `(latents_mean, latents_std)` as `(1, Z, 1, 1, 1)` tensors in `like`'s dtype and device
    /// (the pipeline casts the buffers to the latents' dtype too).
    fn latent_stats(&self, like: &Tensor) -> Result<(Tensor, Tensor)> {
        let z = self.config.latent_channels;
        let prep = |t: &Tensor| {
            t.reshape((1, z, 1, 1, 1))?
                .to_device(like.device())?
                .to_dtype(like.dtype())
        };
        Ok((prep(&self.latents_mean)?, prep(&self.latents_std)?))
    }

    /// Un-normalises DiT latents `(B, Z, T, h, w)` for decoding, as the LTX pipeline:
    /// `latents · std / scaling_factor + mean` per channel.
    pub fn denormalize_latents(&self, latents: &Tensor) -> Result<Tensor> {
        let (mean, std) = self.latent_stats(latents)?;
        (latents.broadcast_mul(&std)? / self.config.scaling_factor)?.broadcast_add(&mean)
    }

    /// The inverse, for encoded latents: `(latents - mean) · scaling_factor / std`.
    pub fn normalize_latents(&self, latents: &Tensor) -> Result<Tensor> {
        self.normalize_latents_scaled(latents, self.config.scaling_factor)
    }

    /// `(latents - mean) · scaling_factor / std` with the given factor: the image-to-video
    /// pipeline normalises its first frame with 1.0, not the config's (diffusers 0.42.1).
    pub fn normalize_latents_scaled(
        &self,
        latents: &Tensor,
        scaling_factor: f64,
    ) -> Result<Tensor> {
        let (mean, std) = self.latent_stats(latents)?;
        (latents.broadcast_sub(&mean)? * scaling_factor)?.broadcast_div(&std)
    }

    /// The pipeline's decode noise: `(1 - s) · latents + s · noise` with one `s` per batch
    /// element (`decode_noise_scale`, which defaults to `decode_timestep` there). `noise` is
    /// standard normal, shaped like `latents`; the reference draws it from PyTorch's global RNG.
    pub fn add_decode_noise(
        latents: &Tensor,
        noise: &Tensor,
        decode_noise_scale: &[f64],
    ) -> Result<Tensor> {
        let b = latents.dim(0)?;
        if decode_noise_scale.len() != b || noise.dims() != latents.dims() {
            candle_core::bail!(
                "decode noise: {} scales and noise {:?} for latents {:?}",
                decode_noise_scale.len(),
                noise.shape(),
                latents.shape()
            )
        }
        let s: Vec<f32> = decode_noise_scale.iter().map(|&v| v as f32).collect();
        let s =
            Tensor::from_vec(s, (b, 1, 1, 1, 1), latents.device())?.to_dtype(latents.dtype())?;
        let keep = s.affine(-1.0, 1.0)?; // 1 - s
        latents.broadcast_mul(&keep)? + noise.broadcast_mul(&s)?
    }
}
