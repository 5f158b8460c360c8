//! LTX-Video's VAE, diffusers' `AutoencoderKLLTXVideo`: video `(B, 3, F, H, W)` in [-1, 1] ⇄
//! latents `(B, Z, T, H/32, W/32)` with `T = (F - 1) / 8 + 1` (the published configs).
//!
//! The encoder patchifies pixels (4x4 → channels), then causal 3D conv blocks down-sample space
//! and time; the decoder mirrors it and, from 0.9.1 on, is conditioned on a timestep
//! (`decode_timestep`) through AdaLN-style shift/scale in its resnets. Both run over the whole
//! clip at once, as the reference does (no frame cache: its convs pad time with copies of the
//! edge frames, so there is no chunked formulation that gives the same numbers); memory grows
//! with the clip. The reference's optional spatial tiling and framewise (temporal tiling)
//! modes are not ported yet. The layers live in `vae_blocks.rs`.

use std::path::Path;

use candle_core::{DType, Result, Tensor};
use candle_nn::VarBuilder;
use serde::{Deserialize, Serialize};

use super::vae_blocks::{
    patchify, rms_norm, unpatchify, CausalConv3d, DownBlock, Downsample, Downsampler3d, MidBlock,
    ResnetBlock, TimeEmbedder, UpBlock, Upsampler3d,
};
pub use crate::families::wan::vae::DiagonalGaussian;

/// The `config.json` of a diffusers `AutoencoderKLLTXVideo`; keys verbatim, defaults from its
/// `__init__` (the LTX-Video 0.9.0 VAE).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AutoencoderKlLtxVideoConfig {
    /// Video channels in (3).
    #[serde(default = "defaults::three")]
    pub in_channels: usize,
    /// Video channels out (3).
    #[serde(default = "defaults::three")]
    pub out_channels: usize,
    /// Latent channels `Z` (128).
    #[serde(default = "defaults::latent_channels")]
    pub latent_channels: usize,
    /// Encoder channels per block ([128, 256, 512, 512]).
    #[serde(default = "defaults::block_out_channels")]
    pub block_out_channels: Vec<usize>,
    /// `LTXVideoDownBlock3D` (0.9.0) or `LTXVideo095DownBlock3D` (0.9.5) per encoder block.
    #[serde(default = "defaults::down_block_types")]
    pub down_block_types: Vec<String>,
    /// Decoder channels per block, listed from full resolution down ([128, 256, 512, 512]).
    #[serde(default = "defaults::block_out_channels")]
    pub decoder_block_out_channels: Vec<usize>,
    /// Resnets per encoder block, the last entry for the mid block ([4, 3, 3, 3, 4]).
    #[serde(default = "defaults::layers_per_block")]
    pub layers_per_block: Vec<usize>,
    /// Resnets per decoder block, the last entry for the mid block ([4, 3, 3, 3, 4]).
    #[serde(default = "defaults::layers_per_block")]
    pub decoder_layers_per_block: Vec<usize>,
    /// Which encoder blocks down-sample ([true, true, true, false]).
    #[serde(default = "defaults::scaling")]
    pub spatio_temporal_scaling: Vec<bool>,
    /// Which decoder blocks up-sample, from full resolution down ([true, true, true, false]).
    #[serde(default = "defaults::scaling")]
    pub decoder_spatio_temporal_scaling: Vec<bool>,
    /// Random noise injected into decoder resnets; only all-`false` is supported.
    #[serde(default = "defaults::inject_noise")]
    pub decoder_inject_noise: Vec<bool>,
    /// Down-sampling of 0.9.5 blocks: `conv`, `spatial`, `temporal` or `spatiotemporal`.
    #[serde(default = "defaults::downsample_type")]
    pub downsample_type: Vec<String>,
    /// Whether each decoder up-sampler adds its depth-to-space input ([false; 4]).
    #[serde(default = "defaults::four_false")]
    pub upsample_residual: Vec<bool>,
    /// Channel reduction of each decoder up-sampler ([1, 1, 1, 1]).
    #[serde(default = "defaults::upsample_factor")]
    pub upsample_factor: Vec<usize>,
    /// Whether the decoder takes a timestep (0.9.1+) (false).
    #[serde(default)]
    pub timestep_conditioning: bool,
    /// Pixels per side of a spatial patch (4).
    #[serde(default = "defaults::patch_size")]
    pub patch_size: usize,
    /// Frames per temporal patch; only 1 works in the reference and here.
    #[serde(default = "defaults::one")]
    pub patch_size_t: usize,
    /// Epsilon of the shortcut layer norms (1e-6).
    #[serde(default = "defaults::resnet_norm_eps")]
    pub resnet_norm_eps: f64,
    /// Latent scaling used by [`AutoencoderKlLtxVideo::normalize_latents`] (1.0).
    #[serde(default = "defaults::scaling_factor")]
    pub scaling_factor: f64,
    /// Whether encoder convs pad time with the first frame only (true).
    #[serde(default = "defaults::yes")]
    pub encoder_causal: bool,
    /// Whether decoder convs pad time with the first frame only (false).
    #[serde(default)]
    pub decoder_causal: bool,
    /// Overrides `patch_size · 2^(down-sampling blocks)`.
    #[serde(default)]
    pub spatial_compression_ratio: Option<usize>,
    /// Overrides `patch_size_t · 2^(down-sampling blocks)`.
    #[serde(default)]
    pub temporal_compression_ratio: Option<usize>,
}

