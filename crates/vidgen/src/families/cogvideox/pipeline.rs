//! `CogVideoXPipeline`: CogVideoX 1.0 text-to-video (THUDM/CogVideoX-2b, -5b) as diffusers
//! 0.42.1 runs it, written out as one loop: T5 prompt states (no attention mask) → noise →
//! denoise with classifier-free guidance (batch `[negative, prompt]`) → `1 / scaling_factor`
//! → VAE decode → frames.
//!
//! Latents are laid out **frames before channels**, `(1, T, C, H/8, W/8)` with
//! `T = (frames - 1) / 4 + 1`, exactly as the reference's `latents=` argument (and
//! [`GenerateRequest::latents`]) takes them and as [`Generated::latents`] returns them; they
//! are permuted to `(1, C, T, H/8, W/8)` only for the VAE, which decodes `T` latent frames to
//! `4(T - 1) + 1` frames for odd `T` and to `4T` for even `T`, as the reference does (13
//! frames → 4 latent frames → 16 output frames).
//!
//! Defaults follow the reference: the transformer's `sample_frames` (49) frames at
//! `sample_height · 8 × sample_width · 8` (480x720), 50 steps, guidance 6, and 8 fps (the
//! rate CogVideoX was trained at). The text length defaults to the transformer's
//! `max_text_seq_length` (226 for the published models, the reference's default), since the
//! sin-cos models lay their position table out for exactly that many text tokens.
//!
//! Not supported: CogVideoX 1.5 (`patch_size_t`, whose pipeline pads the latent frames) and
//! the image-to-video variants; [`CogVideoXPipeline::load`] says so.

use std::path::{Path, PathBuf};

use candle_core::{DType, Tensor};

use super::config::CogVideoXTransformerConfig;
use super::transformer::CogVideoXTransformer3D;
use super::vae::{AutoencoderKlCogVideoX, AutoencoderKlCogVideoXConfig};
use crate::checkpoint::{class_name, read_json, resolve_model_dir};
use crate::nn::step_cache::FirstBlockCache;
use crate::pipeline::{
    build_component, check_finite, check_step_cache, check_strength, posterior_noise, read_config,
    strength_timesteps, text_encoder_dtype, video_frame_count, video_to_frames, video_to_vae_input,
    GenerateRequest, Generated, LoadOptions, ModelDefaults, Progress, Settings, Stage, Timings,
    VideoPipeline,
};
use crate::scheduler::{self, CogVideoXDPMScheduler, CogVideoXSchedulerConfig, Scheduler};
use crate::text::{encode_prompts_unmasked, PromptTokenizer, T5Config, T5EncoderModel};
use crate::{Error, Result};

/// The `_class_name` of the pipelines this module runs.
pub const CLASS_NAME: &str = "CogVideoXPipeline";

/// A CogVideoX 1.0 text-to-video pipeline over a diffusers model folder.
#[derive(Clone)]
pub struct CogVideoXPipeline {
    dir: PathBuf,
    opts: LoadOptions,
    transformer_cfg: CogVideoXTransformerConfig,
    vae_cfg: AutoencoderKlCogVideoXConfig,
    text_cfg: T5Config,
    tokenizer: PromptTokenizer,
    scheduler_config: serde_json::Value,
    scheduler_class: String,
    defaults: ModelDefaults,
    use_dynamic_cfg: bool,
    text_encoder: Option<T5EncoderModel>,
    transformer: Option<CogVideoXTransformer3D>,
    vae: Option<AutoencoderKlCogVideoX>,
}

