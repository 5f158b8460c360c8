//! The training loop of `vidgen train`: builds the trained component of a model folder on
//! `Var`s, steps AdamW on the VAE or DiT loss, checkpoints (resumable), exports the EMA weights
//! back into the model folder, and renders validation samples.
//!
//! The model is rebuilt from the `VarMap` for every micro-batch: some layers derive tensors
//! from their weights at construction (folded up-sampling kernels), and those must follow the
//! weights the optimizer just changed.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::{VarBuilder, VarMap};

use super::config::{Part, TrainConfig};
use super::data::{plan_batch, BatchPlan, ClipSource, FolderSource, TrainClip, WorldSource};
use super::optim::AdamW;
use crate::checkpoint::{class_name, save_safetensors, weight_files};
use crate::families::wan::config::WanTransformerConfig;
use crate::families::wan::pipeline::WanPipeline;
use crate::families::wan::transformer::WanTransformer3D;
use crate::families::wan::vae::{AutoencoderKlWan, AutoencoderKlWanConfig};
use crate::noise::NoiseRng;
use crate::pipeline::{build_component, LoadOptions, ModelDefaults};
use crate::text::{encode_prompts, T5Config, T5EncoderModel};
use crate::{Error, Result};

/// Checkpoints kept in `out/checkpoints` (older ones are deleted).
const KEEP_CHECKPOINTS: usize = 3;

/// What one optimizer step did.
#[derive(Clone, Debug)]
pub struct StepReport {
    /// Steps done (1-based).
    pub step: usize,
    pub total: usize,
    /// Mean loss over the step's micro-batches.
    pub loss: f64,
    pub lr: f64,
    pub grad_norm: f64,
    /// `[frames, height, width]` of the step's bucket.
    pub size: [usize; 3],
}

/// The frozen parts a DiT run needs, and its caches.
struct DitState {
    config: WanTransformerConfig,
    vae: AutoencoderKlWan,
    /// The frozen text encoder (and the tokenizer, also when the encoder is trained).
    text: WanPipeline,
    /// With `dit.train_text_encoder`: the encoder's config; its weights are vars of the run
    /// under [`TEXT_PREFIX`].
    trained_text: Option<T5Config>,
    max_len: usize,
    /// Each clip drawn so far, encoded: by (bucket size, clip index).
    encoded: HashMap<([usize; 3], usize), EncodedClip>,
    /// Text states `(1, L, D_text)` by caption.
    texts: HashMap<String, Tensor>,
}

/// Where a trained text encoder's vars sit in a DiT run's var map (and optimizer state):
/// `text_encoder.<name in text_encoder/model.safetensors>`.
const TEXT_PREFIX: &str = "text_encoder";

/// A clip as the DiT trains on it: normalised VAE latents `(1, C, T, h, w)` and its caption.
struct EncodedClip {
    latents: Tensor,
    caption: String,
}

/// A DiT run encodes its clips in fixed groups (`index / group`) of about this many pixels (16
/// clips of 17x64x64; at least 1, at most 16 clips), one VAE batch per group rather than one
/// clip at a time. A clip's group does not depend on which step first asked for it, so its
/// latents are the same bits in a resumed run as in an uninterrupted one.
const ENCODE_GROUP_PIXELS: usize = 16 * 17 * 64 * 64;

enum PartState {
    Vae(Box<AutoencoderKlWanConfig>),
    Dit(Box<DitState>),
}

/// A training run in progress.
pub struct Trainer {
    cfg: TrainConfig,
    device: Device,
    varmap: VarMap,
    opt: AdamW,
    source: Box<dyn ClipSource>,
    part: PartState,
    /// `(step, mean loss)` of every step so far.
    pub history: Vec<(usize, f64)>,
    /// `VIDGEN_TRAIN_TIMING=1`: where the steps' time goes.
    clock: Option<PhaseClock>,
}

/// Wall time of each phase of the steps (the device synchronised at every phase end, which
/// costs a little), logged every `every` steps: which part of a step to make faster.
struct PhaseClock {
    device: Device,
    every: usize,
    last: std::time::Instant,
    steps: usize,
    totals: Vec<(&'static str, f64)>,
}

impl PhaseClock {
    fn from_env(device: &Device, every: usize) -> Option<Self> {
        std::env::var("VIDGEN_TRAIN_TIMING")
            .is_ok_and(|v| v == "1")
            .then(|| Self {
                device: device.clone(),
                every: every.max(1),
                last: std::time::Instant::now(),
                steps: 0,
                totals: Vec::new(),
            })
    }