mod defaults {
    pub fn three() -> usize {
        3
    }
    pub fn one() -> usize {
        1
    }
    pub fn yes() -> bool {
        true
    }
    pub fn latent_channels() -> usize {
        128
    }
    pub fn block_out_channels() -> Vec<usize> {
        vec![128, 256, 512, 512]
    }
    pub fn down_block_types() -> Vec<String> {
        vec!["LTXVideoDownBlock3D".into(); 4]
    }
    pub fn layers_per_block() -> Vec<usize> {
        vec![4, 3, 3, 3, 4]
    }
    pub fn scaling() -> Vec<bool> {
        vec![true, true, true, false]
    }
    pub fn inject_noise() -> Vec<bool> {
        vec![false; 5]
    }
    pub fn downsample_type() -> Vec<String> {
        vec!["conv".into(); 4]
    }
    pub fn four_false() -> Vec<bool> {
        vec![false; 4]
    }
    pub fn upsample_factor() -> Vec<usize> {
        vec![1; 4]
    }
    pub fn patch_size() -> usize {
        4
    }
    pub fn resnet_norm_eps() -> f64 {
        1e-6
    }
    pub fn scaling_factor() -> f64 {
        1.0
    }
}

impl Default for AutoencoderKlLtxVideoConfig {
    fn default() -> Self {
        serde_json::from_str("{}").expect("every field has a default")
    }
}

const DOWN_0_9_0: &str = "LTXVideoDownBlock3D";
const DOWN_0_9_5: &str = "LTXVideo095DownBlock3D";

