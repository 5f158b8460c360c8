//! Wan2.1's 3D causal VAE, diffusers' `AutoencoderKLWan`: video `(B, 3, F, H, W)` in [-1, 1] ⇄
//! latents `(B, Z, T, H/8, W/8)` with `T = (F - 1) / 4 + 1`.
//!
//! Both directions run chunk by chunk in time exactly as the reference does (encode: the first
//! frame alone, then 4 frames at a time; decode: one latent frame at a time), carrying each
//! causal conv's last frames in a [`FeatCache`](super::vae_blocks::FeatCache), so memory stays
//! bounded by one chunk at full resolution and results match the reference. Large frames can be
//! split into overlapping spatial tiles with linear blending ([`TilingConfig`], diffusers'
//! `enable_tiling`). The layers live in `vae_blocks.rs`; they run channels-last.

use std::path::Path;

use candle_core::{DType, Result, Tensor};
use candle_nn::VarBuilder;
use serde::{Deserialize, Serialize};

use super::vae_blocks::{Decoder3d, Dims, Encoder3d, FeatCache};
use crate::nn::conv3d::CausalConv3d;

/// Pixel frames per encoder chunk after the first (hard-coded in the reference as well).
const ENCODE_CHUNK: usize = 4;

/// The `config.json` of a diffusers `AutoencoderKLWan`; keys verbatim, defaults from its
/// `__init__` (the Wan2.1 VAE).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AutoencoderKlWanConfig {
    /// Encoder channels at full resolution (96).
    #[serde(default = "defaults::base_dim")]
    pub base_dim: usize,
    /// Decoder base channels; `null` means `base_dim`.
    #[serde(default)]
    pub decoder_base_dim: Option<usize>,
    /// Latent channels `Z` (16).
    #[serde(default = "defaults::z_dim")]
    pub z_dim: usize,
    /// Channel multiplier per resolution stage ([1, 2, 4, 4]); stages after the first halve H, W.
    #[serde(default = "defaults::dim_mult")]
    pub dim_mult: Vec<usize>,
    /// Residual blocks per encoder stage (the decoder has one more) (2).
    #[serde(default = "defaults::num_res_blocks")]
    pub num_res_blocks: usize,
    /// Encoder scales (1, 0.5, …) that get an attention block after each residual block ([]).
    #[serde(default)]
    pub attn_scales: Vec<f64>,
    /// Which down-sampling stages also halve time ([false, true, true]); the decoder mirrors it.
    #[serde(default = "defaults::temperal_downsample")]
    pub temperal_downsample: Vec<bool>,
    /// Training-only; ignored at inference (0.0).
    #[serde(default)]
    pub dropout: f64,
    /// Per-channel latent mean, used by [`AutoencoderKlWan::denormalize_latents`].
    #[serde(default = "defaults::latents_mean")]
    pub latents_mean: Vec<f64>,
    /// Per-channel latent standard deviation.
    #[serde(default = "defaults::latents_std")]
    pub latents_std: Vec<f64>,
    /// Wan2.2's residual down/up blocks; not supported (false).
    #[serde(default)]
    pub is_residual: bool,
    /// Video channels in (3).
    #[serde(default = "defaults::three")]
    pub in_channels: usize,
    /// Video channels out (3).
    #[serde(default = "defaults::three")]
    pub out_channels: usize,
    /// Wan2.2's pixel patchify; only `null` (or 1) is supported.
    #[serde(default)]
    pub patch_size: Option<usize>,
    /// Frames per latent frame (4).
    #[serde(default = "defaults::scale_factor_temporal")]
    pub scale_factor_temporal: Option<usize>,
    /// Pixels per latent pixel (8); sets the tile sizes in latent units, as in the reference.
    #[serde(default = "defaults::scale_factor_spatial")]
    pub scale_factor_spatial: Option<usize>,
}