    fn start(&mut self) -> Result<()> {
        self.device.synchronize()?;
        self.last = std::time::Instant::now();
        Ok(())
    }

    fn mark(&mut self, phase: &'static str) -> Result<()> {
        self.device.synchronize()?;
        let now = std::time::Instant::now();
        let dt = (now - self.last).as_secs_f64();
        self.last = now;
        match self.totals.iter_mut().find(|(p, _)| *p == phase) {
            Some((_, t)) => *t += dt,
            None => self.totals.push((phase, dt)),
        }
        Ok(())
    }

    fn end_step(&mut self) {
        self.steps += 1;
        if self.steps.is_multiple_of(self.every) {
            let n = self.steps as f64;
            let phases: Vec<String> = self
                .totals
                .iter()
                .map(|(p, t)| format!("{p} {:.4}", t / n))
                .collect();
            tracing::info!(
                "seconds per step over {} steps: {}",
                self.steps,
                phases.join(", ")
            );
        }
    }
}

#[derive(serde::Serialize, serde::Deserialize)]
struct TrainerState {
    step: usize,
    part: Part,
    history: Vec<(usize, f64)>,
}

impl Trainer {
    /// Opens the run on the CPU: checks the model folder and the sizes, loads the component's
    /// current weights, and with `resume` restores the latest checkpoint of `cfg.out`.
    pub fn new(cfg: TrainConfig, resume: bool) -> Result<Self> {
        Self::on_device(cfg, resume, Device::Cpu)
    }