impl AutoencoderKlLtxVideoConfig {
    /// Reads and checks `config.json`.
    pub fn from_file(path: impl AsRef<Path>) -> crate::Result<Self> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|e| crate::Error::io(path, e))?;
        let cfg: Self = serde_json::from_str(&text).map_err(|e| crate::Error::BadConfig {
            path: path.to_path_buf(),
            reason: e.to_string(),
        })?;
        cfg.check()?;
        Ok(cfg)
    }

    /// 0.9.5 configs name `LTXVideo095DownBlock3D` last; they have one encoder block fewer.
    fn is_ltx_095(&self) -> bool {
        self.down_block_types.last().map(String::as_str) == Some(DOWN_0_9_5)
    }

    /// Number of encoder down blocks.
    fn num_down_blocks(&self) -> usize {
        self.block_out_channels
            .len()
            .saturating_sub(usize::from(self.is_ltx_095()))
    }

    /// Rejects what this port does not implement and lists too short for the block counts.
    pub fn check(&self) -> crate::Result<()> {
        let unsupported = |name: String, supported: &str| crate::Error::Unsupported {
            what: "AutoencoderKLLTXVideo feature",
            name,
            supported: supported.into(),
        };
        if self.patch_size_t != 1 {
            return Err(unsupported(
                format!("patch_size_t={}", self.patch_size_t),
                "patch_size_t=1 (the reference's conv_in does not take temporal patches either)",
            ));
        }
        if self.decoder_inject_noise.iter().any(|&b| b) {
            return Err(unsupported(
                "decoder_inject_noise=true".into(),
                "decoder_inject_noise all false (its noise comes from PyTorch's global RNG)",
            ));
        }
        let n = self.num_down_blocks();
        for (i, t) in self.down_block_types.iter().take(n).enumerate() {
            if t != DOWN_0_9_0 && t != DOWN_0_9_5 {
                return Err(unsupported(
                    format!("down_block_types[{i}]={t}"),
                    "LTXVideoDownBlock3D, LTXVideo095DownBlock3D",
                ));
            }
            let kind = match (t.as_str(), self.downsample_type.get(i)) {
                (DOWN_0_9_5, None) => {
                    return Err(crate::Error::InvalidRequest(format!(
                        "AutoencoderKLLTXVideo config: downsample_type has no entry for block {i}"
                    )))
                }
                (_, kind) => kind.map(String::as_str).unwrap_or("conv"),
            };
            if t == DOWN_0_9_5
                && self.spatio_temporal_scaling.get(i) == Some(&true)
                && downsample_stride(kind).is_none()
            {
                return Err(unsupported(
                    format!("downsample_type[{i}]={kind}"),
                    "conv, spatial, temporal, spatiotemporal",
                ));
            }
        }
        let bad = |reason: String| {
            crate::Error::InvalidRequest(format!("AutoencoderKLLTXVideo config: {reason}"))
        };
        let too_short = |name: &str, len: usize, need: usize| {
            bad(format!("{name} has {len} entries, needs at least {need}"))
        };
        if n == 0 || self.latent_channels == 0 || self.patch_size == 0 {
            return Err(bad(
                "block_out_channels, latent_channels and patch_size must be non-empty / positive"
                    .into(),
            ));
        }
        let m = self.decoder_block_out_channels.len();
        let lists = [
            ("down_block_types", self.down_block_types.len(), n),
            ("layers_per_block", self.layers_per_block.len(), n + 1),
            (
                "spatio_temporal_scaling",
                self.spatio_temporal_scaling.len(),
                n,
            ),
            ("decoder_block_out_channels", m, 1),
            (
                "decoder_layers_per_block",
                self.decoder_layers_per_block.len(),
                m + 1,
            ),
            (
                "decoder_spatio_temporal_scaling",
                self.decoder_spatio_temporal_scaling.len(),
                m,
            ),
            ("upsample_residual", self.upsample_residual.len(), m),
            ("upsample_factor", self.upsample_factor.len(), m),
        ];
        for (name, len, need) in lists {
            if len < need {
                return Err(too_short(name, len, need));
            }
        }
        if self.upsample_factor.contains(&0) {
            return Err(bad("upsample_factor entries must be positive".into()));
        }
        // an up block with a channel-changing conv_in hands it the raw timestep, which fails
        // in the reference; no published checkpoint has one
        if self.timestep_conditioning
            && self
                .decoder_up_channels()
                .iter()
                .any(|&(c_in, c_out, _)| c_in != c_out)
        {
            return Err(unsupported(
                "timestep_conditioning with a channel-changing decoder up block".into(),
                "conditioned decoders whose up blocks keep block_out_channels[i] / upsample_factor[i]",
            ));
        }
        Ok(())
    }

    /// Per decoder up block, from the lowest resolution: `(nominal C_in, C_out, factor)` as the
    /// reference computes them (the lists reversed; `C_in` is only used by `conv_in`).
    fn decoder_up_channels(&self) -> Vec<(usize, usize, usize)> {
        let channels: Vec<usize> = self
            .decoder_block_out_channels
            .iter()
            .rev()
            .copied()
            .collect();
        let factors: Vec<usize> = self.upsample_factor.iter().rev().copied().collect();
        let mut out = Vec::new();
        let mut c = channels[0];
        for (i, &ch) in channels.iter().enumerate() {
            let f = factors[i];
            out.push((c / f, ch / f, f));
            c = ch / f;
        }
        out
    }

    /// Pixels per latent pixel along H and W: `spatial_compression_ratio`, else
    /// `patch_size · 2^(scaling blocks)`, as the reference.
    pub fn spatial_compression(&self) -> usize {
        let scaled = self.spatio_temporal_scaling.iter().filter(|&&s| s).count() as u32;
        self.spatial_compression_ratio
            .unwrap_or(self.patch_size * 2usize.pow(scaled))
    }

    /// Pixel frames per latent frame after the first: `temporal_compression_ratio`, else
    /// `patch_size_t · 2^(scaling blocks)`.
    pub fn temporal_compression(&self) -> usize {
        let scaled = self.spatio_temporal_scaling.iter().filter(|&&s| s).count() as u32;
        self.temporal_compression_ratio
            .unwrap_or(self.patch_size_t * 2usize.pow(scaled))
    }
}

