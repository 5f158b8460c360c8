//! CogVideoX's 3D causal VAE, diffusers' `AutoencoderKLCogVideoX`: video `(B, 3, F, H, W)` in
//! [-1, 1] ⇄ latents `(B, Z, T, H/8, W/8)`, `F = 4(T - 1) + 1` for the published models.
//!
//! Both directions run chunk by chunk in time exactly as the reference does, because the result
//! depends on it: the group norms and the temporal down/up sampling see one chunk at a time, and
//! only the causal convs carry frames across chunks (their `ConvCache`). Encoding takes 8 frames
//! per chunk (the first chunk also takes the `F mod 8` left over, so `F = 8k + 1` gives 9, 8, 8,
//! …); decoding takes 2 latent frames per chunk (the first also takes an odd one: 3, 2, 2, …),
//! and a chunk of 2 gives 8 frames, one of 3 gives 9. Memory is bounded by one chunk at full
//! resolution, as in the reference; large frames can also be cut into overlapping spatial tiles
//! ([`TilingConfig`], diffusers' `enable_tiling`, in `vae_tiling.rs`). The layers live in
//! `vae_blocks.rs`; they run channels-last.

use std::path::Path;

use candle_core::{Result, Tensor};
use candle_nn::VarBuilder;
use serde::{Deserialize, Serialize};

use super::vae_blocks::{ConvCache, Decoder3d, Dims, Encoder3d};
pub use super::vae_tiling::TilingConfig;
pub use crate::families::wan::vae::DiagonalGaussian;

/// Pixel frames per encoder chunk (the reference's `num_sample_frames_batch_size`).
const ENCODE_CHUNK: usize = 8;
/// Latent frames per decoder chunk (`num_latent_frames_batch_size`); the model was trained so.
const DECODE_CHUNK: usize = 2;

/// The `config.json` of a diffusers `AutoencoderKLCogVideoX`; keys verbatim, defaults from its
/// `__init__` (the CogVideoX-2b/5b VAE).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct AutoencoderKlCogVideoXConfig {
    /// Video channels in (3).
    pub in_channels: usize,
    /// Video channels out (3).
    pub out_channels: usize,
    /// Only `CogVideoXDownBlock3D`, one per entry of `block_out_channels`.
    pub down_block_types: Vec<String>,
    /// Only `CogVideoXUpBlock3D`, one per entry of `block_out_channels`.
    pub up_block_types: Vec<String>,
    /// Channels per resolution stage ([128, 256, 256, 512]); stages after the first halve H, W.
    pub block_out_channels: Vec<usize>,
    /// Latent channels `Z` (16).
    pub latent_channels: usize,
    /// Resnets per encoder stage; the decoder has one more (3).
    pub layers_per_block: usize,
    /// Only `silu` (the reference's blocks ignore other values in places).
    pub act_fn: String,
    /// Epsilon of the encoder resnets' group norms (1e-6); the other norms fix 1e-6.
    pub norm_eps: f64,
    /// Groups of every group norm (32).
    pub norm_num_groups: usize,
    /// Frames per latent frame (4): the first `log2` of it stages also halve time.
    pub temporal_compression_ratio: f64,
    /// Tiling sizes of the reference (480); tiling is not implemented here.
    pub sample_height: usize,
    /// (720).
    pub sample_width: usize,
    /// The pipeline divides latents by it before decoding (1.15258426; 0.7 for CogVideoX-5b).
    pub scaling_factor: f64,
    /// Recorded; the CogVideoX pipelines do not read it.
    pub shift_factor: Option<f64>,
    /// Recorded; the CogVideoX pipelines do not read it.
    pub latents_mean: Option<Vec<f64>>,
    /// Recorded; the CogVideoX pipelines do not read it.
    pub latents_std: Option<Vec<f64>>,
    /// Advice to run in f32; not acted on.
    pub force_upcast: bool,
    /// A 1x1 conv after the encoder; not supported (false in the published models).
    pub use_quant_conv: bool,
    /// A 1x1 conv before the decoder; not supported (false in the published models).
    pub use_post_quant_conv: bool,
    /// Image-to-video pipelines divide image latents by `scaling_factor` instead of multiplying.
    pub invert_scale_latents: bool,
}

