//! The run configuration of `vidgen train`: one TOML file per run, saved next to its
//! checkpoints. Unknown keys are errors (a typo must not silently train with a default).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// Which component of the model folder a run trains.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Part {
    /// The 3D causal VAE: reconstruction + KL.
    Vae,
    /// The diffusion transformer: rectified-flow velocity loss on the frozen VAE's latents.
    Dit,
}

impl Part {
    /// The model-folder subfolder this part lives in.
    pub fn component(self) -> &'static str {
        match self {
            Part::Vae => "vae",
            Part::Dit => "transformer",
        }
    }
}

/// A whole run.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainConfig {
    /// Model folder (made by `vidgen init`); the trained component's EMA weights are written
    /// back into it at every checkpoint. Relative paths are relative to the config file.
    pub model: PathBuf,
    /// Run folder: `config.toml`, `checkpoints/`, `samples/`, `loss.csv`, `loss.png`.
    pub out: PathBuf,
    pub part: Part,
    /// Seeds the data order, the noise and the timesteps: a run is a function of its config.
    #[serde(default)]
    pub seed: u64,
    /// Optimizer steps.
    pub steps: usize,
    /// Clips per micro-batch.
    #[serde(default = "defaults::batch_size")]
    pub batch_size: usize,
    /// Micro-batches whose gradients are summed before each optimizer step.
    #[serde(default = "defaults::one")]
    pub grad_accum: usize,
    #[serde(default)]
    pub optim: OptimConfig,
    pub data: DataConfig,
    #[serde(default)]
    pub vae: VaeLossConfig,
    #[serde(default)]
    pub dit: DitLossConfig,
    /// Save a checkpoint every this many steps (and at the end).
    #[serde(default = "defaults::checkpoint_every")]
    pub checkpoint_every: usize,
    /// Write validation samples every this many steps (0: only at the end).
    #[serde(default)]
    pub sample_every: usize,
    /// Log a line every this many steps.
    #[serde(default = "defaults::log_every")]
    pub log_every: usize,
}

/// AdamW with linear warmup and cosine decay.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OptimConfig {
    /// Peak learning rate.
    #[serde(default = "defaults::lr")]
    pub lr: f64,
    /// Steps of linear warmup from 0 to `lr`.
    #[serde(default = "defaults::warmup")]
    pub warmup: usize,
    /// The cosine decays to `lr * min_lr_ratio` at the last step.
    #[serde(default = "defaults::min_lr_ratio")]
    pub min_lr_ratio: f64,
    #[serde(default = "defaults::betas")]
    pub betas: (f64, f64),
    #[serde(default = "defaults::adam_eps")]
    pub eps: f64,
    /// Decoupled weight decay, applied to matrices and convolution kernels only (not to
    /// norms, biases or the AdaLN tables).
    #[serde(default = "defaults::weight_decay")]
    pub weight_decay: f64,
    /// Clip the global gradient norm to this (0: no clipping).
    #[serde(default = "defaults::one_f")]
    pub grad_clip: f64,
    /// EMA decay of the exported weights (0: export the raw weights).
    #[serde(default = "defaults::ema_decay")]
    pub ema_decay: f64,
}

impl Default for OptimConfig {
    fn default() -> Self {
        toml::from_str("").expect("every field has a default")
    }
}