    /// [`Self::new`] with the weights, optimizer state and steps on `device` (clips are drawn
    /// and validation samples rendered on the CPU). Checkpoints are device-independent: a run
    /// may be resumed on another device.
    pub fn on_device(cfg: TrainConfig, resume: bool, device: Device) -> Result<Self> {
        let model = &cfg.model;
        let class = class_name(&model.join("model_index.json"))?;
        if class != "WanPipeline" {
            return Err(Error::Unsupported {
                what: "pipeline for training",
                name: class,
                supported: "WanPipeline (folders made by `vidgen init`)".into(),
            });
        }
        let latest = latest_checkpoint(&cfg.out)?;
        match (&latest, resume) {
            (Some(dir), false) => {
                return Err(Error::InvalidRequest(format!(
                    "run folder {} already has a checkpoint ({}); pass --resume to continue it, \
                     or choose another `out`",
                    cfg.out.display(),
                    dir.display()
                )))
            }
            (None, true) => {
                return Err(Error::InvalidRequest(format!(
                    "nothing to resume: {} has no checkpoint",
                    cfg.out.display()
                )))
            }
            _ => {}
        }

        let source: Box<dyn ClipSource> = match cfg.data.source.as_str() {
            "folder" => Box::new(FolderSource::open(
                cfg.data.path.as_deref().expect("checked by the config"),
            )?),
            _ => Box::new(WorldSource {
                seed: cfg.seed,
                fps: cfg.data.fps,
                num_clips: cfg.data.num_clips,
                mixture: if cfg.data.scene_weights.is_empty() {
                    None
                } else {
                    Some(
                        crate::data::world::reweighted_mixture(&cfg.data.scene_weights)
                            .map_err(Error::InvalidRequest)?,
                    )
                },
            }),
        };

        let vae_cfg = AutoencoderKlWanConfig::from_file(model.join("vae/config.json"))?;
        let (tc, sc) = (
            vae_cfg.temporal_compression(),
            vae_cfg.spatial_compression(),
        );
        let varmap = VarMap::new();
        let vb = VarBuilder::from_varmap(&varmap, DType::F32, &device);
        let part = match cfg.part {
            Part::Vae => {
                check_buckets(&cfg, tc, sc, "the VAE")?;
                AutoencoderKlWan::new(&vae_cfg, vb)?;
                PartState::Vae(Box::new(vae_cfg))
            }
            Part::Dit => {
                let config: WanTransformerConfig =
                    crate::pipeline::read_config(model, "transformer", "WanTransformer3DModel")?;
                let (_, ph, pw) = config.patch().map_err(Error::InvalidRequest)?;
                check_buckets(&cfg, tc, sc * ph.max(pw), "the VAE and the DiT's patches")?;
                WanTransformer3D::new(&config, vb.clone())?;
                let trained_text = if cfg.dit.train_text_encoder {
                    let text_cfg = T5Config::from_file(model.join("text_encoder/config.json"))?;
                    T5EncoderModel::new(&text_cfg, vb.pp(TEXT_PREFIX))?;
                    Some(text_cfg)
                } else {
                    None
                };
                let vae = build_component(model, "vae", DType::F32, &device, |vb| {
                    AutoencoderKlWan::new(&vae_cfg, vb)
                })?;
                let opts = LoadOptions {
                    keep_loaded: true,
                    ..LoadOptions::default()
                };
                let text = WanPipeline::load(model, opts)?;
                let max_len =
                    ModelDefaults::load(model, ModelDefaults::default())?.max_sequence_length;
                PartState::Dit(Box::new(DitState {
                    config,
                    vae,
                    text,
                    trained_text,
                    max_len,
                    encoded: HashMap::new(),
                    texts: HashMap::new(),
                }))
            }
        };
        load_into(
            &varmap,
            &[
                (TEXT_PREFIX, model.join("text_encoder")),
                ("", model.join(cfg.part.component())),
            ],
            &device,
        )?;
        if latest.is_none() {
            match cfg.part {
                Part::Dit if cfg.dit.zero_init => zero_adaln(&varmap)?,
                Part::Vae => {
                    if let Some(value) = cfg.vae.init_logvar {
                        init_logvar(&varmap, value)?;
                    }
                }
                _ => {}
            }
        }
        let params: HashMap<String, Var> = varmap.data().lock().expect("varmap lock").clone();
        let mut opt = AdamW::new(params, cfg.optim.clone())?;
        opt.scale_lr(&format!("{TEXT_PREFIX}."), cfg.dit.text_encoder_lr_scale);

        let mut history = Vec::new();
        if let Some(dir) = latest {
            let state: TrainerState = crate::checkpoint::read_json(&dir.join("trainer.json"))?;
            if state.part != cfg.part {
                return Err(Error::InvalidRequest(format!(
                    "{} is a checkpoint of the {:?} run, this config trains the {:?}",
                    dir.display(),
                    state.part,
                    cfg.part
                )));
            }
            let file = dir.join("state.safetensors");
            let tensors =
                candle_core::safetensors::load(&file, &device).map_err(|e| Error::BadWeights {
                    path: file.clone(),
                    reason: e.to_string(),
                })?;
            opt.load_state(&tensors, state.step)
                .map_err(|e| Error::BadWeights {
                    path: file,
                    reason: e.to_string(),
                })?;
            history = state.history;
        }
        std::fs::create_dir_all(&cfg.out).map_err(|e| Error::io(&cfg.out, e))?;
        write_atomic(&cfg.out.join("config.toml"), cfg.to_toml()?.as_bytes())?;
        Ok(Self {
            clock: PhaseClock::from_env(&device, cfg.log_every),
            cfg,
            device,
            varmap,
            opt,
            source,
            part,
            history,
        })
    }

    pub fn config(&self) -> &TrainConfig {
        &self.cfg
    }

    /// Optimizer steps done so far.
    pub fn steps_done(&self) -> usize {
        self.opt.step
    }

    pub(crate) fn source(&self) -> &dyn ClipSource {
        self.source.as_ref()
    }

    /// The weights a checkpoint exports (EMA unless disabled), by checkpoint name.
    pub fn export_weights(&self) -> HashMap<String, Tensor> {
        self.opt.export_weights()
    }

    /// The VAE config of a VAE run.
    pub(crate) fn vae_config(&self) -> &AutoencoderKlWanConfig {
        match &self.part {
            PartState::Vae(cfg) => cfg,
            PartState::Dit(state) => state.vae.config(),
        }
    }

