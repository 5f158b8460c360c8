//! Random initialisation of a Wan-architecture model folder (`vidgen init`), written in the
//! diffusers layout so that vidgen and diffusers' `WanPipeline.from_pretrained` both load it.

use std::path::Path;

use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use serde_json::json;

use super::presets::WanPreset;
use super::transformer::WanTransformer3D;
use super::vae::AutoencoderKlWan;
use crate::checkpoint::save_safetensors;
use crate::noise::NoiseRng;
use crate::text::{default_vocab, write_tokenizer_json, Umt5EncoderModel};
use crate::{Error, Result};

/// The diffusers version whose layout the folder follows.
const DIFFUSERS_VERSION: &str = "0.42.1";

/// Writes a complete random model folder at `dir` (which must not exist or be empty). The
/// folder is assembled under a temporary name beside it and renamed into place at the end.
pub fn write_random_model(dir: &Path, preset: &WanPreset, seed: u64) -> Result<()> {
    if dir.exists() {
        let empty = std::fs::read_dir(dir)
            .map_err(|e| Error::io(dir, e))?
            .next()
            .is_none();
        if !empty {
            return Err(Error::InvalidRequest(format!(
                "{} exists and is not empty; choose a new folder",
                dir.display()
            )));
        }
        std::fs::remove_dir(dir).map_err(|e| Error::io(dir, e))?;
    }
    let mut tmp_name = dir.as_os_str().to_owned();
    tmp_name.push(format!(".tmp-{}", std::process::id()));
    let tmp = std::path::PathBuf::from(tmp_name);
    let result = write_into(&tmp, preset, seed);
    if result.is_err() {
        let _ = std::fs::remove_dir_all(&tmp);
        return result;
    }
    std::fs::rename(&tmp, dir).map_err(|e| Error::io(dir, e))
}

fn write_into(dir: &Path, preset: &WanPreset, seed: u64) -> Result<()> {
    for sub in [
        "transformer",
        "vae",
        "text_encoder",
        "tokenizer",
        "scheduler",
    ] {
        let path = dir.join(sub);
        std::fs::create_dir_all(&path).map_err(|e| Error::io(&path, e))?;
    }
    let mut rng = NoiseRng::new(seed);

    // Tokenizer first: the text encoder's vocabulary size is the tokenizer's.
    let mut text_cfg = preset.text_encoder.clone();
    if preset.own_tokenizer {
        // common prompt words plus every word of the procedural world's captions, so the
        // built-in model's prompts are one piece per word (others are spelled in characters)
        let mut pieces = default_vocab();
        let known: std::collections::HashSet<String> =
            pieces.iter().map(|(p, _)| p.clone()).collect();
        for word in crate::data::vocabulary() {
            let piece = format!("{}{word}", crate::text::vocab::WORD_START);
            if !known.contains(&piece) {
                pieces.push((piece, -8.0));
            }
        }
        let size = write_tokenizer_json(&dir.join("tokenizer"), &pieces)?;
        if text_cfg.vocab_size < size {
            text_cfg.vocab_size = size;
        }
    }

    write_diffusers_config(
        &dir.join("transformer/config.json"),
        &preset.transformer,
        "WanTransformer3DModel",
    )?;
    let cfg = preset.transformer.clone();
    write_random_weights(
        &dir.join("transformer/diffusion_pytorch_model.safetensors"),
        &mut rng,
        |vb| WanTransformer3D::new(&cfg, vb).map(|_| ()),
    )?;

    write_diffusers_config(
        &dir.join("vae/config.json"),
        &preset.vae,
        "AutoencoderKLWan",
    )?;
    let vae_cfg = preset.vae.clone();
    write_random_weights(
        &dir.join("vae/diffusion_pytorch_model.safetensors"),
        &mut rng,
        |vb| AutoencoderKlWan::new(&vae_cfg, vb).map(|_| ()),
    )?;

    let mut text_json = serde_json::to_value(&text_cfg).map_err(json_err)?;
    text_json["architectures"] = json!(["UMT5EncoderModel"]);
    text_json["model_type"] = json!("umt5");
    text_json["tie_word_embeddings"] = json!(true);
    write_json(&dir.join("text_encoder/config.json"), &text_json)?;
    let text_weights = random_weights(&mut rng, preset.text_encoder_dtype, |vb| {
        Umt5EncoderModel::new(&text_cfg, vb).map(|_| ())
    })?;
    save_safetensors(
        &dir.join("text_encoder/model.safetensors"),
        &detached(&text_weights),
    )?;

    write_json(
        &dir.join("scheduler/scheduler_config.json"),
        &preset.scheduler,
    )?;
    write_json(
        &dir.join("model_index.json"),
        &json!({
            "_class_name": "WanPipeline",
            "_diffusers_version": DIFFUSERS_VERSION,
            "boundary_ratio": null,
            "expand_timesteps": false,
            "scheduler": ["diffusers", "UniPCMultistepScheduler"],
            "text_encoder": ["transformers", "UMT5EncoderModel"],
            "tokenizer": ["transformers", "T5Tokenizer"],
            "transformer": ["diffusers", "WanTransformer3DModel"],
            "transformer_2": [null, null],
            "vae": ["diffusers", "AutoencoderKLWan"],
        }),
    )?;
    let defaults = serde_json::to_value(&preset.defaults).map_err(json_err)?;
    write_json(&dir.join("vidgen.json"), &defaults)
}

