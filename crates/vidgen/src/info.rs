//! What a model folder is: family, sizes, parameter counts, dtypes, what it can do.

use std::fmt;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::checkpoint::{class_name, read_json, resolve_model_dir, Weights};
use crate::families::wan::config::WanTransformerConfig;
use crate::families::wan::vae::AutoencoderKlWanConfig;
use crate::pipeline::{ModelDefaults, SUPPORTED_PIPELINES};
use crate::text::{PromptTokenizer, Umt5Config};
use crate::{Error, Result};

/// One component folder: its class, parameters and stored dtype.
#[derive(Debug, Clone, Serialize)]
pub struct ComponentInfo {
    pub class: String,
    pub parameters: usize,
    pub dtype: String,
    pub summary: String,
}

/// A description of a model folder.
#[derive(Debug, Clone, Serialize)]
pub struct ModelInfo {
    pub path: PathBuf,
    pub pipeline: String,
    pub family: String,
    pub tasks: Vec<String>,
    pub transformer: ComponentInfo,
    pub vae: ComponentInfo,
    pub text_encoder: ComponentInfo,
    pub tokenizer_vocab: usize,
    pub scheduler: String,
    pub defaults: ModelDefaults,
}

fn component(dir: &Path, summary: String) -> Result<ComponentInfo> {
    let weights = Weights::open(dir, candle_core::DType::F32, &candle_core::Device::Cpu)?;
    let config = if dir.join("config.json").is_file() {
        dir.join("config.json")
    } else {
        dir.join("scheduler_config.json")
    };
    let class = class_name(&config).or_else(|_| {
        // transformers configs name their class in `architectures`.
        let value: serde_json::Value = read_json(&config)?;
        value["architectures"][0]
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| Error::BadConfig {
                path: config.clone(),
                reason: "neither `_class_name` nor `architectures`".into(),
            })
    })?;
    Ok(ComponentInfo {
        class,
        parameters: weights.parameter_count(),
        dtype: weights
            .stored_dtype()
            .map(|d| format!("{d:?}").to_lowercase())
            .unwrap_or_else(|| "unknown".into()),
        summary,
    })
}

/// Reads a model folder's configs and weight headers (no weights are loaded).
pub fn describe(path: &Path) -> Result<ModelInfo> {
    let dir = resolve_model_dir(path)?;
    let pipeline = class_name(&dir.join("model_index.json"))?;
    if pipeline == crate::families::cogvideox::pipeline::CLASS_NAME {
        return describe_cogvideox(dir, pipeline);
    }
    if pipeline == "LTXPipeline" {
        return describe_ltx(dir, pipeline);
    }
    if pipeline != "WanPipeline" {
        return Err(Error::Unsupported {
            what: "pipeline",
            name: pipeline,
            supported: SUPPORTED_PIPELINES.join(", "),
        });
    }
    let t: WanTransformerConfig = read_json(&dir.join("transformer/config.json"))?;
    let v: AutoencoderKlWanConfig = read_json(&dir.join("vae/config.json"))?;
    let e = Umt5Config::from_file(dir.join("text_encoder/config.json"))?;
    let tokenizer = PromptTokenizer::from_file(dir.join("tokenizer/tokenizer.json"))?;
    let scheduler = class_name(&dir.join("scheduler/scheduler_config.json"))?;
    let (tf, sf) = crate::families::wan::pipeline::vae_scale_factors(&v);
    let defaults = ModelDefaults::load(&dir, ModelDefaults::default())?;
    Ok(ModelInfo {
        pipeline,
        family: "wan".into(),
        tasks: vec!["text-to-video".into(), "video-to-video".into()],
        transformer: component(
            &dir.join("transformer"),
            format!(
                "{} layers, {} heads × {} = width {}, FFN {}, patch {:?}, text width {}",
                t.num_layers,
                t.num_attention_heads,
                t.attention_head_dim,
                t.inner_dim(),
                t.ffn_dim,
                t.patch_size,
                t.text_dim
            ),
        )?,
        vae: component(
            &dir.join("vae"),
            format!(
                "{} latent channels, compression {tf}× in time and {sf}× in space, base width {}",
                v.z_dim, v.base_dim
            ),
        )?,
        text_encoder: component(
            &dir.join("text_encoder"),
            format!(
                "UMT5 encoder: {} layers, width {}, {} heads, vocabulary {}",
                e.num_layers, e.d_model, e.num_heads, e.vocab_size
            ),
        )?,
        tokenizer_vocab: tokenizer.vocab_size(),
        scheduler,
        defaults,
        path: dir,
    })
}