    /// One optimizer step over `grad_accum` micro-batches.
    pub fn step(&mut self) -> Result<StepReport> {
        let step = self.opt.step;
        let mut grads = Vec::new();
        let mut loss_sum = 0.0;
        let mut size = [0; 3];
        for micro in 0..self.cfg.grad_accum {
            let plan = plan_batch(
                &self.cfg.data,
                self.source.len(),
                self.cfg.batch_size,
                self.cfg.seed,
                step,
                micro,
            );
            size = plan.size;
            if let Some(clock) = &mut self.clock {
                clock.start()?;
            }
            if let PartState::Dit(state) = &mut self.part {
                state.encode_missing(self.source.as_ref(), &plan, &self.device)?;
                self.mark("pool")?;
            }
            let loss = match self.cfg.part {
                Part::Vae => self.vae_loss(&plan)?,
                Part::Dit => self.dit_loss(&plan)?,
            };
            let value = loss.to_dtype(DType::F64)?.to_scalar::<f64>()?;
            if !value.is_finite() {
                return Err(Error::NonFinite(format!("the loss at step {}", step + 1)));
            }
            loss_sum += value;
            self.mark("forward")?;
            let step_grads = loss.backward()?;
            self.mark("backward")?;
            self.opt.accumulate(&mut grads, &step_grads)?;
        }
        let stats = self
            .opt
            .step(grads, self.cfg.grad_accum as f64, self.cfg.steps)?;
        self.mark("optimizer")?;
        if let Some(clock) = &mut self.clock {
            clock.end_step();
        }
        let loss = loss_sum / self.cfg.grad_accum as f64;
        self.history.push((step + 1, loss));
        Ok(StepReport {
            step: step + 1,
            total: self.cfg.steps,
            loss,
            lr: stats.lr,
            grad_norm: stats.grad_norm,
            size,
        })
    }

    fn mark(&mut self, phase: &'static str) -> Result<()> {
        match &mut self.clock {
            Some(clock) => Ok(clock.mark(phase)?),
            None => Ok(()),
        }
    }

    fn clips(&self, plan: &BatchPlan) -> Result<Vec<TrainClip>> {
        plan.clips
            .iter()
            .map(|&i| self.source.clip(i, plan.size))
            .collect()
    }

    /// `|x - x̂|₁ + mse·(x - x̂)² + kl·KL(q(z|x) ‖ N(0, 1))`, means over elements.
    fn vae_loss(&self, plan: &BatchPlan) -> Result<Tensor> {
        let PartState::Vae(vae_cfg) = &self.part else {
            unreachable!("vae_loss on a DiT run")
        };
        let clips = self.clips(plan)?;
        let videos = clips
            .iter()
            .map(|c| c.to_vae_input(&self.device))
            .collect::<Result<Vec<_>>>()?;
        let video = Tensor::cat(&videos, 0)?; // (B, 3, F, H, W) in [-1, 1]
                                              // b c f h w -> b f h w c: the decoder's channels-last output layout
        let target = video.permute((0, 2, 3, 4, 1))?;
        let vae = AutoencoderKlWan::new(
            vae_cfg,
            VarBuilder::from_varmap(&self.varmap, DType::F32, &self.device),
        )?;
        let posterior = vae.encode(&video)?;
        let mut rng = NoiseRng::new(plan.noise_seed);
        let noise = Tensor::from_vec(
            rng.normals(posterior.mean.elem_count()),
            posterior.mean.shape(),
            &self.device,
        )?;
        let z = posterior.sample(&noise)?;
        let recon = vae.decode_tile(&z, &mut |_| {})?; // (B, F, H, W, 3), unclamped
        let diff = colour_weighted(&(recon - &target)?, self.cfg.vae.chroma_weight)?;
        let l1 = diff.abs()?.mean_all()?;
        let mse = diff.sqr()?.mean_all()?;
        let var = posterior.logvar.exp()?;
        let kl = ((posterior.mean.sqr()? + var)? - 1.0)?
            .sub(&posterior.logvar)?
            .mean_all()?
            * 0.5;
        let c = &self.cfg.vae;
        Ok(((l1 * c.l1_weight)? + (mse * c.mse_weight)? + (kl? * c.kl_weight)?)?)
    }

