//! Named model sizes of the Wan architecture, for `vidgen init` and `vidgen bench`.

use serde_json::json;

use super::config::WanTransformerConfig;
use super::vae::AutoencoderKlWanConfig;
use crate::pipeline::ModelDefaults;
use crate::text::Umt5Config;
use crate::{Error, Result};

/// Preset names, smallest first.
pub const NAMES: &[&str] = &["tiny", "tiny-world", "tiny-world-large", "wan2.1-1.3b"];

/// Everything needed to write a model folder of one size.
#[derive(Debug, Clone)]
pub struct WanPreset {
    pub description: &'static str,
    pub transformer: WanTransformerConfig,
    pub vae: AutoencoderKlWanConfig,
    /// Text encoder config; `vocab_size` is replaced by the written tokenizer's size when the
    /// preset uses vidgen's own small vocabulary (`own_tokenizer`).
    pub text_encoder: Umt5Config,
    pub own_tokenizer: bool,
    /// Dtype the text encoder's weights are written in (the Wan2.1 checkpoints store UMT5-XXL
    /// in bf16).
    pub text_encoder_dtype: candle_core::DType,
    /// `scheduler_config.json` contents.
    pub scheduler: serde_json::Value,
    pub defaults: ModelDefaults,
}

/// The UniPC flow-matching scheduler the Wan2.1 checkpoints ship with.
pub fn wan_unipc_scheduler(flow_shift: f64) -> serde_json::Value {
    json!({
        "_class_name": "UniPCMultistepScheduler",
        "_diffusers_version": "0.42.1",
        "num_train_timesteps": 1000,
        "prediction_type": "flow_prediction",
        "use_flow_sigmas": true,
        "flow_shift": flow_shift,
        "solver_order": 2,
        "solver_type": "bh2",
        "predict_x0": true,
        "lower_order_final": true,
        "final_sigmas_type": "zero",
        "timestep_spacing": "linspace",
        "disable_corrector": [],
        "beta_start": 0.0001,
        "beta_end": 0.02,
        "beta_schedule": "linear",
    })
}

fn from_json<T: serde::de::DeserializeOwned>(value: serde_json::Value) -> Result<T> {
    serde_json::from_value(value).map_err(|e| Error::BadConfig {
        path: "<preset>".into(),
        reason: e.to_string(),
    })
}

