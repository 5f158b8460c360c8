//! The `config.json` of diffusers' `AutoencoderKLLTXVideo` and what this port accepts of it.

use std::path::Path;

use serde::{Deserialize, Serialize};

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

pub(crate) const DOWN_0_9_0: &str = "LTXVideoDownBlock3D";
pub(crate) const DOWN_0_9_5: &str = "LTXVideo095DownBlock3D";

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
    pub(crate) fn is_ltx_095(&self) -> bool {
        self.down_block_types.last().map(String::as_str) == Some(DOWN_0_9_5)
    }

    /// Number of encoder down blocks.
    pub(crate) fn num_down_blocks(&self) -> usize {
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
    pub(crate) fn decoder_up_channels(&self) -> Vec<(usize, usize, usize)> {
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
pub(crate) fn downsample_stride(kind: &str) -> Option<Option<(usize, usize, usize)>> {
    match kind {
        "conv" => Some(None),
        "spatial" => Some(Some((1, 2, 2))),
        "temporal" => Some(Some((2, 1, 1))),
        "spatiotemporal" => Some(Some((2, 2, 2))),
        _ => None,
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
    fn ltx_0_9_5_layout_is_supported() {
        // the layout of the published 0.9.5 VAE: four 0.9.5 blocks, compression overridden
        let cfg: AutoencoderKlLtxVideoConfig = serde_json::from_str(
            r#"{"block_out_channels": [128, 256, 512, 1024, 2048],
                "down_block_types": ["LTXVideo095DownBlock3D", "LTXVideo095DownBlock3D",
                                     "LTXVideo095DownBlock3D", "LTXVideo095DownBlock3D"],
                "downsample_type": ["spatial", "temporal", "spatiotemporal", "spatiotemporal"],
                "layers_per_block": [4, 6, 6, 2, 2], "spatio_temporal_scaling": [true, true, true, true],
                "decoder_block_out_channels": [256, 512, 1024], "decoder_layers_per_block": [5, 5, 5, 5],
                "decoder_spatio_temporal_scaling": [true, true, true],
                "decoder_inject_noise": [false, false, false, false],
                "upsample_factor": [2, 2, 2], "upsample_residual": [true, true, true],
                "timestep_conditioning": true, "spatial_compression_ratio": 32,
                "temporal_compression_ratio": 8}"#,
        )
        .unwrap();
        cfg.check().expect("0.9.5 is supported");
        assert_eq!(cfg.num_down_blocks(), 4);
        assert_eq!(
            (cfg.spatial_compression(), cfg.temporal_compression()),
            (32, 8)
        );
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