    /// Rectified flow: `x_σ = (1 - σ)·x₀ + σ·ε`, the DiT predicts `ε - x₀` at `t = 1000σ`
    /// (the velocity the flow schedulers integrate); mean squared error. The plan's clips are
    /// encoded already ([`DitState::encode_missing`]).
    fn dit_loss(&mut self, plan: &BatchPlan) -> Result<Tensor> {
        let PartState::Dit(state) = &mut self.part else {
            unreachable!("dit_loss on a VAE run")
        };
        let mut latents = Vec::with_capacity(plan.clips.len());
        let mut captions = Vec::with_capacity(plan.clips.len());
        for ((&index, &drop), &distract) in plan
            .clips
            .iter()
            .zip(&plan.drop_caption)
            .zip(&plan.distract)
        {
            let clip = &state.encoded[&(plan.size, index)];
            latents.push(clip.latents.clone());
            captions.push(match (drop, distract) {
                (true, _) => String::new(),
                (false, Some(seed)) => {
                    crate::data::distract(&clip.caption, &mut NoiseRng::new(seed))
                }
                (false, None) => clip.caption.clone(),
            });
        }
        let x0 = Tensor::cat(&latents, 0)?;
        let text = match &state.trained_text {
            // the encoder being trained: this batch's captions through it, as the pipeline
            // encodes prompts (cleaned, masked, zeroed past each caption's length)
            Some(text_cfg) => {
                let vb = VarBuilder::from_varmap(&self.varmap, DType::F32, &self.device);
                let encoder = T5EncoderModel::new(text_cfg, vb.pp(TEXT_PREFIX))?;
                let captions: Vec<&str> = captions.iter().map(String::as_str).collect();
                encode_prompts(state.text.tokenizer(), &encoder, &captions, state.max_len)?
            }
            None => {
                let texts = captions
                    .iter()
                    .map(|c| state.text_of(c, &self.device))
                    .collect::<Result<Vec<_>>>()?;
                Tensor::cat(&texts, 0)?
            }
        };
        let b = x0.dim(0)?;

        let mut rng = NoiseRng::new(plan.noise_seed);
        let dit = &self.cfg.dit;
        let sigmas: Vec<f32> = (0..b)
            .map(|_| {
                let s = if dit.timestep_sampling == "uniform" {
                    rng.uniform()
                } else {
                    let u = dit.logit_mean + dit.logit_std * rng.normals(1)[0] as f64;
                    1.0 / (1.0 + (-u).exp())
                };
                (dit.shift * s / (1.0 + (dit.shift - 1.0) * s)) as f32
            })
            .collect();
        let noise = Tensor::from_vec(rng.normals(x0.elem_count()), x0.shape(), &self.device)?;
        let sigma = Tensor::from_vec(sigmas.clone(), (b, 1, 1, 1, 1), &self.device)?;
        let noisy = (x0.broadcast_mul(&(1.0 - &sigma)?)? + noise.broadcast_mul(&sigma)?)?;
        let target = (&noise - &x0)?;
        let timestep = Tensor::from_vec(
            sigmas.iter().map(|s| s * 1000.0).collect::<Vec<f32>>(),
            b,
            &self.device,
        )?;
        let model = WanTransformer3D::new(
            &state.config,
            VarBuilder::from_varmap(&self.varmap, DType::F32, &self.device),
        )?;
        let pred = model.forward(&noisy, &timestep, &text)?;
        Ok((pred - target)?.sqr()?.mean_all()?)
    }
}

impl DitState {
    /// Draws and encodes the groups of clips that hold a clip of `plan` not encoded yet: the
    /// clips drawn in parallel, each group encoded as one batch.
    fn encode_missing(
        &mut self,
        source: &dyn ClipSource,
        plan: &BatchPlan,
        device: &Device,
    ) -> Result<()> {
        use rayon::prelude::*;
        let size = plan.size;
        let group = (ENCODE_GROUP_PIXELS / size.iter().product::<usize>()).clamp(1, 16);
        let mut groups: Vec<usize> = plan
            .clips
            .iter()
            .filter(|&&i| !self.encoded.contains_key(&(size, i)))
            .map(|&i| i / group)
            .collect();
        groups.sort_unstable();
        groups.dedup();
        let ranges: Vec<_> = groups
            .iter()
            .map(|&g| g * group..((g + 1) * group).min(source.len()))
            .collect();
        let indices: Vec<usize> = ranges.iter().cloned().flatten().collect();
        let clips: Vec<TrainClip> = indices
            .par_iter()
            .map(|&i| source.clip(i, size))
            .collect::<Result<_>>()?;
        let mut clips = clips.into_iter();
        for range in ranges {
            let batch: Vec<TrainClip> = clips.by_ref().take(range.len()).collect();
            let inputs = batch
                .iter()
                .map(|c| c.to_vae_input(device))
                .collect::<Result<Vec<_>>>()?;
            let mean = self.vae.encode(&Tensor::cat(&inputs, 0)?)?.mean;
            let latents = self.vae.normalize_latents(&mean)?;
            for (k, (index, clip)) in range.zip(batch).enumerate() {
                let encoded = EncodedClip {
                    latents: latents.narrow(0, k, 1)?.contiguous()?,
                    caption: clip.caption,
                };
                self.encoded.insert((size, index), encoded);
            }
        }
        Ok(())
    }