fn json_err(e: serde_json::Error) -> Error {
    Error::InvalidRequest(format!("cannot serialise config: {e}"))
}

/// A diffusers `config.json`: the config's fields plus `_class_name` and `_diffusers_version`.
fn write_diffusers_config(path: &Path, config: &impl serde::Serialize, class: &str) -> Result<()> {
    let mut value = serde_json::to_value(config).map_err(json_err)?;
    value["_class_name"] = json!(class);
    value["_diffusers_version"] = json!(DIFFUSERS_VERSION);
    write_json(path, &value)
}

fn write_json(path: &Path, value: &serde_json::Value) -> Result<()> {
    let text = serde_json::to_string_pretty(value).map_err(json_err)?;
    std::fs::write(path, text + "\n").map_err(|e| Error::io(path, e))
}

/// Builds a model against an empty `VarMap` (which records every weight's name and shape),
/// fills each weight as PyTorch's defaults would, and saves them as f32 safetensors.
fn write_random_weights(
    path: &Path,
    rng: &mut NoiseRng,
    build: impl FnOnce(VarBuilder) -> candle_core::Result<()>,
) -> Result<()> {
    save_safetensors(path, &detached(&random_weights(rng, DType::F32, build)?))
}

/// Random weights for whatever model `build` constructs: every tensor it asks for, named and
/// shaped as it asks, initialised like PyTorch's module defaults, stored as `dtype`. Build the
/// model again from `VarBuilder::from_varmap(&map, dtype, device)` to use them.
pub fn random_weights(
    rng: &mut NoiseRng,
    dtype: DType,
    build: impl FnOnce(VarBuilder) -> candle_core::Result<()>,
) -> Result<VarMap> {
    let varmap = VarMap::new();
    build(VarBuilder::from_varmap(&varmap, dtype, &Device::Cpu))?;
    let mut vars: Vec<(String, candle_core::Var)> = varmap
        .data()
        .lock()
        .expect("varmap lock")
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    vars.sort_by(|a, b| a.0.cmp(&b.0));
    let shapes: std::collections::HashMap<String, Vec<usize>> = vars
        .iter()
        .map(|(name, var)| (name.clone(), var.dims().to_vec()))
        .collect();
    for (name, var) in &vars {
        // A bias takes the fan-in of its layer's weight.
        let weight_dims = name
            .strip_suffix("bias")
            .and_then(|prefix| shapes.get(&format!("{prefix}weight")));
        let fan_in_dims = weight_dims.map_or(var.dims(), |d| d.as_slice());
        let value = initial_value(name, var.dims(), fan_in_dims, rng)?;
        // Each var keeps the dtype the model asked for (some parts stay f32 in any model dtype).
        var.set(&value.to_dtype(var.dtype())?)?;
    }
    Ok(varmap)
}

/// The weights of `map` as plain tensors. Use these, not the `Var`s, to run a model for
/// inference: ops on `Var`s record the graph for backpropagation, which keeps every
/// intermediate of a forward pass alive until its output is dropped.
pub fn detached(map: &VarMap) -> std::collections::HashMap<String, Tensor> {
    map.data()
        .lock()
        .expect("varmap lock")
        .iter()
        .map(|(name, var)| (name.clone(), var.as_detached_tensor()))
        .collect()
}

/// The starting value of one weight, chosen from its name and shape like PyTorch's module
/// defaults: norm scales 1 and norm biases 0, embeddings N(0, 1), the AdaLN tables
/// N(0, 1/D) as Wan initialises them, other weights and biases U(±1/√fan_in).
fn initial_value(
    name: &str,
    dims: &[usize],
    fan_in_dims: &[usize],
    rng: &mut NoiseRng,
) -> candle_core::Result<Tensor> {
    let n: usize = dims.iter().product();
    let leaf = name.rsplit('.').next().unwrap_or(name);
    let is_norm = name.contains("norm") || leaf == "gamma";
    let values: Vec<f32> = if is_norm && (leaf == "weight" || leaf == "gamma") {
        vec![1.0; n]
    } else if is_norm && leaf == "bias" {
        vec![0.0; n]
    } else if leaf == "scale_shift_table" {
        let d = *dims.last().unwrap_or(&1) as f32;
        rng.normals(n).into_iter().map(|x| x / d.sqrt()).collect()
    } else if name.contains("shared")
        || name.contains("embed_tokens")
        || name.contains("relative_attention_bias")
    {
        rng.normals(n)
    } else {
        let fan_in: usize = fan_in_dims.iter().skip(1).product();
        let bound = 1.0 / (fan_in.max(1) as f64).sqrt();
        (0..n)
            .map(|_| ((2.0 * rng.uniform() - 1.0) * bound) as f32)
            .collect()
    };
    Tensor::from_vec(values, dims, &Device::Cpu)
}
