//! Serde mirrors of the LTX-Video configs, keys verbatim from diffusers' `config.json`,
//! defaults as in the reference `__init__` (diffusers 0.42).

use serde::{Deserialize, Serialize};

/// `LTXVideoTransformer3DModel` config (`transformer/config.json`). The defaults are those of
/// the published 2B checkpoints (28 layers, 32 heads × 64, T5-XXL captions of width 4096).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct LtxVideoTransformer3DConfig {
    /// Latent channels per token (the pipeline packs `(B, C, T, H, W)` to `(B, T·H·W, C)`).
    pub in_channels: usize,
    pub out_channels: Option<usize>,
    /// Spatial patch size; it only scales the RoPE positions (tokens are packed outside).
    pub patch_size: usize,
    /// Temporal patch size; it only scales the RoPE positions.
    pub patch_size_t: usize,
    pub num_attention_heads: usize,
    pub attention_head_dim: usize,
    /// Width of the keys/values of the cross-attention: the projected caption, = inner dim.
    pub cross_attention_dim: usize,
    pub num_layers: usize,
    /// Feed-forward activation; diffusers' LTX checkpoints use `"gelu-approximate"` (tanh).
    pub activation_fn: String,
    /// Only `"rms_norm_across_heads"` exists in the reference.
    pub qk_norm: String,
    /// Whether the blocks' RMS norms (`norm1`, `norm2`) carry a learned scale.
    pub norm_elementwise_affine: bool,
    pub norm_eps: f64,
    /// Width of the text encoder's states (T5-XXL: 4096).
    pub caption_channels: usize,
    pub attention_bias: bool,
    pub attention_out_bias: bool,
}

impl Default for LtxVideoTransformer3DConfig {
    fn default() -> Self {
        Self {
            in_channels: 128,
            out_channels: Some(128),
            patch_size: 1,
            patch_size_t: 1,
            num_attention_heads: 32,
            attention_head_dim: 64,
            cross_attention_dim: 2048,
            num_layers: 28,
            activation_fn: "gelu-approximate".into(),
            qk_norm: "rms_norm_across_heads".into(),
            norm_elementwise_affine: false,
            norm_eps: 1e-6,
            caption_channels: 4096,
            attention_bias: true,
            attention_out_bias: true,
        }
    }
}

impl LtxVideoTransformer3DConfig {
    /// Hidden width `D = heads · head_dim`.
    pub fn inner_dim(&self) -> usize {
        self.num_attention_heads * self.attention_head_dim
    }

    /// Output channels per token (`out_channels`, or `in_channels` when unset or 0, as the
    /// reference's `out_channels or in_channels`).
    pub fn out_channels(&self) -> usize {
        match self.out_channels {
            Some(c) if c > 0 => c,
            _ => self.in_channels,
        }
    }

    /// Checks what vidgen can run; the error says what is accepted.
    pub fn validate(&self) -> Result<(), String> {
        if self.qk_norm != "rms_norm_across_heads" {
            return Err(format!(
                "qk_norm must be \"rms_norm_across_heads\" (the only one LTX-Video has), got {:?}",
                self.qk_norm
            ));
        }
        if !matches!(self.activation_fn.as_str(), "gelu-approximate" | "gelu") {
            return Err(format!(
                "activation_fn {:?} is not supported; LTX-Video uses \"gelu-approximate\"",
                self.activation_fn
            ));
        }
        let dim = self.inner_dim();
        if dim < 6 || !dim.is_multiple_of(2) {
            return Err(format!(
                "the 3D RoPE needs an even hidden size (heads × head_dim) of at least 6, got {} × {}",
                self.num_attention_heads, self.attention_head_dim
            ));
        }
        if self.cross_attention_dim != dim {
            return Err(format!(
                "cross_attention_dim ({}) must equal heads × head_dim ({dim}): the cross-attention \
                 reads the caption after its projection to the hidden size",
                self.cross_attention_dim
            ));
        }
        if self.patch_size == 0 || self.patch_size_t == 0 {
            return Err("patch_size and patch_size_t must be positive".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_config_takes_the_reference_defaults() {
        let cfg: LtxVideoTransformer3DConfig = serde_json::from_str("{}").unwrap();
        assert_eq!(cfg, LtxVideoTransformer3DConfig::default());
        assert_eq!(cfg.inner_dim(), 2048);
        assert!(cfg.validate().is_ok());
    }

    #[test]
    fn cross_attention_width_must_be_the_hidden_size() {
        let cfg = LtxVideoTransformer3DConfig {
            cross_attention_dim: 4096,
            ..Default::default()
        };
        assert!(cfg.validate().unwrap_err().contains("cross_attention_dim"));
    }
}