    /// The caption's text states on `device`: the frozen text encoder runs on the CPU, once
    /// per caption.
    fn text_of(&mut self, caption: &str, device: &Device) -> Result<Tensor> {
        if let Some(t) = self.texts.get(caption) {
            return Ok(t.clone());
        }
        let states = self
            .text
            .encode_text(&[caption], self.max_len)?
            .to_device(device)?;
        self.texts.insert(caption.to_string(), states.clone());
        Ok(states)
    }
}

/// `(…, 3)` RGB differences → BT.601 YCbCr differences with the chroma channels times `k`.
fn colour_weighted(diff: &Tensor, k: f64) -> Result<Tensor> {
    let k = k as f32;
    #[rustfmt::skip]
    let m = [
        0.299, 0.587, 0.114,
        -0.168_736 * k, -0.331_264 * k, 0.5 * k,
        0.5 * k, -0.418_688 * k, -0.081_312 * k,
    ];
    // (…, 3) · Mᵀ
    let mt = Tensor::from_vec(m.to_vec(), (3, 3), diff.device())?.t()?;
    let dims = diff.dims().to_vec();
    Ok(diff.reshape(((), 3))?.matmul(&mt)?.reshape(dims)?)
}

/// Every bucket must fit the model: frames `1 + t·k`, height and width multiples of `s`.
fn check_buckets(cfg: &TrainConfig, t: usize, s: usize, what: &str) -> Result<()> {
    for &[f, h, w] in &cfg.data.buckets {
        if f % t != 1 % t || h % s != 0 || w % s != 0 {
            return Err(Error::InvalidRequest(format!(
                "bucket [{f}, {h}, {w}] does not fit {what}: frames must be 1 + {t}k and height \
                 and width multiples of {s}"
            )));
        }
    }
    Ok(())
}

/// AdaLN-Zero: the modulation (`condition_embedder.time_proj`, every `scale_shift_table`) and
/// `proj_out` set to zero, so each block's gates are zero (identity blocks) and the first
/// prediction is zero.
fn zero_adaln(varmap: &VarMap) -> Result<()> {
    for (name, var) in varmap.data().lock().expect("varmap lock").iter() {
        if name.ends_with("scale_shift_table")
            || name.starts_with("condition_embedder.time_proj.")
            || name.starts_with("proj_out.")
        {
            var.set(&var.as_detached_tensor().zeros_like()?)?;
        }
    }
    Ok(())
}

/// Sets the bias of the log-variance half of `quant_conv`'s outputs to `value`.
fn init_logvar(varmap: &VarMap, value: f64) -> Result<()> {
    let data = varmap.data().lock().expect("varmap lock");
    let Some(bias) = data.get("quant_conv.bias") else {
        return Ok(());
    };
    let z = bias.dim(0)? / 2;
    let mean = bias.as_detached_tensor().narrow(0, 0, z)?;
    let logvar = Tensor::full(value as f32, z, bias.device())?;
    bias.set(&Tensor::cat(&[&mean, &logvar], 0)?)?;
    Ok(())
}

/// Sets every var of `varmap` from the weights of the folders in `sources`, `(prefix, dir)`:
/// a var named `prefix.name` loads `name` from `dir`, the first matching prefix winning (`""`
/// matches every name, as it is). A missing or mis-shaped weight is an error; a folder no var
/// reads is not opened.
fn load_into(varmap: &VarMap, sources: &[(&str, PathBuf)], device: &Device) -> Result<()> {
    let data = varmap.data().lock().expect("varmap lock");
    let source_of = |name: &str| -> Option<(usize, String)> {
        sources.iter().enumerate().find_map(|(i, (prefix, _))| {
            if prefix.is_empty() {
                Some((i, name.to_string()))
            } else {
                name.strip_prefix(&format!("{prefix}."))
                    .map(|rest| (i, rest.to_string()))
            }
        })
    };
    let mut loaded: Vec<Option<HashMap<String, Tensor>>> = vec![None; sources.len()];
    for (name, var) in data.iter() {
        let Some((i, key)) = source_of(name) else {
            continue;
        };
        let dir = &sources[i].1;
        if loaded[i].is_none() {
            let mut tensors = HashMap::new();
            for file in weight_files(dir)? {
                let file_tensors = candle_core::safetensors::load(&file, device).map_err(|e| {
                    Error::BadWeights {
                        path: file.clone(),
                        reason: e.to_string(),
                    }
                })?;
                tensors.extend(file_tensors);
            }
            loaded[i] = Some(tensors);
        }
        let tensors = loaded[i].as_ref().expect("loaded above");
        let t = tensors.get(&key).ok_or_else(|| Error::BadWeights {
            path: dir.to_path_buf(),
            reason: format!("missing weight {key}"),
        })?;
        if t.dims() != var.dims() {
            return Err(Error::BadWeights {
                path: dir.to_path_buf(),
                reason: format!("{key} has shape {:?}, expected {:?}", t.dims(), var.dims()),
            });
        }
        var.set(&t.to_dtype(var.dtype())?)?;
    }
    Ok(())
}

/// Writes `bytes` to `path` through a synced temporary file in the same folder and a rename, so
/// a crash leaves the old file or the new one, never half of one.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    vidgen_video::write_atomic(path, bytes).map_err(|e| match e {
        vidgen_video::Error::Io { path, source } => Error::Io { path, source },
        other => Error::io(path, std::io::Error::other(other.to_string())),
    })
}