impl CogVideoXPipeline {
    /// Opens the model folder `path` (or a Hugging Face cache folder holding one): reads every
    /// config, checks that the components fit together and that every weight file is there,
    /// and builds nothing yet.
    pub fn load(path: &Path, opts: LoadOptions) -> Result<Self> {
        let dir = resolve_model_dir(path)?;
        let class = class_name(&dir.join("model_index.json"))?;
        if class != CLASS_NAME {
            return Err(Error::Unsupported {
                what: "pipeline",
                name: class,
                supported: CLASS_NAME.into(),
            });
        }
        let transformer_cfg: CogVideoXTransformerConfig =
            read_config(&dir, "transformer", "CogVideoXTransformer3DModel")?;
        let config_error = |component: &str, reason: String| Error::BadConfig {
            path: dir.join(component).join("config.json"),
            reason,
        };
        transformer_cfg
            .validate()
            .map_err(|r| config_error("transformer", r))?;
        let vae_cfg: AutoencoderKlCogVideoXConfig =
            read_config(&dir, "vae", "AutoencoderKLCogVideoX")?;
        vae_cfg.check()?;
        let text_cfg = T5Config::from_file(dir.join("text_encoder").join("config.json"))?;
        for (key, value, other, other_value) in [
            (
                "text_embed_dim",
                transformer_cfg.text_embed_dim,
                "the text encoder's d_model",
                text_cfg.d_model,
            ),
            (
                "in_channels",
                transformer_cfg.in_channels,
                "the VAE's latent_channels",
                vae_cfg.latent_channels,
            ),
            (
                "out_channels",
                transformer_cfg.out_channels(),
                "the VAE's latent_channels",
                vae_cfg.latent_channels,
            ),
        ] {
            if value != other_value {
                return Err(config_error(
                    "transformer",
                    format!("{key} {value} does not match {other} {other_value}"),
                ));
            }
        }
        let tokenizer = PromptTokenizer::from_file(dir.join("tokenizer").join("tokenizer.json"))?;
        let scheduler_path = dir.join("scheduler").join("scheduler_config.json");
        let scheduler_config: serde_json::Value = read_json(&scheduler_path)?;
        // Fail now, not after the text encoder ran, if the scheduler is not supported.
        let scheduler_class = scheduler::from_config_file(&scheduler_path)?
            .class_name()
            .to_string();
        for component in ["transformer", "vae", "text_encoder"] {
            crate::checkpoint::weight_files(&dir.join(component))?;
        }
        let sf = vae_cfg.spatial_compression();
        let base = ModelDefaults {
            num_frames: transformer_cfg.sample_frames,
            height: transformer_cfg.sample_height * sf,
            width: transformer_cfg.sample_width * sf,
            num_inference_steps: 50,
            guidance_scale: 6.0,
            fps: 8,
            max_sequence_length: transformer_cfg.max_text_seq_length,
            negative_prompt: String::new(),
        };
        let defaults = ModelDefaults::load(&dir, base)?;
        Ok(Self {
            dir,
            opts,
            transformer_cfg,
            vae_cfg,
            text_cfg,
            tokenizer,
            scheduler_config,
            scheduler_class,
            defaults,
            use_dynamic_cfg: false,
            text_encoder: None,
            transformer: None,
            vae: None,
        })
    }