impl Default for AutoencoderKlCogVideoXConfig {
    fn default() -> Self {
        Self {
            in_channels: 3,
            out_channels: 3,
            down_block_types: vec!["CogVideoXDownBlock3D".into(); 4],
            up_block_types: vec!["CogVideoXUpBlock3D".into(); 4],
            block_out_channels: vec![128, 256, 256, 512],
            latent_channels: 16,
            layers_per_block: 3,
            act_fn: "silu".into(),
            norm_eps: 1e-6,
            norm_num_groups: 32,
            temporal_compression_ratio: 4.0,
            sample_height: 480,
            sample_width: 720,
            scaling_factor: 1.15258426,
            shift_factor: None,
            latents_mean: None,
            latents_std: None,
            force_upcast: true,
            use_quant_conv: false,
            use_post_quant_conv: false,
            invert_scale_latents: false,
        }
    }
}

impl AutoencoderKlCogVideoXConfig {
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

    /// Rejects what this port does not implement and inconsistent sizes.
    pub fn check(&self) -> crate::Result<()> {
        let unsupported = |name: String| crate::Error::Unsupported {
            what: "AutoencoderKLCogVideoX feature",
            name,
            supported: "CogVideoXDownBlock3D / CogVideoXUpBlock3D blocks, act_fn=silu, \
                        use_quant_conv=false, use_post_quant_conv=false"
                .into(),
        };
        if let Some(t) = self
            .down_block_types
            .iter()
            .find(|t| *t != "CogVideoXDownBlock3D")
        {
            return Err(unsupported(format!("down block `{t}`")));
        }
        if let Some(t) = self
            .up_block_types
            .iter()
            .find(|t| *t != "CogVideoXUpBlock3D")
        {
            return Err(unsupported(format!("up block `{t}`")));
        }
        if self.act_fn != "silu" {
            return Err(unsupported(format!("act_fn={}", self.act_fn)));
        }
        if self.use_quant_conv || self.use_post_quant_conv {
            return Err(unsupported("use_quant_conv / use_post_quant_conv".into()));
        }
        let bad = |reason: String| {
            crate::Error::InvalidRequest(format!("AutoencoderKLCogVideoX config: {reason}"))
        };
        let n = self.block_out_channels.len();
        if n == 0 || self.down_block_types.len() != n || self.up_block_types.len() != n {
            return Err(bad(format!(
                "need one down and one up block per entry of block_out_channels ({n}), got {} and {}",
                self.down_block_types.len(),
                self.up_block_types.len()
            )));
        }
        let g = self.norm_num_groups;
        if g == 0
            || self
                .block_out_channels
                .iter()
                .any(|&c| c == 0 || c % g != 0)
        {
            return Err(bad(format!(
                "block_out_channels {:?} must be positive multiples of norm_num_groups = {g}",
                self.block_out_channels
            )));
        }
        if self.latent_channels == 0
            || self.layers_per_block == 0
            || self.in_channels == 0
            || self.out_channels == 0
        {
            return Err(bad("channel and layer counts must be positive".into()));
        }
        if self.temporal_compression_ratio.is_nan()
            || self.temporal_compression_ratio < 1.0
            || self.scaling_factor == 0.0
        {
            return Err(bad(format!(
                "temporal_compression_ratio must be ≥ 1 and scaling_factor non-zero, got {} and {}",
                self.temporal_compression_ratio, self.scaling_factor
            )));
        }
        Ok(())
    }

    /// Pixels per latent pixel along H and W (`2^(stages - 1)`).
    pub fn spatial_compression(&self) -> usize {
        1 << (self.block_out_channels.len() - 1)
    }

    /// Stages whose sampler also changes time: `int(log2(temporal_compression_ratio))` as in the
    /// reference, at most the number of samplers.
    pub fn temporal_levels(&self) -> usize {
        (self.temporal_compression_ratio.log2().floor() as usize)
            .min(self.block_out_channels.len() - 1)
    }
}

/// The chunks `[start, end)` the reference splits `frames` into, `per_chunk` at a time: the first
/// chunk also takes the `frames mod per_chunk` left over; fewer frames than `per_chunk` make one
/// chunk.
pub fn chunk_ranges(frames: usize, per_chunk: usize) -> Vec<(usize, usize)> {
    let batches = (frames / per_chunk).max(1);
    let rem = frames % per_chunk;
    (0..batches)
        .map(|i| {
            let start = per_chunk * i + if i == 0 { 0 } else { rem };
            (start, (per_chunk * (i + 1) + rem).min(frames))
        })
        .collect()
}

/// The CogVideoX VAE. Weight names are the checkpoint's: `encoder.…`, `decoder.…`.
#[derive(Clone, Debug)]
pub struct AutoencoderKlCogVideoX {
    config: AutoencoderKlCogVideoXConfig,
    encoder: Encoder3d,
    decoder: Decoder3d,
    tiling: Option<TilingConfig>,
}