/// Where clips come from and at which sizes.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataConfig {
    /// `"world"` (the procedural world, drawn on the fly) or `"folder"` (videos with captions).
    #[serde(default = "defaults::world")]
    pub source: String,
    /// The folder of a `"folder"` source: `name.mp4` + `name.txt` pairs, or a `manifest.jsonl`.
    #[serde(default)]
    pub path: Option<PathBuf>,
    /// Size buckets `[frames, height, width]`; every batch is one bucket, drawn in
    /// proportion to `bucket_weights` (equal by default).
    pub buckets: Vec<[usize; 3]>,
    #[serde(default)]
    pub bucket_weights: Vec<f64>,
    /// Frames per second of the world's physics (and of folder clips' sampling).
    #[serde(default = "defaults::fps")]
    pub fps: u32,
    /// Clips per bucket in the world dataset (a fixed set, so latents are encoded once).
    #[serde(default = "defaults::num_clips")]
    pub num_clips: usize,
    /// Probability of training on the empty caption (classifier-free guidance).
    #[serde(default = "defaults::caption_dropout")]
    pub caption_dropout: f64,
    /// Probability that a training caption gets distractor words, inserted or in place of a
    /// verb its direction word makes redundant ([`crate::data::distract`]): robustness to
    /// phrasings and words the model never learned. 0 (the default): captions as drawn. Meant
    /// for the world source: the distractors are general prompt words, which in a folder
    /// dataset's own captions may carry meaning.
    #[serde(default)]
    pub word_noise: f64,
    /// World source: multipliers of the scene mixture's shares by scene name (`move`, `fall`,
    /// `bounce`, `still`, `two_objects`, `occluder`, `pan`; unnamed ones 1), e.g.
    /// `{ pan = 3.0 }` to draw camera pans three times as often. Empty: the world's own mix.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub scene_weights: std::collections::BTreeMap<String, f64>,
}

/// VAE losses: `l1_weight·|M(x - x̂)| + mse_weight·(M(x - x̂))² + kl_weight·KL`, means over
/// elements, with `M` RGB → YCbCr with chroma scaled by `chroma_weight`.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VaeLossConfig {
    #[serde(default = "defaults::one_f")]
    pub l1_weight: f64,
    #[serde(default = "defaults::one_f")]
    pub mse_weight: f64,
    #[serde(default = "defaults::kl_weight")]
    pub kl_weight: f64,
    /// The pixel losses are taken in YCbCr (BT.601) with the two chroma channels scaled by
    /// this. Luminance carries most of a video's variance, so in RGB a small VAE learns it
    /// first and colour only much later (measured: grey reconstructions after 400 steps);
    /// weighting chroma up balances the two. 1 is plain YCbCr, which differs from RGB by a
    /// rotation and a scale.
    #[serde(default = "defaults::chroma_weight")]
    pub chroma_weight: f64,
    /// At the start of a run (not on resume), the bias of the encoder's log-variance outputs
    /// (`quant_conv`'s second half) is set to this: the posterior starts nearly deterministic.
    /// From a random init its variance is ~1, which drowns the latents in sampling noise, and
    /// Adam at lr 1e-3 takes thousands of steps to shrink it.
    #[serde(default = "defaults::init_logvar")]
    pub init_logvar: Option<f64>,
    /// Clips whose latents set `latents_mean` / `latents_std` in `vae/config.json` at export.
    #[serde(default = "defaults::stats_clips")]
    pub stats_clips: usize,
}

impl Default for VaeLossConfig {
    fn default() -> Self {
        toml::from_str("").expect("every field has a default")
    }
}

/// How the DiT's training times are drawn: `sigma = shift·s / (1 + (shift - 1)·s)` with `s`
/// logit-normal (`sigmoid(N(logit_mean, logit_std²))`, SD3 / Wan) or uniform.
#[derive(Clone, Debug, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DitLossConfig {
    /// `"logit-normal"` or `"uniform"`.
    #[serde(default = "defaults::logit_normal")]
    pub timestep_sampling: String,
    #[serde(default)]
    pub logit_mean: f64,
    #[serde(default = "defaults::one_f")]
    pub logit_std: f64,
    #[serde(default = "defaults::one_f")]
    pub shift: f64,
    /// At the start of a run (not on resume), zero the AdaLN modulation (`time_proj`, the
    /// `scale_shift_table`s) and the output projection, so every block starts as the identity
    /// and the prediction at zero: DiT's AdaLN-Zero initialisation.
    #[serde(default = "defaults::yes")]
    pub zero_init: bool,
    /// Train the text encoder together with the DiT (its gradients come through the DiT's
    /// cross-attention; the model folder's `text_encoder/` is exported with the transformer).
    /// Off: the encoder stays as it is and each caption is encoded once.
    #[serde(default)]
    pub train_text_encoder: bool,
    /// The trained text encoder's learning rate as a multiple of `optim.lr` (its schedule
    /// follows the same warmup and cosine).
    #[serde(default = "defaults::one_f")]
    pub text_encoder_lr_scale: f64,
    /// Prompts rendered at each sampling point (the model folder's defaults set the size).
    #[serde(default)]
    pub sample_prompts: Vec<String>,
}