/// [`describe`] for an `LTXPipeline` folder.
fn describe_ltx(dir: PathBuf, pipeline: String) -> Result<ModelInfo> {
    use crate::families::ltx::config::LtxVideoTransformer3DConfig;
    use crate::families::ltx::vae::AutoencoderKlLtxVideoConfig;
    let t: LtxVideoTransformer3DConfig = read_json(&dir.join("transformer/config.json"))?;
    let v = AutoencoderKlLtxVideoConfig::from_file(dir.join("vae/config.json"))?;
    let e = crate::text::T5Config::from_file(dir.join("text_encoder/config.json"))?;
    let tokenizer = PromptTokenizer::from_file(dir.join("tokenizer/tokenizer.json"))?;
    let scheduler = class_name(&dir.join("scheduler/scheduler_config.json"))?;
    let defaults = ModelDefaults::load(&dir, crate::families::ltx::pipeline::ltx_defaults())?;
    Ok(ModelInfo {
        pipeline,
        family: "ltx".into(),
        tasks: vec!["text-to-video".into(), "image-to-video".into()],
        transformer: component(
            &dir.join("transformer"),
            format!(
                "{} layers, {} heads × {} = width {}, patch {}x{}, caption width {}",
                t.num_layers,
                t.num_attention_heads,
                t.attention_head_dim,
                t.inner_dim(),
                t.patch_size_t,
                t.patch_size,
                t.caption_channels
            ),
        )?,
        vae: component(
            &dir.join("vae"),
            format!(
                "{} latent channels, compression {}× in time and {}× in space, decoder {}",
                v.latent_channels,
                v.temporal_compression(),
                v.spatial_compression(),
                if v.timestep_conditioning {
                    "timestep-conditioned"
                } else {
                    "unconditioned"
                }
            ),
        )?,
        text_encoder: component(
            &dir.join("text_encoder"),
            format!(
                "T5 encoder: {} layers, width {}, {} heads, vocabulary {}",
                e.num_layers, e.d_model, e.num_heads, e.vocab_size
            ),
        )?,
        tokenizer_vocab: tokenizer.vocab_size(),
        scheduler,
        defaults,
        path: dir,
    })
}

/// [`describe`] for a `CogVideoXPipeline` folder.
fn describe_cogvideox(dir: PathBuf, pipeline: String) -> Result<ModelInfo> {
    let pipe = crate::families::cogvideox::pipeline::CogVideoXPipeline::load(
        &dir,
        crate::pipeline::LoadOptions::default(),
    )?;
    let t = pipe.transformer_config();
    let v = pipe.vae_config();
    let e = crate::text::T5Config::from_file(dir.join("text_encoder/config.json"))?;
    let tokenizer = PromptTokenizer::from_file(dir.join("tokenizer/tokenizer.json"))?;
    let scheduler = class_name(&dir.join("scheduler/scheduler_config.json"))?;
    let (tf, sf) = pipe.vae_scale_factors();
    let position = if t.use_rotary_positional_embeddings {
        "3D RoPE"
    } else {
        "3D sin-cos table"
    };
    Ok(ModelInfo {
        pipeline,
        family: "cogvideox".into(),
        tasks: vec!["text-to-video".into(), "video-to-video".into()],
        transformer: component(
            &dir.join("transformer"),
            format!(
                "{} layers, {} heads × {} = width {}, patch {}, {position}, text width {}",
                t.num_layers,
                t.num_attention_heads,
                t.attention_head_dim,
                t.inner_dim(),
                t.patch_size,
                t.text_embed_dim
            ),
        )?,
        vae: component(
            &dir.join("vae"),
            format!(
                "{} latent channels, compression {tf}× in time and {sf}× in space, scaling factor {}",
                v.latent_channels, v.scaling_factor
            ),
        )?,
        text_encoder: component(
            &dir.join("text_encoder"),
            format!(
                "T5 encoder: {} layers, width {}, {} heads, vocabulary {}",
                e.num_layers, e.d_model, e.num_heads, e.vocab_size
            ),
        )?,
        tokenizer_vocab: tokenizer.vocab_size(),
        scheduler,
        defaults: pipe.defaults().clone(),
        path: dir,
    })
}

fn millions(n: usize) -> String {
    if n >= 1_000_000 {
        format!("{:.1}M", n as f64 / 1e6)
    } else {
        format!("{:.1}K", n as f64 / 1e3)
    }
}

impl fmt::Display for ModelInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "{}", self.path.display())?;
        writeln!(
            f,
            "  pipeline      {} (family {})",
            self.pipeline, self.family
        )?;
        writeln!(f, "  can do        {}", self.tasks.join(", "))?;
        for (name, c) in [
            ("transformer", &self.transformer),
            ("vae", &self.vae),
            ("text encoder", &self.text_encoder),
        ] {
            writeln!(
                f,
                "  {name:<13} {} — {} parameters, {}; {}",
                c.class,
                millions(c.parameters),
                c.dtype,
                c.summary
            )?;
        }
        writeln!(f, "  tokenizer     {} pieces", self.tokenizer_vocab)?;
        writeln!(f, "  scheduler     {}", self.scheduler)?;
        let d = &self.defaults;
        writeln!(
            f,
            "  defaults      {} frames at {}x{}, {} fps, {} steps, guidance {}, {} text tokens",
            d.num_frames,
            d.width,
            d.height,
            d.fps,
            d.num_inference_steps,
            d.guidance_scale,
            d.max_sequence_length
        )
    }
}
