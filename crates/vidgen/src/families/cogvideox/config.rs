//! Serde mirror of `CogVideoXTransformer3DModel`'s `config.json`: keys verbatim, defaults as in
//! the reference `__init__` (diffusers 0.42).

use serde::{Deserialize, Serialize};

/// `CogVideoXTransformer3DModel` config (`transformer/config.json`).
///
/// The published checkpoints differ in the position encoding: CogVideoX-2b adds a 3D sin-cos
/// table to the tokens (`use_rotary_positional_embeddings: false`), CogVideoX-5b rotates the
/// video queries and keys with 3D RoPE.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct CogVideoXTransformerConfig {
    pub num_attention_heads: usize,
    pub attention_head_dim: usize,
    /// Latent channels `C` of the input.
    pub in_channels: usize,
    pub out_channels: Option<usize>,
    /// Timestep embedding puts cosines first (only `true` is supported, as published).
    pub flip_sin_to_cos: bool,
    /// `downscale_freq_shift` of the timestep embedding (only 0 is supported, as published).
    pub freq_shift: i64,
    /// Width of the timestep embedding that drives every AdaLN.
    pub time_embed_dim: usize,
    /// Offset embedding of CogVideoX 1.5 image-to-video (not supported yet).
    pub ofs_embed_dim: Option<usize>,
    /// Width of the text encoder's states (T5-XXL: 4096).
    pub text_embed_dim: usize,
    pub num_layers: usize,
    pub dropout: f64,
    /// Bias in the q/k/v projections.
    pub attention_bias: bool,
    /// Latent width the model was trained at; the RoPE crop box is taken relative to it.
    pub sample_width: usize,
    /// Latent height the model was trained at.
    pub sample_height: usize,
    /// Pixel frames of the training clips (49 → 13 latent frames); sizes the learned table.
    pub sample_frames: usize,
    /// Spatial patch size `p` (tokens are `p × p` latent pixels of one latent frame).
    pub patch_size: usize,
    /// Temporal patch size of CogVideoX 1.5 (not supported yet).
    pub patch_size_t: Option<usize>,
    pub temporal_compression_ratio: usize,
    /// Text length the sin-cos table reserves (zero) rows for.
    pub max_text_seq_length: usize,
    pub activation_fn: String,
    pub timestep_activation_fn: String,
    pub norm_elementwise_affine: bool,
    pub norm_eps: f64,
    /// Spatial positions are divided by this before the sin-cos table.
    pub spatial_interpolation_scale: f64,
    /// Temporal positions are divided by this before the sin-cos table.
    pub temporal_interpolation_scale: f64,
    pub use_rotary_positional_embeddings: bool,
    pub use_learned_positional_embeddings: bool,
    /// Bias in the patch-embedding convolution.
    pub patch_bias: bool,
}

impl Default for CogVideoXTransformerConfig {
    fn default() -> Self {
        Self {
            num_attention_heads: 30,
            attention_head_dim: 64,
            in_channels: 16,
            out_channels: Some(16),
            flip_sin_to_cos: true,
            freq_shift: 0,
            time_embed_dim: 512,
            ofs_embed_dim: None,
            text_embed_dim: 4096,
            num_layers: 30,
            dropout: 0.0,
            attention_bias: true,
            sample_width: 90,
            sample_height: 60,
            sample_frames: 49,
            patch_size: 2,
            patch_size_t: None,
            temporal_compression_ratio: 4,
            max_text_seq_length: 226,
            activation_fn: "gelu-approximate".into(),
            timestep_activation_fn: "silu".into(),
            norm_elementwise_affine: true,
            norm_eps: 1e-5,
            spatial_interpolation_scale: 1.875,
            temporal_interpolation_scale: 1.0,
            use_rotary_positional_embeddings: false,
            use_learned_positional_embeddings: false,
            patch_bias: true,
        }
    }
}

impl CogVideoXTransformerConfig {
    /// Hidden width `D = heads · head_dim`.
    pub fn inner_dim(&self) -> usize {
        self.num_attention_heads * self.attention_head_dim
    }

    /// Output latent channels (`out_channels`, or `in_channels` when unset).
    pub fn out_channels(&self) -> usize {
        self.out_channels.unwrap_or(self.in_channels)
    }

    /// Whether a position table is added to the tokens (sin-cos, or learned).
    pub fn adds_position_table(&self) -> bool {
        !self.use_rotary_positional_embeddings || self.use_learned_positional_embeddings
    }

    /// Checks what vidgen can run; the error says what is accepted.
    pub fn validate(&self) -> Result<(), String> {
        if self.patch_size_t.is_some() {
            return Err(
                "CogVideoX 1.5 transformers (patch_size_t) are not supported yet; \
                        CogVideoX 1.0 (2b, 5b) checkpoints are"
                    .into(),
            );
        }
        if self.ofs_embed_dim.is_some() {
            return Err(
                "CogVideoX image-to-video offset embeddings (ofs_embed_dim) are not \
                        supported yet; text-to-video checkpoints are"
                    .into(),
            );
        }
        if !self.use_rotary_positional_embeddings && self.use_learned_positional_embeddings {
            return Err(
                "learned positional embeddings without rotary embeddings: no CogVideoX \
                        checkpoint has them and diffusers rejects them too"
                    .into(),
            );
        }
        if !self.flip_sin_to_cos || self.freq_shift != 0 {
            return Err(format!(
                "only flip_sin_to_cos = true and freq_shift = 0 are supported (as published), \
                 got {} and {}",
                self.flip_sin_to_cos, self.freq_shift
            ));
        }
        if self.activation_fn != "gelu-approximate" || self.timestep_activation_fn != "silu" {
            return Err(format!(
                "only activation_fn \"gelu-approximate\" and timestep_activation_fn \"silu\" are \
                 supported, got {:?} and {:?}",
                self.activation_fn, self.timestep_activation_fn
            ));
        }
        if self.num_attention_heads == 0 || self.patch_size == 0 || self.num_layers == 0 {
            return Err("num_attention_heads, patch_size and num_layers must be positive".into());
        }
        let d = self.attention_head_dim;
        if self.use_rotary_positional_embeddings && !d.is_multiple_of(16) {
            return Err(format!(
                "3D RoPE splits the head dim into t/h/w = d/4, 3d/8, 3d/8 (each even): \
                 attention_head_dim must be a multiple of 16, got {d}"
            ));
        }
        if self.adds_position_table() && !self.inner_dim().is_multiple_of(16) {
            return Err(format!(
                "the 3D sin-cos table splits D into t/h/w = D/4, 3D/8, 3D/8 (each even): \
                 heads × head_dim must be a multiple of 16, got {}",
                self.inner_dim()
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_the_2b_checkpoint_and_validate() {
        let cfg = CogVideoXTransformerConfig::default();
        assert_eq!(cfg.inner_dim(), 1920);
        assert!(cfg.validate().is_ok());
    }

    #[test]
    fn unsupported_variants_are_named() {
        let cfg = CogVideoXTransformerConfig {
            patch_size_t: Some(2),
            ..Default::default()
        };
        assert!(cfg.validate().unwrap_err().contains("patch_size_t"));
    }
}