impl Default for DitLossConfig {
    fn default() -> Self {
        toml::from_str("").expect("every field has a default")
    }
}

mod defaults {
    pub fn batch_size() -> usize {
        8
    }
    pub fn one() -> usize {
        1
    }
    pub fn one_f() -> f64 {
        1.0
    }
    pub fn checkpoint_every() -> usize {
        250
    }
    pub fn log_every() -> usize {
        10
    }
    pub fn lr() -> f64 {
        1e-3
    }
    pub fn warmup() -> usize {
        100
    }
    pub fn min_lr_ratio() -> f64 {
        0.1
    }
    pub fn betas() -> (f64, f64) {
        (0.9, 0.99)
    }
    pub fn adam_eps() -> f64 {
        1e-8
    }
    pub fn weight_decay() -> f64 {
        0.01
    }
    pub fn ema_decay() -> f64 {
        0.995
    }
    pub fn world() -> String {
        "world".into()
    }
    pub fn fps() -> u32 {
        8
    }
    pub fn num_clips() -> usize {
        2000
    }
    pub fn caption_dropout() -> f64 {
        0.1
    }
    pub fn kl_weight() -> f64 {
        1e-4
    }
    pub fn chroma_weight() -> f64 {
        4.0
    }
    pub fn init_logvar() -> Option<f64> {
        Some(-8.0)
    }
    pub fn stats_clips() -> usize {
        64
    }
    pub fn yes() -> bool {
        true
    }
    pub fn logit_normal() -> String {
        "logit-normal".into()
    }
}

