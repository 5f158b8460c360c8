//! Serde mirrors of the Wan configs, keys verbatim from diffusers' `config.json`, defaults as
//! in the reference `__init__` (diffusers 0.42).

use serde::{Deserialize, Serialize};

/// `WanTransformer3DModel` config (`transformer/config.json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct WanTransformerConfig {
    /// `(pt, ph, pw)`: spacetime patch size.
    pub patch_size: Vec<usize>,
    pub num_attention_heads: usize,
    pub attention_head_dim: usize,
    pub in_channels: usize,
    pub out_channels: Option<usize>,
    /// Width of the text encoder's states (UMT5-XXL: 4096).
    pub text_dim: usize,
    /// Width of the sinusoidal timestep embedding.
    pub freq_dim: usize,
    pub ffn_dim: usize,
    pub num_layers: usize,
    /// LayerNorm (with affine) before cross-attention.
    pub cross_attn_norm: bool,
    /// Recorded by diffusers but not read: its attention always has RMS q/k norms.
    pub qk_norm: Option<String>,
    pub eps: f64,
    /// Image-embedding width of the image-to-video models (not supported yet).
    pub image_dim: Option<usize>,
    pub added_kv_proj_dim: Option<usize>,
    /// Largest patch-grid extent per axis that the rotary tables cover.
    pub rope_max_seq_len: usize,
    pub pos_embed_seq_len: Option<usize>,
}

impl Default for WanTransformerConfig {
    fn default() -> Self {
        Self {
            patch_size: vec![1, 2, 2],
            num_attention_heads: 40,
            attention_head_dim: 128,
            in_channels: 16,
            out_channels: Some(16),
            text_dim: 4096,
            freq_dim: 256,
            ffn_dim: 13824,
            num_layers: 40,
            cross_attn_norm: true,
            qk_norm: Some("rms_norm_across_heads".into()),
            eps: 1e-6,
            image_dim: None,
            added_kv_proj_dim: None,
            rope_max_seq_len: 1024,
            pos_embed_seq_len: None,
        }
    }
}

impl WanTransformerConfig {
    /// Hidden width `D = heads · head_dim`.
    pub fn inner_dim(&self) -> usize {
        self.num_attention_heads * self.attention_head_dim
    }

    /// Output latent channels (`out_channels`, or `in_channels` when unset).
    pub fn out_channels(&self) -> usize {
        self.out_channels.unwrap_or(self.in_channels)
    }

    /// `(pt, ph, pw)`, checked to have three positive entries.
    pub fn patch(&self) -> Result<(usize, usize, usize), String> {
        match self.patch_size.as_slice() {
            &[pt, ph, pw] if pt > 0 && ph > 0 && pw > 0 => Ok((pt, ph, pw)),
            other => Err(format!(
                "patch_size must be three positive integers, got {other:?}"
            )),
        }
    }

    /// Checks what vidgen can run; the error says what is accepted.
    pub fn validate(&self) -> Result<(), String> {
        self.patch()?;
        if self.image_dim.is_some() || self.added_kv_proj_dim.is_some() {
            return Err(
                "image-to-video Wan transformers (image_dim / added_kv_proj_dim) are not \
                        supported yet; text-to-video checkpoints are"
                    .into(),
            );
        }
        if self.num_attention_heads == 0 || self.attention_head_dim < 6 {
            return Err(format!(
                "need at least one head and attention_head_dim ≥ 6 for 3D RoPE, got {} × {}",
                self.num_attention_heads, self.attention_head_dim
            ));
        }
        Ok(())
    }
}

/// Pipeline-level settings in `model_index.json` that change what the pipeline does.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct WanPipelineIndex {
    #[serde(rename = "_class_name")]
    pub class_name: String,
    /// Wan2.2 two-expert switch point; not supported yet.
    #[serde(default)]
    pub boundary_ratio: Option<f64>,
    /// Wan2.2 TI2V per-token timesteps; not supported yet.
    #[serde(default)]
    pub expand_timesteps: Option<bool>,
}