/// The stride of a 0.9.5 `downsample_type` that uses `LTXVideoDownsampler3d`; `None` for an
/// unknown name. `conv` has none (a strided conv instead).
fn downsample_stride(kind: &str) -> Option<Option<(usize, usize, usize)>> {
    match kind {
        "conv" => Some(None),
        "spatial" => Some(Some((1, 2, 2))),
        "temporal" => Some(Some((2, 1, 1))),
        "spatiotemporal" => Some(Some((2, 2, 2))),
        _ => None,
    }
}

/// `LTXVideoEncoder3d`: patchify, `conv_in`, down blocks, mid block, RMS norm, SiLU, `conv_out`
/// to `Z + 1` channels (Z means and one shared log-variance).
#[derive(Clone, Debug)]
struct Encoder3d {
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
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
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
struct Decoder3d {
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
    fn forward(&self, z: &Tensor, timestep: Option<&Tensor>) -> Result<Tensor> {
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
    encoder: Encoder3d,
    decoder: Decoder3d,
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
            latents_mean: vb.get(z, "latents_mean")?.to_dtype(DType::F32)?,
            latents_std: vb.get(z, "latents_std")?.to_dtype(DType::F32)?,
        })
    }

    /// The config it was built from.
    pub fn config(&self) -> &AutoencoderKlLtxVideoConfig {
        &self.config
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
        let moments = self.encoder.forward(&x)?;
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
        let video = self.decoder.forward(&zc, timestep)?;
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
        let (mean, std) = self.latent_stats(latents)?;
        (latents.broadcast_sub(&mean)? * self.config.scaling_factor)?.broadcast_div(&std)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_config_is_the_0_9_0_vae() {
        let cfg = AutoencoderKlLtxVideoConfig::default();
        assert_eq!(cfg.latent_channels, 128);
        assert_eq!(
            (cfg.spatial_compression(), cfg.temporal_compression()),
            (32, 8)
        );
        cfg.check().expect("defaults are supported");
        // (C_in, C_out, factor) of the up blocks, lowest resolution first
        assert_eq!(
            cfg.decoder_up_channels(),
            vec![(512, 512, 1), (512, 512, 1), (512, 256, 1), (256, 128, 1)]
        );
    }

    #[test]
    fn unsupported_features_are_named() {
        let cfg: AutoencoderKlLtxVideoConfig =
            serde_json::from_str(r#"{"patch_size_t": 2}"#).unwrap();
        assert!(cfg
            .check()
            .unwrap_err()
            .to_string()
            .contains("patch_size_t=2"));
        let cfg: AutoencoderKlLtxVideoConfig =
            serde_json::from_str(r#"{"decoder_inject_noise": [true, false, false, false, false]}"#)
                .unwrap();
        assert!(cfg
            .check()
            .unwrap_err()
            .to_string()
            .contains("decoder_inject_noise"));
        let cfg: AutoencoderKlLtxVideoConfig =
            serde_json::from_str(r#"{"timestep_conditioning": true}"#).unwrap();
        assert!(cfg
            .check()
            .unwrap_err()
            .to_string()
            .contains("timestep_conditioning"));
    }

    #[test]
    fn ltx_0_9_1_decoder_channels() {
        let cfg: AutoencoderKlLtxVideoConfig = serde_json::from_str(
            r#"{"decoder_block_out_channels": [256, 512, 1024], "decoder_layers_per_block": [5, 6, 7, 8],
                "decoder_spatio_temporal_scaling": [true, true, true], "upsample_factor": [2, 2, 2],
                "upsample_residual": [true, true, true], "timestep_conditioning": true,
                "decoder_inject_noise": [false, false, false, false]}"#,
        )
        .unwrap();
        cfg.check().expect("0.9.1 is supported");
        assert_eq!(
            cfg.decoder_up_channels(),
            vec![(512, 512, 2), (256, 256, 2), (128, 128, 2)]
        );
    }
}