impl AutoencoderKlCogVideoX {
    /// Builds the model from `vb` (its dtype is the compute dtype; norms run in f32).
    pub fn new(cfg: &AutoencoderKlCogVideoXConfig, vb: VarBuilder) -> Result<Self> {
        cfg.check()
            .map_err(|e| candle_core::Error::Msg(e.to_string()))?;
        let enc = Dims {
            video_channels: cfg.in_channels,
            latent_channels: cfg.latent_channels,
            block_out_channels: &cfg.block_out_channels,
            layers_per_block: cfg.layers_per_block,
            groups: cfg.norm_num_groups,
            norm_eps: cfg.norm_eps,
            temporal_levels: cfg.temporal_levels(),
        };
        let dec = Dims {
            video_channels: cfg.out_channels,
            ..enc
        };
        Ok(Self {
            config: cfg.clone(),
            encoder: Encoder3d::load(vb.pp("encoder"), &enc)?,
            decoder: Decoder3d::load(vb.pp("decoder"), &dec)?,
            tiling: None,
        })
    }

    /// Turns spatial tiling on (`Some`, diffusers' `enable_tiling`) or off (`None`, the default).
    pub fn set_tiling(&mut self, tiling: Option<TilingConfig>) {
        self.tiling = tiling;
    }

    /// Turns spatial tiling with the reference's tiles (half the sample size, overlapping by
    /// 1/6 and 1/5) on or off, as diffusers' `enable_tiling()` / `disable_tiling()`.
    pub fn enable_tiling(&mut self, on: bool) {
        self.set_tiling(on.then(|| TilingConfig::for_config(&self.config)));
    }

    /// The tiling in use, if any.
    pub fn tiling(&self) -> Option<TilingConfig> {
        self.tiling
    }

    /// The config it was built from.
    pub fn config(&self) -> &AutoencoderKlCogVideoXConfig {
        &self.config
    }

