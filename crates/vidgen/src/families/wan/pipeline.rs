//! `WanPipeline`: Wan2.1 text-to-video (and vidgen's own models), written out as one loop:
//! encode prompt → noise → denoise with classifier-free guidance → VAE decode → frames.
//!
//! Components are built from the model folder when they are needed and, unless
//! [`LoadOptions::keep_loaded`] is set, dropped right after use: the text encoder once the
//! prompt is encoded, the transformer once the latents are denoised.

use std::path::{Path, PathBuf};

use candle_core::{DType, Tensor};

use super::config::{WanPipelineIndex, WanTransformerConfig};
use super::transformer::WanTransformer3D;
use super::vae::{AutoencoderKlWan, AutoencoderKlWanConfig};
use crate::checkpoint::{read_json, resolve_model_dir};
use crate::nn::step_cache::FirstBlockCache;
use crate::pipeline::{
    build_component, build_component_part, check_finite, check_step_cache, check_strength,
    read_config, strength_timesteps, text_encoder_dtype, video_frame_count, video_to_frames,
    video_to_vae_input, GenerateRequest, Generated, LoadOptions, ModelDefaults, Progress, Settings,
    Stage, Timings, VideoPipeline,
};
use crate::scheduler;
use crate::text::{encode_prompts, PromptTokenizer, Umt5Config, Umt5EncoderModel};
use crate::{Error, Result};

/// A Wan-architecture text-to-video pipeline over a diffusers model folder.
#[derive(Clone)]
pub struct WanPipeline {
    dir: PathBuf,
    opts: LoadOptions,
    transformer_cfg: WanTransformerConfig,
    vae_cfg: AutoencoderKlWanConfig,
    text_cfg: Umt5Config,
    tokenizer: PromptTokenizer,
    scheduler_config: PathBuf,
    scheduler_class: String,
    defaults: ModelDefaults,
    text_encoder: Option<Umt5EncoderModel>,
    transformer: Option<WanTransformer3D>,
    vae: Option<AutoencoderKlWan>,
}