mod defaults {
    pub fn base_dim() -> usize {
        96
    }
    pub fn z_dim() -> usize {
        16
    }
    pub fn dim_mult() -> Vec<usize> {
        vec![1, 2, 4, 4]
    }
    pub fn num_res_blocks() -> usize {
        2
    }
    pub fn temperal_downsample() -> Vec<bool> {
        vec![false, true, true]
    }
    pub fn three() -> usize {
        3
    }
    pub fn scale_factor_temporal() -> Option<usize> {
        Some(4)
    }
    pub fn scale_factor_spatial() -> Option<usize> {
        Some(8)
    }
    pub fn latents_mean() -> Vec<f64> {
        vec![
            -0.7571, -0.7089, -0.9113, 0.1075, -0.1745, 0.9653, -0.1517, 1.5508, 0.4134, -0.0715,
            0.5517, -0.3632, -0.1922, -0.9497, 0.2503, -0.2921,
        ]
    }
    pub fn latents_std() -> Vec<f64> {
        vec![
            2.8184, 1.4541, 2.3275, 2.6558, 1.2196, 1.7708, 2.6052, 2.0743, 3.2687, 2.1526, 2.8652,
            1.5579, 1.6382, 1.1253, 2.8251, 1.9160,
        ]
    }
}

impl Default for AutoencoderKlWanConfig {
    fn default() -> Self {
        serde_json::from_str("{}").expect("every field has a default")
    }
}

impl AutoencoderKlWanConfig {
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

    /// Rejects what this port does not implement (Wan2.2's VAE) and inconsistent sizes.
    pub fn check(&self) -> crate::Result<()> {
        let unsupported = |name: String| crate::Error::Unsupported {
            what: "AutoencoderKLWan feature",
            name,
            supported: "the Wan2.1 VAE (is_residual=false, patch_size=null)".into(),
        };
        if self.is_residual {
            return Err(unsupported(
                "is_residual=true (Wan2.2 residual blocks)".into(),
            ));
        }
        if let Some(p) = self.patch_size.filter(|&p| p != 1) {
            return Err(unsupported(format!("patch_size={p} (Wan2.2 patchify)")));
        }
        let bad = |reason: String| {
            crate::Error::InvalidRequest(format!("AutoencoderKLWan config: {reason}"))
        };
        if self.dim_mult.is_empty() || self.base_dim == 0 || self.z_dim == 0 {
            return Err(bad(
                "base_dim, z_dim and dim_mult must be non-empty / positive".into(),
            ));
        }
        if self.temperal_downsample.len() + 1 != self.dim_mult.len() {
            return Err(bad(format!(
                "temperal_downsample has {} entries, expected len(dim_mult) - 1 = {}",
                self.temperal_downsample.len(),
                self.dim_mult.len() - 1
            )));
        }
        Ok(())
    }

    /// Pixels per latent pixel along H and W, from the architecture (`2^(stages - 1)`).
    pub fn spatial_compression(&self) -> usize {
        1 << (self.dim_mult.len() - 1)
    }

    /// Frames per latent frame after the first (`2^(temporal down-samplings)`).
    pub fn temporal_compression(&self) -> usize {
        1 << self.temperal_downsample.iter().filter(|&&d| d).count()
    }
}

/// Spatial tiling of `encode`/`decode`, diffusers' `enable_tiling`: tiles of
/// `tile_sample_min_*` pixels every `tile_sample_stride_*` pixels, overlaps blended linearly.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TilingConfig {
    /// Tile height in pixels; taller frames are tiled (256).
    pub tile_sample_min_height: usize,
    /// Tile width in pixels; wider frames are tiled (256).
    pub tile_sample_min_width: usize,
    /// Vertical distance between tiles in pixels (192).
    pub tile_sample_stride_height: usize,
    /// Horizontal distance between tiles in pixels (192).
    pub tile_sample_stride_width: usize,
}

impl Default for TilingConfig {
    fn default() -> Self {
        Self {
            tile_sample_min_height: 256,
            tile_sample_min_width: 256,
            tile_sample_stride_height: 192,
            tile_sample_stride_width: 192,
        }
    }
}