impl TrainConfig {
    /// Reads and checks a config file; relative `model`, `out` and `data.path` are resolved
    /// against the file's folder.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let mut cfg = Self::from_toml(&text).map_err(|e| match e {
            Error::BadConfig { reason, .. } => Error::BadConfig {
                path: path.to_path_buf(),
                reason,
            },
            other => other,
        })?;
        let base = path.parent().unwrap_or(Path::new("."));
        let resolve = |p: &Path| {
            if p.is_relative() {
                base.join(p)
            } else {
                p.to_path_buf()
            }
        };
        cfg.model = resolve(&cfg.model);
        cfg.out = resolve(&cfg.out);
        cfg.data.path = cfg.data.path.as_deref().map(resolve);
        Ok(cfg)
    }

    /// Parses and checks TOML text (paths are kept as written).
    pub fn from_toml(text: &str) -> Result<Self> {
        let bad = |reason: String| Error::BadConfig {
            path: PathBuf::from("<config>"),
            reason,
        };
        let cfg: TrainConfig = toml::from_str(text).map_err(|e| bad(e.to_string()))?;
        cfg.check().map_err(bad)?;
        Ok(cfg)
    }

    /// The TOML text of this config (what the run folder keeps).
    pub fn to_toml(&self) -> Result<String> {
        toml::to_string_pretty(self)
            .map_err(|e| Error::InvalidRequest(format!("cannot serialise the config: {e}")))
    }

    fn check(&self) -> std::result::Result<(), String> {
        if self.steps == 0 || self.batch_size == 0 || self.grad_accum == 0 {
            return Err("steps, batch_size and grad_accum must be at least 1".into());
        }
        if self.checkpoint_every == 0 || self.log_every == 0 {
            return Err("checkpoint_every and log_every must be at least 1".into());
        }
        let d = &self.data;
        if d.buckets.is_empty() {
            return Err("data.buckets needs at least one [frames, height, width]".into());
        }
        for &[f, h, w] in &d.buckets {
            if f == 0 || h == 0 || w == 0 {
                return Err(format!("bucket [{f}, {h}, {w}] has a zero size"));
            }
        }
        if !d.bucket_weights.is_empty()
            && (d.bucket_weights.len() != d.buckets.len()
                || d.bucket_weights.iter().any(|w| w.is_nan() || *w < 0.0)
                || d.bucket_weights.iter().sum::<f64>() <= 0.0)
        {
            return Err(format!(
                "data.bucket_weights needs {} non-negative weights (one per bucket), not all zero",
                d.buckets.len()
            ));
        }
        match d.source.as_str() {
            "world" => {}
            "folder" if d.path.is_some() => {}
            "folder" => return Err("data.source = \"folder\" needs data.path".into()),
            other => {
                return Err(format!(
                    "data.source {other:?} is not supported; use \"world\" or \"folder\""
                ))
            }
        }
        if d.num_clips == 0 || d.fps == 0 {
            return Err("data.num_clips and data.fps must be at least 1".into());
        }
        if !(0.0..=1.0).contains(&d.caption_dropout) {
            return Err("data.caption_dropout must be in [0, 1]".into());
        }
        if !(0.0..=1.0).contains(&d.word_noise) {
            return Err("data.word_noise must be in [0, 1]".into());
        }
        if !d.scene_weights.is_empty() {
            if d.source != "world" {
                return Err("data.scene_weights applies to data.source = \"world\" only".into());
            }
            crate::data::world::reweighted_mixture(&d.scene_weights)?;
        }
        let o = &self.optim;
        if o.lr.is_nan()
            || o.lr <= 0.0
            || !(0.0..=1.0).contains(&o.min_lr_ratio)
            || !(0.0..1.0).contains(&o.ema_decay)
        {
            return Err("optim: lr > 0, min_lr_ratio in [0, 1], ema_decay in [0, 1)".into());
        }
        if !matches!(
            self.dit.timestep_sampling.as_str(),
            "logit-normal" | "uniform"
        ) {
            return Err(format!(
                "dit.timestep_sampling {:?} is not supported; use \"logit-normal\" or \"uniform\"",
                self.dit.timestep_sampling
            ));
        }
        if !(self.dit.text_encoder_lr_scale > 0.0 && self.dit.text_encoder_lr_scale.is_finite()) {
            return Err(format!(
                "dit.text_encoder_lr_scale must be a positive number, got {}",
                self.dit.text_encoder_lr_scale
            ));
        }
        if self.dit.shift.is_nan()
            || self.dit.shift <= 0.0
            || self.dit.logit_std.is_nan()
            || self.dit.logit_std <= 0.0
        {
            return Err("dit.shift and dit.logit_std must be positive".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
model = "m"
out = "runs/a"
part = "dit"
steps = 10
[data]
buckets = [[17, 64, 64], [9, 48, 80]]
"#;

    #[test]
    fn minimal_config_takes_defaults_and_round_trips() {
        let cfg = TrainConfig::from_toml(MINIMAL).unwrap();
        assert_eq!(cfg.part, Part::Dit);
        assert_eq!(cfg.batch_size, 8);
        assert_eq!(cfg.optim.warmup, 100);
        assert_eq!(cfg.data.source, "world");
        let again = TrainConfig::from_toml(&cfg.to_toml().unwrap()).unwrap();
        assert_eq!(again.data.buckets, cfg.data.buckets);
        assert_eq!(again.optim.lr, cfg.optim.lr);
    }

    #[test]
    fn unknown_keys_and_bad_values_are_errors_that_say_what() {
        let err = TrainConfig::from_toml(&format!("{MINIMAL}\nlearning_rate = 1.0"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("unknown field") && err.contains("learning_rate"),
            "{err}"
        );
        let err = TrainConfig::from_toml(&MINIMAL.replace("\"dit\"", "\"unet\""))
            .unwrap_err()
            .to_string();
        assert!(err.contains("unet"), "{err}");
        let err = TrainConfig::from_toml(&format!("{MINIMAL}word_noise = 1.5"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("word_noise"), "{err}");
        let err = TrainConfig::from_toml(&MINIMAL.replace("[[17, 64, 64], [9, 48, 80]]", "[]"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("buckets"), "{err}");
        let err = TrainConfig::from_toml(&format!("{MINIMAL}source = \"folder\""))
            .unwrap_err()
            .to_string();
        assert!(err.contains("data.path"), "{err}");
    }
}