impl WanPipeline {
    /// Opens the model folder `path` (or a Hugging Face cache folder holding one): reads every
    /// config, checks every weight file, and builds nothing yet.
    pub fn load(path: &Path, opts: LoadOptions) -> Result<Self> {
        let dir = resolve_model_dir(path)?;
        let index_path = dir.join("model_index.json");
        let index: WanPipelineIndex = read_json(&index_path)?;
        if index.class_name != "WanPipeline" {
            return Err(Error::Unsupported {
                what: "pipeline",
                name: index.class_name,
                supported: "WanPipeline".into(),
            });
        }
        if index.boundary_ratio.is_some() || index.expand_timesteps == Some(true) {
            return Err(Error::Unsupported {
                what: "Wan pipeline option",
                name: "boundary_ratio / expand_timesteps (Wan2.2)".into(),
                supported: "Wan2.1-style single-transformer pipelines".into(),
            });
        }
        let transformer_cfg: WanTransformerConfig =
            read_config(&dir, "transformer", "WanTransformer3DModel")?;
        let config_error = |component: &str, reason: String| Error::BadConfig {
            path: dir.join(component).join("config.json"),
            reason,
        };
        transformer_cfg
            .validate()
            .map_err(|r| config_error("transformer", r))?;
        let vae_cfg: AutoencoderKlWanConfig = read_config(&dir, "vae", "AutoencoderKLWan")?;
        vae_cfg.check()?;
        let text_cfg = Umt5Config::from_file(dir.join("text_encoder").join("config.json"))?;
        // The components must fit together.
        for (key, value, other, other_value) in [
            (
                "text_dim",
                transformer_cfg.text_dim,
                "the text encoder's d_model",
                text_cfg.d_model,
            ),
            (
                "in_channels",
                transformer_cfg.in_channels,
                "the VAE's z_dim",
                vae_cfg.z_dim,
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
        let scheduler_config = dir.join("scheduler").join("scheduler_config.json");
        // Fail now, not after the text encoder ran, if the scheduler is not supported.
        let scheduler_class = scheduler::from_config_file(&scheduler_config)?
            .class_name()
            .to_string();
        for component in ["transformer", "vae", "text_encoder"] {
            crate::checkpoint::weight_files(&dir.join(component))?;
        }
        let defaults = ModelDefaults::load(&dir, ModelDefaults::default())?;
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

    pub fn transformer_config(&self) -> &WanTransformerConfig {
        &self.transformer_cfg
    }

    pub fn vae_config(&self) -> &AutoencoderKlWanConfig {
        &self.vae_cfg
    }

    /// `(temporal, spatial)` compression of the VAE.
    pub fn vae_scale_factors(&self) -> (usize, usize) {
        vae_scale_factors(&self.vae_cfg)
    }

    /// Fills in defaults and checks every size and setting before any heavy work.
    pub fn resolve(&self, req: &GenerateRequest) -> Result<Settings> {
        req.check_mode("Wan", &["text-to-video", "video-to-video"])?;
        let d = &self.defaults;
        let (tf, sf) = self.vae_scale_factors();
        let from_video = video_frame_count(req, tf)?;
        let (_, ph, pw) = self
            .transformer_cfg
            .patch()
            .map_err(Error::InvalidRequest)?;
        let from_latents = match &req.latents {
            Some(l) => {
                let (b, c, t, h, w) = l.dims5().map_err(|_| {
                    Error::InvalidRequest(format!(
                        "latents must be (B, C, T, H, W), got {:?}",
                        l.shape()
                    ))
                })?;
                if b != 1 || c != self.transformer_cfg.in_channels || t * h * w == 0 {
                    return Err(Error::InvalidRequest(format!(
                        "latents must be (1, {}, T, H, W), got {:?}",
                        self.transformer_cfg.in_channels,
                        l.dims()
                    )));
                }
                Some(((t - 1) * tf + 1, h * sf, w * sf))
            }
            None => None,
        };
        let num_frames = req
            .num_frames
            .or(from_video)
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
        let bad = |msg: String| Err(Error::InvalidRequest(msg));
        if req.decode_timestep.is_some() || req.decode_noise_scale.is_some() {
            return bad(
                "decode timestep and decode noise scale apply to timestep-conditioned VAE \
                 decoders (LTX-Video); Wan's decoder takes neither"
                    .into(),
            );
        }
        if settings.fps == 0 {
            return bad("fps must be at least 1".into());
        }
        if num_frames == 0 || !(num_frames - 1).is_multiple_of(tf) {
            return bad(format!(
                "frames must be of the form {tf}k+1 (1, {}, {}, …, 81, …), got {num_frames}",
                tf + 1,
                2 * tf + 1
            ));
        }
        let (hm, wm) = (sf * ph, sf * pw);
        if height == 0 || width == 0 || !height.is_multiple_of(hm) || !width.is_multiple_of(wm) {
            return bad(format!(
                "height and width must be positive multiples of {hm} and {wm} \
                 (VAE factor {sf} × patch), got {height}x{width}"
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
        let latent = self.latent_shape(&settings);
        let (pt, _, _) = self
            .transformer_cfg
            .patch()
            .map_err(Error::InvalidRequest)?;
        if !latent.2.is_multiple_of(pt) {
            return bad(format!(
                "this model's temporal patch is {pt} latent frames, so the latent frame count \
                 (frames - 1) / {tf} + 1 must be a multiple of {pt}; {num_frames} frames give {}",
                latent.2
            ));
        }
        let grid = [latent.2 / pt, latent.3 / ph, latent.4 / pw];
        let max = self.transformer_cfg.rope_max_seq_len;
        if grid.iter().any(|&g| g > max) {
            return bad(format!(
                "this model's position tables cover at most {max} patches per axis; \
                 {num_frames} frames at {height}x{width} need {grid:?}"
            ));
        }
        if let Some(l) = &req.latents {
            if l.dims() != [latent.0, latent.1, latent.2, latent.3, latent.4] {
                return bad(format!(
                    "latents {:?} do not fit {num_frames} frames at {height}x{width}, \
                     which need {latent:?}",
                    l.dims()
                ));
            }
        }
        Ok(settings)
    }

    /// `(1, C, T, H/8, W/8)` for the settings' size.
    pub fn latent_shape(&self, s: &Settings) -> (usize, usize, usize, usize, usize) {
        let (tf, sf) = self.vae_scale_factors();
        (
            1,
            self.transformer_cfg.in_channels,
            (s.num_frames - 1) / tf + 1,
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
        let settings = self.resolve(req)?;
        let device = self.opts.device.clone();
        let do_cfg = settings.guidance_scale > 1.0;

        // 1. Text states: (1, L, D_txt) for the prompt, and the negative prompt under guidance.
        let mut prompts = vec![settings.prompt.as_str()];
        if do_cfg {
            prompts.push(settings.negative_prompt.as_str());
        }
        let clock = std::time::Instant::now();
        let text_states = self.encode_text(&prompts, settings.max_sequence_length)?;
        let mut timings = Timings {
            text_encoder: clock.elapsed().as_secs_f64(),
            ..Timings::default()
        };
        let clock = std::time::Instant::now();

        // 2. Initial noise (1, C, T, H, W): the caller's, or vidgen's seeded generator.
        let noise = match &req.latents {
            Some(l) => l.to_dtype(DType::F32)?.to_device(&device)?,
            None => crate::noise::randn(settings.seed, self.latent_shape(&settings), &device)?,
        };
        let mut scheduler = scheduler::from_config_file(&self.scheduler_config)?;
        scheduler.set_timesteps(settings.num_inference_steps)?;
        let mut timesteps = scheduler.timesteps().to_vec();
        let mut latents = match (&req.video, settings.strength) {
            // video-to-video: the input's latents noised to the first kept step (SDEdit)
            (Some(video), Some(strength)) => {
                timesteps = strength_timesteps(&timesteps, strength)?;
                let x0 = self.encode_video(video, &settings)?;
                scheduler.add_noise(&x0, &noise, timesteps[0])?
            }
            _ => noise,
        };

        // 3. Denoise. With guidance the prompt and the negative prompt run as one batch of 2.
        let transformer = self.transformer()?;
        let text_states = transformer.embed_text(&text_states)?; // (B, L, D)
        let batch = text_states.dim(0)?;
        let mut cache = settings.step_cache.map(FirstBlockCache::new);
        for (i, &t) in timesteps.iter().enumerate() {
            let model_input = latents
                .to_dtype(transformer.dtype())?
                .repeat((batch, 1, 1, 1, 1))?;
            let timestep = Tensor::full(t as f32, batch, &device)?;
            let out = transformer
                .forward_cached(&model_input, &timestep, &text_states, cache.as_mut())?
                .to_dtype(DType::F32)?;
            let noise_pred = if do_cfg {
                let (cond, uncond) = (out.narrow(0, 0, 1)?, out.narrow(0, 1, 1)?);
                // uncond + g · (cond − uncond)
                (&uncond + ((cond - &uncond)? * settings.guidance_scale)?)?
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

        // 4. Decode: un-normalise per channel, decode, map [-1, 1] to [0, 1].
        let clock = std::time::Instant::now();
        let frames = self.decode(&latents, progress)?;
        timings.vae_decode = clock.elapsed().as_secs_f64();
        Ok(Generated {
            frames,
            latents,
            settings,
            timings,
            skipped_steps: cache.map_or(0, |c| c.skipped()),
        })
    }

    /// The prompt tokenizer (`tokenizer/tokenizer.json`).
    pub fn tokenizer(&self) -> &PromptTokenizer {
        &self.tokenizer
    }

    /// Prompts → `(B, L, D_txt)` text states, building the text encoder for the call only
    /// (unless `keep_loaded`).
    pub fn encode_text(&mut self, prompts: &[&str], max_len: usize) -> Result<Tensor> {
        let model = self.take_text_encoder()?;
        let states = encode_prompts(&self.tokenizer, &model, prompts, max_len)?;
        if self.opts.keep_loaded {
            self.text_encoder = Some(model);
        }
        Ok(states)
    }

    /// An input video `(F, H, W, 3)` in [0, 1] → normalised latents `(1, C, T, H, W)` f32: the
    /// posterior mean of its first `num_frames` frames at the settings' size, as diffusers'
    /// video-to-video pipeline encodes it (`sample_mode="argmax"`).
    pub fn encode_video(&mut self, video: &Tensor, settings: &Settings) -> Result<Tensor> {
        let input = video_to_vae_input(
            video,
            settings.num_frames,
            settings.height,
            settings.width,
            &self.opts.device,
        )?;
        let vae = self.take_vae(true)?;
        let encoded = vae
            .encode(&input.to_dtype(self.opts.dtype)?)
            .and_then(|posterior| vae.normalize_latents(&posterior.mean));
        if self.opts.keep_loaded {
            self.vae = Some(vae);
        }
        Ok(encoded?.to_dtype(DType::F32)?)
    }

    /// Denoised latents `(1, C, T, H, W)` → frames `(F, H, W, 3)` f32 in [0, 1].
    pub fn decode(
        &mut self,
        latents: &Tensor,
        progress: &mut dyn FnMut(Progress),
    ) -> Result<Tensor> {
        let vae = self.take_vae(false)?;
        let z = vae.denormalize_latents(&latents.to_dtype(self.opts.dtype)?)?;
        let total = latents.dim(2)?;
        let video = vae.decode_with_progress(&z, &mut |done, _| {
            progress(Progress {
                stage: Stage::Decode,
                done,
                total,
            })
        })?; // (1, 3, F, H, W) in [-1, 1]
        if self.opts.keep_loaded {
            self.vae = Some(vae);
        }
        video_to_frames(&video)
    }

    /// The text encoder, built now unless it is loaded (the caller puts it back).
    fn take_text_encoder(&mut self) -> Result<Umt5EncoderModel> {
        if let Some(model) = self.text_encoder.take() {
            return Ok(model);
        }
        let cfg = self.text_cfg.clone();
        let dtype = text_encoder_dtype(&self.dir, self.opts.dtype)?;
        build_component(&self.dir, "text_encoder", dtype, &self.opts.device, |vb| {
            Umt5EncoderModel::new(&cfg, vb)
        })
    }

    /// The VAE, built now unless it is loaded (the caller puts it back); without the encoder
    /// unless `encode`.
    fn take_vae(&mut self, encode: bool) -> Result<AutoencoderKlWan> {
        if let Some(vae) = self.vae.take() {
            if vae.has_encoder() || !encode {
                return Ok(vae);
            }
        }
        let cfg = self.vae_cfg.clone();
        let (dtype, device) = (self.opts.dtype, &self.opts.device);
        let mut vae = if encode {
            build_component(&self.dir, "vae", dtype, device, |vb| {
                AutoencoderKlWan::new(&cfg, vb)
            })?
        } else {
            let skipped = AutoencoderKlWan::ENCODER_PREFIXES;
            build_component_part(&self.dir, "vae", dtype, device, skipped, |vb| {
                AutoencoderKlWan::decoder_only(&cfg, vb)
            })?
        };
        vae.enable_tiling(self.opts.vae_tiling);
        Ok(vae)
    }

    /// Builds every component now and keeps them loaded.
    pub fn preload(&mut self) -> Result<()> {
        self.opts.keep_loaded = true;
        let text_encoder = self.take_text_encoder()?;
        self.text_encoder = Some(text_encoder);
        // the decoder only: a video-to-video request rebuilds it with the encoder, once
        let vae = self.take_vae(false)?;
        self.vae = Some(vae);
        self.transformer()?;
        Ok(())
    }

    fn transformer(&mut self) -> Result<&WanTransformer3D> {
        if self.transformer.is_none() {
            let (cfg, quantize) = (self.transformer_cfg.clone(), self.opts.quantize);
            self.transformer = Some(build_component(
                &self.dir,
                "transformer",
                self.opts.dtype,
                &self.opts.device,
                |vb| crate::nn::linear::quantized(quantize, || WanTransformer3D::new(&cfg, vb)),
            )?);
        }
        Ok(self.transformer.as_ref().expect("just built"))
    }
}

/// `(temporal, spatial)` compression of a Wan VAE, from its architecture: 2 per temporal
/// downsampling stage, 2 per spatial stage.
pub fn vae_scale_factors(cfg: &AutoencoderKlWanConfig) -> (usize, usize) {
    let temporal_stages = cfg.temperal_downsample.iter().filter(|&&d| d).count();
    (1 << temporal_stages, cfg.spatial_compression())
}

impl VideoPipeline for WanPipeline {
    fn preload(&mut self) -> Result<()> {
        WanPipeline::preload(self)
    }

    fn fork(&self) -> Box<dyn VideoPipeline> {
        Box::new(self.clone())
    }

    fn dir(&self) -> &Path {
        WanPipeline::dir(self)
    }

    fn defaults(&self) -> &ModelDefaults {
        WanPipeline::defaults(self)
    }

    fn resolve(&self, req: &GenerateRequest) -> Result<Settings> {
        WanPipeline::resolve(self, req)
    }

    fn generate(
        &mut self,
        req: &GenerateRequest,
        progress: &mut dyn FnMut(Progress),
    ) -> Result<Generated> {
        WanPipeline::generate(self, req, progress)
    }
}