/// The encoder's output distribution (`DiagonalGaussianDistribution`), each `(B, Z, T, h, w)`.
#[derive(Clone, Debug)]
pub struct DiagonalGaussian {
    /// The mean, also the distribution's mode.
    pub mean: Tensor,
    /// Log-variance, clamped to [-30, 20] as the reference does.
    pub logvar: Tensor,
}

impl DiagonalGaussian {
    /// `exp(logvar / 2)`.
    pub fn std(&self) -> Result<Tensor> {
        (&self.logvar * 0.5)?.exp()
    }

    /// `mean + std * noise` for standard-normal `noise` of the same shape.
    pub fn sample(&self, noise: &Tensor) -> Result<Tensor> {
        &self.mean + (self.std()? * noise)?
    }

    /// Splits channels-last encoder moments `(B, T, h, w, 2Z)` — mean then log-variance — into
    /// `(B, Z, T, h, w)` halves, the log-variance clamped to [-30, 20] as the reference does.
    pub fn from_moments(moments: &Tensor, z: usize) -> Result<Self> {
        // b t h w (2 z) -> b (2 z) t h w
        let moments = moments.permute((0, 4, 1, 2, 3))?;
        Ok(Self {
            mean: moments.narrow(1, 0, z)?.contiguous()?,
            logvar: moments
                .narrow(1, z, z)?
                .clamp(-30f32, 20f32)?
                .contiguous()?,
        })
    }
}

/// Wan2.1's VAE. Weight names are the checkpoint's: `encoder.…`, `quant_conv`,
/// `post_quant_conv`, `decoder.…`.
#[derive(Clone, Debug)]
pub struct AutoencoderKlWan {
    config: AutoencoderKlWanConfig,
    /// The encoder and its `quant_conv`; `None` when built for decoding only.
    encoder: Option<(Encoder3d, CausalConv3d)>,
    post_quant_conv: CausalConv3d,
    decoder: Decoder3d,
    tiling: Option<TilingConfig>,
}

impl AutoencoderKlWan {
    /// Builds the model from `vb` (its dtype is the compute dtype; norms run in f32).
    pub fn new(cfg: &AutoencoderKlWanConfig, vb: VarBuilder) -> Result<Self> {
        Self::build(cfg, vb, true)
    }

    /// The decoder half only (text-to-video never encodes): the encoder's weights, about 40 %
    /// of Wan2.1's VAE, are not read. [`Self::encode`] then fails.
    pub fn decoder_only(cfg: &AutoencoderKlWanConfig, vb: VarBuilder) -> Result<Self> {
        Self::build(cfg, vb, false)
    }