/// The preset called `name`; the error lists the known names.
pub fn preset(name: &str) -> Result<WanPreset> {
    match name {
        "tiny" => Ok(WanPreset {
            description:
                "tiny random Wan-architecture model for tests and demos (~0.2M parameters)",
            transformer: from_json(json!({
                "patch_size": [1, 2, 2], "num_attention_heads": 2, "attention_head_dim": 24,
                "in_channels": 16, "out_channels": 16, "text_dim": 32, "freq_dim": 32,
                "ffn_dim": 96, "num_layers": 2, "cross_attn_norm": true,
                "qk_norm": "rms_norm_across_heads", "eps": 1e-6, "rope_max_seq_len": 1024,
            }))?,
            vae: from_json(json!({
                "base_dim": 8, "z_dim": 16, "dim_mult": [1, 2, 2, 2], "num_res_blocks": 1,
                "attn_scales": [], "temperal_downsample": [false, true, true], "dropout": 0.0,
            }))?,
            text_encoder: own_umt5(32, 8, 64)?,
            own_tokenizer: true,
            text_encoder_dtype: candle_core::DType::F32,
            scheduler: wan_unipc_scheduler(3.0),
            defaults: ModelDefaults {
                num_frames: 17,
                height: 64,
                width: 96,
                num_inference_steps: 8,
                guidance_scale: 5.0,
                fps: 8,
                max_sequence_length: 64,
                negative_prompt: String::new(),
            },
        }),
        // The architecture of the built-in model (models/tiny-world), trained by `vidgen train`
        // on the procedural world: a 4x spatial, 4x temporal VAE to 8 channels (17x64x64 ->
        // 5x16x16 latents, 320 tokens with patch 1x2x2) and a 6-layer, 128-wide DiT.
        "tiny-world" => tiny_world(
            "the built-in model's architecture (~2M parameters), for `vidgen train`",
            6,
            4,
        ),
        // The same VAE and text encoder with an 8-layer, 192-wide DiT (~5M parameters).
        "tiny-world-large" => tiny_world(
            "tiny-world with an 8-layer, 192-wide DiT (~5M parameters), for `vidgen train`",
            8,
            6,
        ),
        // Wan-AI/Wan2.1-T2V-1.3B-Diffusers: transformer/config.json, vae/config.json,
        // text_encoder/config.json (UMT5-XXL) of that repository.
        "wan2.1-1.3b" => Ok(WanPreset {
            description: "Wan2.1-T2V-1.3B dimensions (DiT 1.3B, UMT5-XXL 5.7B): random weights, \
                          for benchmarks",
            transformer: from_json(json!({
                "patch_size": [1, 2, 2], "num_attention_heads": 12, "attention_head_dim": 128,
                "in_channels": 16, "out_channels": 16, "text_dim": 4096, "freq_dim": 256,
                "ffn_dim": 8960, "num_layers": 30, "cross_attn_norm": true,
                "qk_norm": "rms_norm_across_heads", "eps": 1e-6, "rope_max_seq_len": 1024,
            }))?,
            vae: from_json(json!({
                "base_dim": 96, "z_dim": 16, "dim_mult": [1, 2, 4, 4], "num_res_blocks": 2,
                "attn_scales": [], "temperal_downsample": [false, true, true], "dropout": 0.0,
            }))?,
            text_encoder: from_json(json!({
                "vocab_size": 256384, "d_model": 4096, "d_kv": 64, "d_ff": 10240,
                "num_layers": 24, "num_heads": 64, "relative_attention_num_buckets": 32,
                "relative_attention_max_distance": 128, "feed_forward_proj": "gated-gelu",
                "dropout_rate": 0.0, "is_encoder_decoder": false, "use_cache": false,
            }))?,
            own_tokenizer: true,
            text_encoder_dtype: candle_core::DType::BF16,
            scheduler: wan_unipc_scheduler(3.0),
            defaults: ModelDefaults::default(),
        }),
        other => Err(Error::Unsupported {
            what: "preset",
            name: other.into(),
            supported: NAMES.join(", "),
        }),
    }
}

/// The procedural world's architecture with a DiT of `layers` blocks of `heads` heads of 32
/// channels (FFN 4x the width).
fn tiny_world(description: &'static str, layers: usize, heads: usize) -> Result<WanPreset> {
    Ok(WanPreset {
        description,
        transformer: from_json(json!({
            "patch_size": [1, 2, 2], "num_attention_heads": heads, "attention_head_dim": 32,
            "in_channels": 8, "out_channels": 8, "text_dim": 64, "freq_dim": 64,
            "ffn_dim": 128 * heads, "num_layers": layers, "cross_attn_norm": true,
            "qk_norm": "rms_norm_across_heads", "eps": 1e-6, "rope_max_seq_len": 1024,
        }))?,
        vae: from_json(json!({
            "base_dim": 16, "z_dim": 8, "dim_mult": [1, 2, 4], "num_res_blocks": 1,
            "attn_scales": [], "temperal_downsample": [true, true], "dropout": 0.0,
            "latents_mean": [0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0],
            "latents_std": [1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0],
            "scale_factor_temporal": 4, "scale_factor_spatial": 4,
        }))?,
        text_encoder: own_umt5(64, 16, 128)?,
        own_tokenizer: true,
        text_encoder_dtype: candle_core::DType::F32,
        scheduler: wan_unipc_scheduler(2.0),
        defaults: ModelDefaults {
            num_frames: 17,
            height: 64,
            width: 64,
            num_inference_steps: 10,
            guidance_scale: 4.0,
            fps: 8,
            max_sequence_length: 32,
            negative_prompt: String::new(),
        },
    })
}

/// The small UMT5 encoder of vidgen's own models (2 layers of 4 heads, gated GELU, over the
/// tokenizer `vidgen init` writes, whose size sets `vocab_size`).
fn own_umt5(d_model: usize, d_kv: usize, d_ff: usize) -> Result<Umt5Config> {
    from_json(json!({
        "vocab_size": 0, "d_model": d_model, "d_kv": d_kv, "d_ff": d_ff, "num_layers": 2,
        "num_heads": 4, "relative_attention_num_buckets": 32,
        "relative_attention_max_distance": 128, "feed_forward_proj": "gated-gelu",
        "dropout_rate": 0.0, "is_encoder_decoder": false, "use_cache": false,
    }))
}