    /// Encodes `video` `(B, C_in, F, H, W)` in [-1, 1], `H` and `W` multiples of 8 (of
    /// `2^(stages - 1)`), 8 frames per chunk as the reference does, into the latent
    /// distribution, mean and log-variance each `(B, Z, T, H/8, W/8)`; `F = 8k + 1` gives
    /// `T = 2k + 1`.
    pub fn encode(&self, video: &Tensor) -> Result<DiagonalGaussian> {
        let s = self.config.spatial_compression();
        let dims = video.dims();
        let ok = matches!(dims, &[_, c, f, h, w] if c == self.config.in_channels
            && f > 0 && h % s == 0 && w % s == 0 && h > 0 && w > 0);
        if !ok {
            candle_core::bail!(
                "expected video (B, {}, F, H, W) with F ≥ 1 and H, W positive multiples of {s}, got {:?}",
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
        DiagonalGaussian::from_moments(&moments, self.config.latent_channels)
    }

    /// Decodes latents `z` `(B, Z, T, h, w)` (already divided by the scaling factor, see
    /// [`Self::unscale_latents`]) two latent frames per chunk, as the reference does, into an
    /// unclamped video `(B, C_out, F, 8h, 8w)`, `F = 4(T - 1) + 1` for odd `T`, `4T` for even.
    pub fn decode(&self, z: &Tensor) -> Result<Tensor> {
        self.decode_with_progress(z, &mut |_, _| {})
    }

    /// [`Self::decode`], calling `progress(done, total)` with latent frames after each chunk (once
    /// at the end when tiling).
    pub fn decode_with_progress(
        &self,
        z: &Tensor,
        progress: &mut dyn FnMut(usize, usize),
    ) -> Result<Tensor> {
        let dims = z.dims();
        let zc = self.config.latent_channels;
        if !matches!(dims, &[_, c, t, h, w] if c == zc && t > 0 && h > 0 && w > 0) {
            candle_core::bail!("expected latents (B, {zc}, T, h, w), got {:?}", z.shape())
        }
        let (_, _, frames, h, w) = z.dims5()?;
        let s = self.config.spatial_compression();
        let video = match self.tiling {
            Some(t) if h > t.tile_sample_min_height / s || w > t.tile_sample_min_width / s => {
                let video = super::vae_tiling::tiled_decode(self, z, &t)?;
                progress(frames, frames);
                video
            }
            _ => self.decode_tile(z, &mut |end| progress(end, frames))?,
        };
        // b f h w c -> b c f h w
        video.permute((0, 4, 1, 2, 3))?.contiguous()
    }

    /// Encodes one tile `(B, C_in, F, H, W)` chunk by chunk into channels-last moments
    /// `(B, T, h, w, 2Z)`.
    pub(crate) fn encode_tile(&self, video: &Tensor) -> Result<Tensor> {
        let mut cache = ConvCache::default();
        let mut outs = Vec::new();
        for (start, end) in chunk_ranges(video.dim(2)?, ENCODE_CHUNK) {
            // b c t h w -> b t h w c
            let chunk = video
                .narrow(2, start, end - start)?
                .permute((0, 2, 3, 4, 1))?
                .contiguous()?;
            cache.start_chunk();
            outs.push(self.encoder.forward(&chunk, &mut cache)?);
        }
        Tensor::cat(&outs, 1)
    }

    /// Decodes one tile `(B, Z, T, h, w)` chunk by chunk into a channels-last video
    /// `(B, F, 8h, 8w, C_out)`; `done(end)` after each chunk with its last latent frame.
    pub(crate) fn decode_tile(&self, z: &Tensor, done: &mut dyn FnMut(usize)) -> Result<Tensor> {
        let mut cache = ConvCache::default();
        let mut outs = Vec::new();
        for (start, end) in chunk_ranges(z.dim(2)?, DECODE_CHUNK) {
            // b z t h w -> b t h w z
            let chunk = z
                .narrow(2, start, end - start)?
                .permute((0, 2, 3, 4, 1))?
                .contiguous()?;
            cache.start_chunk();
            outs.push(self.decoder.forward(&chunk, &mut cache)?);
            done(end);
        }
        Tensor::cat(&outs, 1)
    }

    /// What the pipeline does to the DiT's latents before decoding: `latents * (1 / scaling_factor)`
    /// (the reciprocal taken in f64, the product in the tensor's dtype, as in PyTorch).
    pub fn unscale_latents(&self, latents: &Tensor) -> Result<Tensor> {
        latents.affine(1.0 / self.config.scaling_factor, 0.0)
    }

    /// The inverse, for encoded latents fed to the DiT: `latents * scaling_factor`.
    pub fn scale_latents(&self, latents: &Tensor) -> Result<Tensor> {
        latents.affine(self.config.scaling_factor, 0.0)
    }

    /// The pipeline's `decode_latents` input step: DiT latents `(B, T, Z, h, w)` (frames before
    /// channels) to unscaled VAE latents `(B, Z, T, h, w)`.
    pub fn latents_for_decode(&self, latents: &Tensor) -> Result<Tensor> {
        // b t z h w -> b z t h w
        let z = latents.permute((0, 2, 1, 3, 4))?.contiguous()?;
        self.unscale_latents(&z)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_match_the_reference_split() {
        // 13 latent frames: (0, 1, 2), (3, 4), …, (11, 12), as the reference's comment lists
        assert_eq!(
            chunk_ranges(13, 2),
            [(0, 3), (3, 5), (5, 7), (7, 9), (9, 11), (11, 13)]
        );
        assert_eq!(&chunk_ranges(12, 2)[..2], &[(0, 2), (2, 4)]);
        assert_eq!(chunk_ranges(1, 2), [(0, 1)]);
        assert_eq!(&chunk_ranges(49, 8)[..2], &[(0, 9), (9, 17)]);
        assert_eq!(chunk_ranges(5, 8), [(0, 5)]);
    }

    #[test]
    fn default_config_is_cogvideox_2b() {
        let cfg: AutoencoderKlCogVideoXConfig = serde_json::from_str("{}").unwrap();
        assert_eq!(cfg, AutoencoderKlCogVideoXConfig::default());
        assert_eq!((cfg.spatial_compression(), cfg.temporal_levels()), (8, 2));
        cfg.check().unwrap();
    }

    #[test]
    fn unsupported_config_is_rejected() {
        let cfg: AutoencoderKlCogVideoXConfig =
            serde_json::from_str(r#"{"use_quant_conv": true}"#).unwrap();
        let err = cfg.check().unwrap_err().to_string();
        assert!(err.contains("use_quant_conv"), "{err}");
        let cfg: AutoencoderKlCogVideoXConfig =
            serde_json::from_str(r#"{"act_fn": "gelu"}"#).unwrap();
        assert!(matches!(cfg.check(), Err(crate::Error::Unsupported { .. })));
    }
}