    /// Checkpoint tensors [`Self::decoder_only`] leaves unread (name prefixes).
    pub const ENCODER_PREFIXES: &'static [&'static str] = &["encoder.", "quant_conv."];

    /// Whether it can encode (built with [`Self::new`]).
    pub fn has_encoder(&self) -> bool {
        self.encoder.is_some()
    }

    fn build(cfg: &AutoencoderKlWanConfig, vb: VarBuilder, with_encoder: bool) -> Result<Self> {
        cfg.check()
            .map_err(|e| candle_core::Error::Msg(e.to_string()))?;
        let z = cfg.z_dim;
        let temporal_up: Vec<bool> = cfg.temperal_downsample.iter().rev().copied().collect();
        let enc = Dims {
            in_channels: cfg.in_channels,
            base: cfg.base_dim,
            z,
            dim_mult: &cfg.dim_mult,
            num_res_blocks: cfg.num_res_blocks,
            attn_scales: &cfg.attn_scales,
            temporal: &cfg.temperal_downsample,
        };
        let dec = Dims {
            in_channels: cfg.out_channels,
            base: cfg.decoder_base_dim.unwrap_or(cfg.base_dim),
            temporal: &temporal_up,
            ..enc
        };
        let conv1 = |vb, c| CausalConv3d::load(vb, c, c, (1, 1, 1), (1, 1, 1), (0, 0, 0));
        Ok(Self {
            config: cfg.clone(),
            encoder: if with_encoder {
                Some((
                    Encoder3d::load(vb.pp("encoder"), &enc)?,
                    conv1(vb.pp("quant_conv"), 2 * z)?,
                ))
            } else {
                None
            },
            post_quant_conv: conv1(vb.pp("post_quant_conv"), z)?,
            decoder: Decoder3d::load(vb.pp("decoder"), &dec)?,
            tiling: None,
        })
    }

    /// The config it was built from.
    pub fn config(&self) -> &AutoencoderKlWanConfig {
        &self.config
    }

    /// Turns spatial tiling on (`Some`) or off (`None`, the default).
    pub fn set_tiling(&mut self, tiling: Option<TilingConfig>) {
        self.tiling = tiling;
    }

    /// Turns spatial tiling with the reference's tiles (256 px every 192) on or off, as diffusers'
    /// `enable_tiling()` / `disable_tiling()`.
    pub fn enable_tiling(&mut self, on: bool) {
        self.set_tiling(on.then(TilingConfig::default));
    }

    /// The tiling in use, if any.
    pub fn tiling(&self) -> Option<TilingConfig> {
        self.tiling
    }

    /// Encodes `video` `(B, C_in, F, H, W)` in [-1, 1], `F = 1 + 4k`, `H` and `W` multiples of
    /// 8, into the latent distribution, mean and log-variance each `(B, Z, 1 + k, H/8, W/8)`.
    pub fn encode(&self, video: &Tensor) -> Result<DiagonalGaussian> {
        let s = self.config.spatial_compression();
        let dims = video.dims();
        let ok = matches!(dims, &[_, c, f, h, w] if c == self.config.in_channels
            && f % ENCODE_CHUNK == 1 && h % s == 0 && w % s == 0 && h > 0 && w > 0);
        if !ok {
            candle_core::bail!(
                "expected video (B, {}, F, H, W) with F = 1 + 4k and H, W multiples of {s}, got {:?}",
                self.config.in_channels,
                video.shape()
            )
        }
        let (_, _, _, h, w) = video.dims5()?;
        let moments = match self.tiling {
            Some(t) if h > t.tile_sample_min_height || w > t.tile_sample_min_width => {
                super::vae_tiling::tiled_encode(self, video, &t)?
            }
            _ => self.encode_tile(video)?,
        };
        DiagonalGaussian::from_moments(&moments, self.config.z_dim)
    }

    /// Encodes one tile `(B, C_in, F, H, W)` chunk by chunk into channels-last moments
    /// `(B, T, h, w, 2Z)` (after `quant_conv`).
    pub(crate) fn encode_tile(&self, video: &Tensor) -> Result<Tensor> {
        let Some((encoder, quant_conv)) = &self.encoder else {
            candle_core::bail!(
                "this VAE was built for decoding only (AutoencoderKlWan::decoder_only); \
                 build it with AutoencoderKlWan::new to encode"
            )
        };
        let frames = video.dim(2)?;
        let mut cache = FeatCache::default();
        let mut outs = Vec::new();
        let mut t0 = 0;
        while t0 < frames {
            // the first frame alone, then 4 frames per chunk
            let n = if t0 == 0 {
                1
            } else {
                ENCODE_CHUNK.min(frames - t0)
            };
            // b c t h w -> b t h w c
            let chunk = video
                .narrow(2, t0, n)?
                .permute((0, 2, 3, 4, 1))?
                .contiguous()?;
            cache.start_chunk();
            let out = encoder.forward(&chunk, &mut cache)?;
            outs.push(quant_conv.forward_cl(&out, None)?);
            t0 += n;
        }
        Tensor::cat(&outs, 1)
    }

    /// Decodes latents `z` `(B, Z, T, h, w)` (already un-normalised, see
    /// [`Self::denormalize_latents`]) into a video `(B, C_out, 1 + 4(T - 1), 8h, 8w)` in [-1, 1].
    pub fn decode(&self, z: &Tensor) -> Result<Tensor> {
        self.decode_with_progress(z, &mut |_, _| {})
    }

    /// [`Self::decode`], calling `progress(done, total)` after each latent frame (of each tile).
    pub fn decode_with_progress(
        &self,
        z: &Tensor,
        progress: &mut dyn FnMut(usize, usize),
    ) -> Result<Tensor> {
        let dims = z.dims();
        if !matches!(dims, &[_, c, t, h, w] if c == self.config.z_dim && t > 0 && h > 0 && w > 0) {
            candle_core::bail!(
                "expected latents (B, {}, T, h, w), got {:?}",
                self.config.z_dim,
                z.shape()
            )
        }
        let (_, _, _, h, w) = z.dims5()?;
        let s = self.tile_scale();
        let video = match self.tiling {
            Some(t) if h > t.tile_sample_min_height / s || w > t.tile_sample_min_width / s => {
                super::vae_tiling::tiled_decode(self, z, &t, progress)?
            }
            _ => self.decode_tile(z, &mut |i| progress(i, z.dim(2).unwrap_or(0)))?,
        };
        // b f h w c -> b c f h w
        video
            .clamp(-1f32, 1f32)?
            .permute((0, 4, 1, 2, 3))?
            .contiguous()
    }

    /// Decodes one tile `(B, Z, T, h, w)` latent frame by latent frame into channels-last,
    /// unclamped `(B, F, 8h, 8w, C_out)`; `done(i)` after frame `i` (1-based).
    pub(crate) fn decode_tile(&self, z: &Tensor, done: &mut dyn FnMut(usize)) -> Result<Tensor> {
        let frames = z.dim(2)?;
        let mut cache = FeatCache::default();
        let mut outs = Vec::with_capacity(frames);
        for i in 0..frames {
            // b z 1 h w -> b 1 h w z
            let zi = z.narrow(2, i, 1)?.permute((0, 2, 3, 4, 1))?.contiguous()?;
            let x = self.post_quant_conv.forward_cl(&zi, None)?;
            cache.start_chunk();
            outs.push(self.decoder.forward(&x, &mut cache)?);
            done(i + 1);
        }
        Tensor::cat(&outs, 1)
    }

    /// Pixels per latent pixel for tile sizes: the config's `scale_factor_spatial` as in the
    /// reference, else the architecture's.
    pub(crate) fn tile_scale(&self) -> usize {
        self.config
            .scale_factor_spatial
            .unwrap_or_else(|| self.config.spatial_compression())
    }

    /// `(latents_mean, 1 / latents_std)` as `(1, Z, 1, 1, 1)` f32 tensors on `like`'s device.
    fn latent_stats(&self, like: &Tensor) -> Result<(Tensor, Tensor)> {
        let z = self.config.z_dim;
        let (mean, std) = (&self.config.latents_mean, &self.config.latents_std);
        if mean.len() != z || std.len() != z {
            candle_core::bail!(
                "latents_mean / latents_std have {} / {} entries, expected z_dim = {z}",
                mean.len(),
                std.len()
            )
        }
        let to_t = |v: &[f64]| {
            let v: Vec<f32> = v.iter().map(|&x| x as f32).collect();
            Tensor::from_vec(v, (1, z, 1, 1, 1), like.device())
        };
        // the reference keeps `1 / std` in f32 and divides by it
        Ok((to_t(mean)?, to_t(std)?.recip()?))
    }

    /// Un-normalises DiT latents `(B, Z, T, h, w)` for decoding: `latents / (1 / std) + mean`
    /// per channel, as the Wan pipeline does.
    pub fn denormalize_latents(&self, latents: &Tensor) -> Result<Tensor> {
        let (mean, inv_std) = self.latent_stats(latents)?;
        let x = latents.to_dtype(DType::F32)?.broadcast_div(&inv_std)?;
        x.broadcast_add(&mean)?.to_dtype(latents.dtype())
    }

    /// The inverse, for encoded latents: `(latents - mean) * (1 / std)` per channel.
    pub fn normalize_latents(&self, latents: &Tensor) -> Result<Tensor> {
        let (mean, inv_std) = self.latent_stats(latents)?;
        let x = latents.to_dtype(DType::F32)?.broadcast_sub(&mean)?;
        x.broadcast_mul(&inv_std)?.to_dtype(latents.dtype())
    }
}