    /// The folder the model was loaded from (a snapshot folder for a cache path).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn defaults(&self) -> &ModelDefaults {
        &self.defaults
    }

    pub fn transformer_config(&self) -> &CogVideoXTransformerConfig {
        &self.transformer_cfg
    }

    pub fn vae_config(&self) -> &AutoencoderKlCogVideoXConfig {
        &self.vae_cfg
    }

    /// The reference's `use_dynamic_cfg` (off by default): the guidance scale of the step at
    /// timestep `t` becomes `1 + g · (1 - cos(π · ((n - t) / n)^5)) / 2` for `n` steps.
    pub fn set_dynamic_cfg(&mut self, on: bool) {
        self.use_dynamic_cfg = on;
    }

    /// `(temporal, spatial)` compression of the VAE (4, 8 as published).
    pub fn vae_scale_factors(&self) -> (usize, usize) {
        (
            self.vae_cfg.temporal_compression_ratio.round() as usize,
            self.vae_cfg.spatial_compression(),
        )
    }

    /// Fills in defaults and checks every size and setting before any heavy work.
    pub fn resolve(&self, req: &GenerateRequest) -> Result<Settings> {
        req.check_mode("CogVideoX", &["text-to-video", "video-to-video"])?;
        let d = &self.defaults;
        let cfg = &self.transformer_cfg;
        let (tf, sf) = self.vae_scale_factors();
        let bad = |msg: String| Err(Error::InvalidRequest(msg));
        let from_latents = match &req.latents {
            Some(l) => {
                let ok =
                    matches!(l.dims(), &[1, t, c, h, w] if c == cfg.in_channels && t * h * w > 0);
                if !ok {
                    return bad(format!(
                        "CogVideoX latents must be (1, T, {}, H, W) — frames before channels, \
                         as diffusers' CogVideoXPipeline takes them — got {:?}",
                        cfg.in_channels,
                        l.dims()
                    ));
                }
                let (t, h, w) = (l.dims()[1], l.dims()[3], l.dims()[4]);
                Some(((t - 1) * tf + 1, h * sf, w * sf))
            }
            None => None,
        };
        let num_frames = req
            .num_frames
            .or(video_frame_count(req, tf)?)
            .or(from_latents.map(|s| s.0))
            .unwrap_or(d.num_frames);
        let height = req.height.or(from_latents.map(|s| s.1)).unwrap_or(d.height);
        let width = req.width.or(from_latents.map(|s| s.2)).unwrap_or(d.width);
        let settings = Settings {
            prompt: req.prompt.clone(),
            negative_prompt: req
                .negative_prompt
                .clone()
                .unwrap_or_else(|| d.negative_prompt.clone()),
            num_frames,
            height,
            width,
            num_inference_steps: req.num_inference_steps.unwrap_or(d.num_inference_steps),
            guidance_scale: req.guidance_scale.unwrap_or(d.guidance_scale),
            seed: req.seed,
            max_sequence_length: req.max_sequence_length.unwrap_or(d.max_sequence_length),
            fps: req.fps.unwrap_or(d.fps),
            scheduler: self.scheduler_class.clone(),
            strength: None,
            step_cache: check_step_cache(req.step_cache)?,
        };
        let mut settings = settings;
        if req.video.is_some() {
            settings.strength = Some(check_strength(req.strength, settings.num_inference_steps)?);
        }
        if req.decode_timestep.is_some() || req.decode_noise_scale.is_some() {
            return bad(
                "decode timestep and decode noise scale apply to timestep-conditioned VAE \
                 decoders (LTX-Video); CogVideoX's decoder takes neither"
                    .into(),
            );
        }
        if settings.fps == 0 {
            return bad("fps must be at least 1".into());
        }
        if num_frames == 0 || !(num_frames - 1).is_multiple_of(tf) {
            return bad(format!(
                "frames must be of the form {tf}k+1 (1, {}, {}, …, 49, …), got {num_frames}",
                tf + 1,
                2 * tf + 1
            ));
        }
        let m = sf * cfg.patch_size;
        if height == 0 || width == 0 || !height.is_multiple_of(m) || !width.is_multiple_of(m) {
            return bad(format!(
                "height and width must be positive multiples of {m} (VAE factor {sf} × patch {}), \
                 got {height}x{width}",
                cfg.patch_size
            ));
        }
        if cfg.use_learned_positional_embeddings
            && (height / sf, width / sf) != (cfg.sample_height, cfg.sample_width)
        {
            return bad(format!(
                "this model has learned positional embeddings and only runs at its trained size \
                 {}x{}, got {height}x{width}",
                cfg.sample_height * sf,
                cfg.sample_width * sf
            ));
        }
        if settings.num_inference_steps == 0 {
            return bad("steps must be at least 1".into());
        }
        if !settings.guidance_scale.is_finite() || settings.guidance_scale < 0.0 {
            return bad(format!(
                "guidance must be a finite number ≥ 0 (1 or less turns guidance off), got {}",
                settings.guidance_scale
            ));
        }
        if settings.max_sequence_length == 0 {
            return bad("max-sequence-length must be at least 1".into());
        }
        if cfg.adds_position_table() && settings.max_sequence_length != cfg.max_text_seq_length {
            return bad(format!(
                "this model's position table is laid out for {n} text tokens, so \
                 max-sequence-length must be {n}, got {}",
                settings.max_sequence_length,
                n = cfg.max_text_seq_length
            ));
        }
        if let Some(l) = &req.latents {
            let latent = self.latent_shape(&settings);
            if l.dims() != [latent.0, latent.1, latent.2, latent.3, latent.4] {
                return bad(format!(
                    "latents {:?} do not fit {num_frames} frames at {height}x{width}, \
                     which need {latent:?} (1, T, C, H, W)",
                    l.dims()
                ));
            }
        }
        Ok(settings)
    }

    /// `(1, T, C, H/8, W/8)` for the settings' size: frames before channels.
    pub fn latent_shape(&self, s: &Settings) -> (usize, usize, usize, usize, usize) {
        let (tf, sf) = self.vae_scale_factors();
        (
            1,
            (s.num_frames - 1) / tf + 1,
            self.transformer_cfg.in_channels,
            s.height / sf,
            s.width / sf,
        )
    }

    /// Runs the whole pipeline, reporting progress after every step and decoded latent frame.
    pub fn generate(
        &mut self,
        req: &GenerateRequest,
        progress: &mut dyn FnMut(Progress),
    ) -> Result<Generated> {
        let (settings, latents, mut timings, skipped_steps) =
            self.denoise_with_progress(req, progress)?;
        let clock = std::time::Instant::now();
        let frames = self.decode(&latents, progress)?;
        timings.vae_decode = clock.elapsed().as_secs_f64();
        Ok(Generated {
            frames,
            latents,
            settings,
            timings,
            skipped_steps,
        })
    }

    /// Text encoding and the denoising loop only: the final latents `(1, T, C, H, W)` f32,
    /// before the VAE (the reference's `output_type="latent"`).
    pub fn denoise(&mut self, req: &GenerateRequest) -> Result<Tensor> {
        Ok(self.denoise_with_progress(req, &mut |_| {})?.1)
    }

    fn denoise_with_progress(
        &mut self,
        req: &GenerateRequest,
        progress: &mut dyn FnMut(Progress),
    ) -> Result<(Settings, Tensor, Timings, usize)> {
        let settings = self.resolve(req)?;
        let device = self.opts.device.clone();
        let do_cfg = settings.guidance_scale > 1.0;

        // 1. Text states (B, L, D_txt): [negative, prompt] under guidance, as the reference.
        let mut prompts = Vec::with_capacity(2);
        if do_cfg {
            prompts.push(settings.negative_prompt.as_str());
        }
        prompts.push(settings.prompt.as_str());
        let clock = std::time::Instant::now();
        let text_states = self.encode_text(&prompts, settings.max_sequence_length)?;
        let mut timings = Timings {
            text_encoder: clock.elapsed().as_secs_f64(),
            ..Timings::default()
        };
        let clock = std::time::Instant::now();

        // 2. Scheduler and initial noise (1, T, C, H, W) · init_noise_sigma.
        let mut scheduler = self.scheduler(settings.seed)?;
        scheduler.set_timesteps(settings.num_inference_steps)?;
        let mut timesteps = scheduler.timesteps().to_vec();
        let noise = match &req.latents {
            Some(l) => l.to_dtype(DType::F32)?.to_device(&device)?,
            None => crate::noise::randn(settings.seed, self.latent_shape(&settings), &device)?,
        };
        let latents = match (&req.video, settings.strength) {
            // video-to-video: the input's (sampled, scaled) latents noised to the first kept step
            (Some(video), Some(strength)) => {
                timesteps = strength_timesteps(&timesteps, strength)?;
                let x0 = self.encode_video(video, &settings, req.encode_noise.as_ref())?;
                scheduler.add_noise(&x0, &noise, timesteps[0])?
            }
            _ => noise,
        };
        let mut latents = latents.affine(scheduler.init_noise_sigma(), 0.0)?;

        // 3. Denoise; the RoPE tables (5b) depend only on the size, so are made once. Dynamic
        // guidance counts the steps that run (the reference's num_inference_steps after
        // get_timesteps).
        let n = timesteps.len() as f64;
        let use_dynamic_cfg = self.use_dynamic_cfg;
        let transformer = self.transformer()?;
        let text_states = text_states.to_dtype(transformer.dtype())?;
        let batch = text_states.dim(0)?;
        let (_, t_lat, _, h_lat, w_lat) = latents.dims5()?;
        let rope = transformer.rotary_tables((t_lat, h_lat, w_lat), &device)?;
        let mut cache = settings.step_cache.map(FirstBlockCache::new);
        for (i, &t) in timesteps.iter().enumerate() {
            let model_input = latents
                .to_dtype(transformer.dtype())?
                .repeat((batch, 1, 1, 1, 1))?;
            let timestep = Tensor::full(t as f32, batch, &device)?;
            let out = transformer
                .forward_cached(
                    &model_input,
                    &text_states,
                    &timestep,
                    rope.as_ref(),
                    cache.as_mut(),
                )?
                .to_dtype(DType::F32)?;
            let noise_pred = if do_cfg {
                let guidance = if use_dynamic_cfg {
                    let x = ((n - t) / n).powf(5.0);
                    1.0 + settings.guidance_scale * (1.0 - (std::f64::consts::PI * x).cos()) / 2.0
                } else {
                    settings.guidance_scale
                };
                let (uncond, cond) = (out.narrow(0, 0, 1)?, out.narrow(0, 1, 1)?);
                // uncond + g · (cond − uncond)
                (&uncond + ((cond - &uncond)? * guidance)?)?
            } else {
                out
            };
            latents = scheduler.step(&noise_pred, t, &latents)?;
            check_finite(&latents, "latents")?;
            progress(Progress {
                stage: Stage::Denoise,
                done: i + 1,
                total: timesteps.len(),
            });
            req.check_cancelled()?;
        }
        if !self.opts.keep_loaded {
            self.transformer = None;
        }
        timings.denoise = clock.elapsed().as_secs_f64();
        let skipped = cache.map_or(0, |c| c.skipped());
        Ok((settings, latents, timings, skipped))
    }

    /// The scheduler of the model folder, fresh; a `CogVideoXDPMScheduler` (which keeps the
    /// previous step's predicted `x0` itself, the reference's `old_pred_original_sample`)
    /// draws its per-step noise from vidgen's generator seeded with `seed`.
    fn scheduler(&self, seed: u64) -> Result<Box<dyn Scheduler>> {
        if self.scheduler_class == CogVideoXDPMScheduler::CLASS_NAME {
            let cfg: CogVideoXSchedulerConfig =
                serde_json::from_value(self.scheduler_config.clone()).map_err(|e| {
                    Error::BadConfig {
                        path: self.dir.join("scheduler").join("scheduler_config.json"),
                        reason: e.to_string(),
                    }
                })?;
            let mut dpm = CogVideoXDPMScheduler::new(cfg)?;
            dpm.set_noise_seed(seed);
            return Ok(Box::new(dpm));
        }
        scheduler::from_config_json(&self.scheduler_config)
    }

    /// Prompts → `(B, L, D_txt)` T5 states computed without a mask, building the text encoder
    /// for the call only (unless `keep_loaded`).
    pub fn encode_text(&mut self, prompts: &[&str], max_len: usize) -> Result<Tensor> {
        let model = self.take_text_encoder()?;
        let states = encode_prompts_unmasked(&self.tokenizer, &model, prompts, max_len)?;
        if self.opts.keep_loaded {
            self.text_encoder = Some(model);
        }
        Ok(states.prompt_embeds)
    }

    /// An input video `(F, H, W, 3)` in [0, 1] → DiT latents `(1, T, C, H, W)` f32, as
    /// diffusers' video-to-video pipeline makes them: the posterior of its first `num_frames`
    /// frames at the settings' size *sampled* (`mean + std · ε`, ε `encode_noise` or drawn from
    /// the seed), frames moved before channels, times the scaling factor.
    pub fn encode_video(
        &mut self,
        video: &Tensor,
        settings: &Settings,
        encode_noise: Option<&Tensor>,
    ) -> Result<Tensor> {
        let device = self.opts.device.clone();
        let input = video_to_vae_input(
            video,
            settings.num_frames,
            settings.height,
            settings.width,
            &device,
        )?;
        let vae = self.take_vae()?;
        let encoded = (|| -> Result<Tensor> {
            let posterior = vae.encode(&input.to_dtype(self.opts.dtype)?)?;
            let shape = posterior.mean.dims5()?;
            let eps = posterior_noise(encode_noise, shape, settings.seed, &device)?;
            let z = posterior.sample(&eps.to_dtype(posterior.mean.dtype())?)?;
            // b c t h w -> b t c h w
            let z = z.permute((0, 2, 1, 3, 4))?.contiguous()?;
            Ok(vae.scale_latents(&z.to_dtype(DType::F32)?)?)
        })();
        if self.opts.keep_loaded {
            self.vae = Some(vae);
        }
        encoded
    }

    /// Denoised latents `(1, T, C, H, W)` → frames `(F, H, W, 3)` f32 in [0, 1]: divided by
    /// the VAE's scaling factor, permuted to `(1, C, T, H, W)` and decoded.
    pub fn decode(
        &mut self,
        latents: &Tensor,
        progress: &mut dyn FnMut(Progress),
    ) -> Result<Tensor> {
        let vae = self.take_vae()?;
        let z = vae.latents_for_decode(&latents.to_dtype(self.opts.dtype)?)?;
        let total = z.dim(2)?;
        let video = vae.decode_with_progress(&z, &mut |done, _| {
            progress(Progress {
                stage: Stage::Decode,
                done,
                total,
            })
        })?; // (1, 3, F, H, W) in about [-1, 1]
        if self.opts.keep_loaded {
            self.vae = Some(vae);
        }
        video_to_frames(&video)
    }

    /// The text encoder, built now unless it is loaded (the caller puts it back).
    fn take_text_encoder(&mut self) -> Result<T5EncoderModel> {
        if let Some(model) = self.text_encoder.take() {
            return Ok(model);
        }
        let cfg = self.text_cfg.clone();
        let dtype = text_encoder_dtype(&self.dir, self.opts.dtype)?;
        build_component(&self.dir, "text_encoder", dtype, &self.opts.device, |vb| {
            T5EncoderModel::new(&cfg, vb)
        })
    }

    /// The VAE, built now unless it is loaded (the caller puts it back).
    fn take_vae(&mut self) -> Result<AutoencoderKlCogVideoX> {
        if let Some(vae) = self.vae.take() {
            return Ok(vae);
        }
        let cfg = self.vae_cfg.clone();
        let mut vae =
            build_component(&self.dir, "vae", self.opts.dtype, &self.opts.device, |vb| {
                AutoencoderKlCogVideoX::new(&cfg, vb)
            })?;
        vae.enable_tiling(self.opts.vae_tiling);
        Ok(vae)
    }

    /// Builds every component now and keeps them loaded.
    pub fn preload(&mut self) -> Result<()> {
        self.opts.keep_loaded = true;
        let text_encoder = self.take_text_encoder()?;
        self.text_encoder = Some(text_encoder);
        let vae = self.take_vae()?;
        self.vae = Some(vae);
        self.transformer()?;
        Ok(())
    }

    fn transformer(&mut self) -> Result<&CogVideoXTransformer3D> {
        if self.transformer.is_none() {
            let (cfg, quantize) = (self.transformer_cfg.clone(), self.opts.quantize);
            self.transformer = Some(build_component(
                &self.dir,
                "transformer",
                self.opts.dtype,
                &self.opts.device,
                |vb| {
                    crate::nn::linear::quantized(quantize, || CogVideoXTransformer3D::new(&cfg, vb))
                },
            )?);
        }
        Ok(self.transformer.as_ref().expect("just built"))
    }
}

impl VideoPipeline for CogVideoXPipeline {
    fn preload(&mut self) -> Result<()> {
        CogVideoXPipeline::preload(self)
    }

    fn fork(&self) -> Box<dyn VideoPipeline> {
        Box::new(self.clone())
    }

    fn dir(&self) -> &Path {
        CogVideoXPipeline::dir(self)
    }

    fn defaults(&self) -> &ModelDefaults {
        CogVideoXPipeline::defaults(self)
    }

    fn resolve(&self, req: &GenerateRequest) -> Result<Settings> {
        CogVideoXPipeline::resolve(self, req)
    }

    fn generate(
        &mut self,
        req: &GenerateRequest,
        progress: &mut dyn FnMut(Progress),
    ) -> Result<Generated> {
        CogVideoXPipeline::generate(self, req, progress)
    }
}