/// The checkpoint `out/checkpoints/latest` names, if any.
pub fn latest_checkpoint(out: &Path) -> Result<Option<PathBuf>> {
    let pointer = out.join("checkpoints").join("latest");
    if !pointer.is_file() {
        return Ok(None);
    }
    let name = std::fs::read_to_string(&pointer).map_err(|e| Error::io(&pointer, e))?;
    let dir = out.join("checkpoints").join(name.trim());
    if !dir.join("state.safetensors").is_file() {
        return Err(Error::InvalidRequest(format!(
            "{} names {}, which has no state.safetensors",
            pointer.display(),
            dir.display()
        )));
    }
    Ok(Some(dir))
}

impl Trainer {
    /// Saves a resumable checkpoint `out/checkpoints/step-NNNNNN` (assembled under a temporary
    /// name, then renamed; `latest` is switched last), keeps the newest few, and exports the
    /// weights into the model folder.
    pub fn save_checkpoint(&self) -> Result<PathBuf> {
        let root = self.cfg.out.join("checkpoints");
        std::fs::create_dir_all(&root).map_err(|e| Error::io(&root, e))?;
        let name = format!("step-{:06}", self.opt.step);
        let dir = root.join(&name);
        let tmp = root.join(format!(".{name}.tmp-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&tmp);
        std::fs::create_dir_all(&tmp).map_err(|e| Error::io(&tmp, e))?;
        save_safetensors(&tmp.join("state.safetensors"), &self.opt.state()?)?;
        let state = TrainerState {
            step: self.opt.step,
            part: self.cfg.part,
            history: self.history.clone(),
        };
        let json = serde_json::to_string(&state)
            .map_err(|e| Error::InvalidRequest(format!("cannot serialise the state: {e}")))?;
        std::fs::write(tmp.join("trainer.json"), json).map_err(|e| Error::io(&tmp, e))?;
        if dir.exists() {
            std::fs::remove_dir_all(&dir).map_err(|e| Error::io(&dir, e))?;
        }
        std::fs::rename(&tmp, &dir).map_err(|e| Error::io(&dir, e))?;
        write_atomic(&root.join("latest"), name.as_bytes())?;
        self.prune_checkpoints(&root)?;
        self.export()?;
        Ok(dir)
    }

    fn prune_checkpoints(&self, root: &Path) -> Result<()> {
        let mut steps: Vec<PathBuf> = std::fs::read_dir(root)
            .map_err(|e| Error::io(root, e))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with("step-"))
            })
            .collect();
        steps.sort();
        while steps.len() > KEEP_CHECKPOINTS {
            let old = steps.remove(0);
            std::fs::remove_dir_all(&old).map_err(|e| Error::io(&old, e))?;
        }
        Ok(())
    }

    /// Writes the trained component's weights (EMA) into the model folder; for the VAE also
    /// the latent statistics the DiT normalises with.
    pub fn export(&self) -> Result<()> {
        let dir = self.cfg.model.join(self.cfg.part.component());
        let weights = self.opt.export_weights();
        if let PartState::Vae(vae_cfg) = &self.part {
            let (mean, std) = self.latent_stats(vae_cfg, &weights)?;
            let path = dir.join("config.json");
            let mut json: serde_json::Value = crate::checkpoint::read_json(&path)?;
            json["latents_mean"] = serde_json::json!(mean);
            json["latents_std"] = serde_json::json!(std);
            let text = serde_json::to_string_pretty(&json)
                .map_err(|e| Error::InvalidRequest(e.to_string()))?;
            write_atomic(&path, (text + "\n").as_bytes())?;
        }
        // a trained text encoder's weights go to its own folder, under their own names
        let prefix = format!("{TEXT_PREFIX}.");
        let (text, weights): (HashMap<_, _>, HashMap<_, _>) = weights
            .into_iter()
            .partition(|(name, _)| name.starts_with(&prefix));
        if !text.is_empty() {
            let text: HashMap<String, Tensor> = text
                .into_iter()
                .map(|(name, t)| (name[prefix.len()..].to_string(), t))
                .collect();
            let path = self
                .cfg
                .model
                .join("text_encoder")
                .join("model.safetensors");
            save_safetensors(&path, &text)?;
        }
        save_safetensors(&dir.join("diffusion_pytorch_model.safetensors"), &weights)
    }

    /// Per-channel mean and standard deviation of the encoder's latent means over
    /// `vae.stats_clips` clips of the first bucket.
    fn latent_stats(
        &self,
        vae_cfg: &AutoencoderKlWanConfig,
        weights: &HashMap<String, Tensor>,
    ) -> Result<(Vec<f64>, Vec<f64>)> {
        let vb = VarBuilder::from_tensors(weights.clone(), DType::F32, &self.device);
        let vae = AutoencoderKlWan::new(vae_cfg, vb)?;
        let size = self.cfg.data.buckets[0];
        let z = vae_cfg.z_dim;
        let (mut sum, mut sq, mut n) = (vec![0f64; z], vec![0f64; z], 0f64);
        for i in 0..self.cfg.vae.stats_clips.min(self.source.len()) {
            let clip = self.source.clip(i, size)?;
            // (1, Z, T, h, w) -> (Z, T h w)
            let mean = vae
                .encode(&clip.to_vae_input(&self.device)?)?
                .mean
                .squeeze(0)?
                .flatten_from(1)?;
            let values = mean.to_dtype(DType::F64)?.to_vec2::<f64>()?;
            for (c, row) in values.iter().enumerate() {
                sum[c] += row.iter().sum::<f64>();
                sq[c] += row.iter().map(|v| v * v).sum::<f64>();
            }
            n += values[0].len() as f64;
        }
        let mean: Vec<f64> = sum.iter().map(|s| s / n.max(1.0)).collect();
        let std = sq
            .iter()
            .zip(&mean)
            .map(|(s, m)| (s / n.max(1.0) - m * m).max(1e-8).sqrt())
            .collect();
        Ok((mean, std))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn phase_clock_sums_each_phase_in_first_seen_order() -> Result<()> {
        let mut clock = PhaseClock {
            device: Device::Cpu,
            every: 2,
            last: std::time::Instant::now(),
            steps: 0,
            totals: Vec::new(),
        };
        for _ in 0..2 {
            clock.start()?;
            clock.mark("forward")?;
            std::thread::sleep(std::time::Duration::from_millis(5));
            clock.mark("backward")?;
            clock.end_step();
        }
        let phases: Vec<&str> = clock.totals.iter().map(|(p, _)| *p).collect();
        assert_eq!(phases, ["forward", "backward"]);
        let backward = clock.totals[1].1;
        assert!(backward >= 0.010, "two 5 ms sleeps, got {backward} s");
        assert_eq!(clock.steps, 2);
        Ok(())
    }
}
