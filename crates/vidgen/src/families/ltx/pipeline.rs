//! `LTXPipeline`: LTX-Video text-to-video as diffusers 0.42 runs it, written out as one loop:
//! T5 prompt states (unmasked, with their token masks) → packed noise → denoise with
//! classifier-free guidance over a dynamically shifted flow-matching schedule → unpack,
//! un-normalise → timestep-conditioned VAE decode → frames.
//!
//! Latents travel **packed** as the reference keeps them: `(B, N, C)` with `N = T·H·W` tokens
//! of the latent grid, token index `(t·H + h)·W + w`. `GenerateRequest::latents` takes exactly
//! this layout (diffusers' `latents=`); since `N` alone does not give the grid, the frame count
//! and size come from the request (or the defaults) and must fit the latents.
//!
//! Components are built when needed and, unless [`LoadOptions::keep_loaded`] is set, dropped
//! after their stage.

use std::path::{Path, PathBuf};

use candle_core::{DType, Tensor};

use super::config::LtxVideoTransformer3DConfig;
use super::rope::rope_interpolation_scale;
use super::transformer::{LtxTransformerInputs, LtxVideoTransformer3D};
use super::vae::{AutoencoderKlLtxVideo, AutoencoderKlLtxVideoConfig};
use crate::checkpoint::{class_name, resolve_model_dir};
use crate::nn::step_cache::FirstBlockCache;
use crate::pipeline::{
    build_component, check_finite, check_step_cache, posterior_noise, read_config,
    text_encoder_dtype, video_to_frames, video_to_vae_input, GenerateRequest, Generated,
    LoadOptions, ModelDefaults, Progress, Settings, Stage, Timings, VideoPipeline,
};
use crate::scheduler::flow_match_euler::{
    FlowMatchEulerDiscreteConfig, FlowMatchEulerDiscreteScheduler,
};
use crate::scheduler::{linspace, Scheduler};
use crate::text::{
    encode_prompts_unmasked, PromptEmbeds, PromptTokenizer, T5Config, T5EncoderModel,
};
use crate::{Error, Result};

/// Offset of the decode-noise stream from the seed of the initial noise, so the two differ.
const DECODE_NOISE_SEED_OFFSET: u64 = 0x4c54_5856; // "LTXV"

/// `LTXPipeline.__call__`'s defaults (diffusers 0.42.1): 161 frames at 512x704, frame rate 25,
/// 50 steps, guidance 3, 128 text tokens, empty negative prompt.
pub fn ltx_defaults() -> ModelDefaults {
    ModelDefaults {
        num_frames: 161,
        height: 512,
        width: 704,
        num_inference_steps: 50,
        guidance_scale: 3.0,
        fps: 25,
        max_sequence_length: 128,
        negative_prompt: String::new(),
    }
}

/// An LTX-Video text-to-video pipeline over a diffusers model folder.
#[derive(Clone)]
pub struct LtxPipeline {
    dir: PathBuf,
    opts: LoadOptions,
    transformer_cfg: LtxVideoTransformer3DConfig,
    vae_cfg: AutoencoderKlLtxVideoConfig,
    text_cfg: T5Config,
    tokenizer: PromptTokenizer,
    scheduler_cfg: FlowMatchEulerDiscreteConfig,
    defaults: ModelDefaults,
    text_encoder: Option<T5EncoderModel>,
    transformer: Option<LtxVideoTransformer3D>,
    vae: Option<AutoencoderKlLtxVideo>,
}

impl LtxPipeline {
    /// Opens the model folder `path` (or a Hugging Face cache folder holding one): reads every
    /// config, checks every weight file, and builds nothing yet.
    pub fn load(path: &Path, opts: LoadOptions) -> Result<Self> {
        let dir = resolve_model_dir(path)?;
        let class = class_name(&dir.join("model_index.json"))?;
        if class != "LTXPipeline" {
            return Err(Error::Unsupported {
                what: "pipeline",
                name: class,
                supported: "LTXPipeline".into(),
            });
        }
        let config_error = |component: &str, reason: String| Error::BadConfig {
            path: dir.join(component).join("config.json"),
            reason,
        };
        let transformer_cfg: LtxVideoTransformer3DConfig =
            read_config(&dir, "transformer", "LTXVideoTransformer3DModel")?;
        transformer_cfg
            .validate()
            .map_err(|r| config_error("transformer", r))?;
        if transformer_cfg.patch_size != 1 || transformer_cfg.patch_size_t != 1 {
            // The reference packs with the patch sizes but unpacks and builds its RoPE grid from
            // the unpatched latent sizes; every published LTX-Video checkpoint uses 1.
            return Err(Error::Unsupported {
                what: "LTX transformer patch size",
                name: format!(
                    "patch_size={}, patch_size_t={}",
                    transformer_cfg.patch_size, transformer_cfg.patch_size_t
                ),
                supported: "patch_size=1, patch_size_t=1 (as LTX-Video's checkpoints)".into(),
            });
        }
        let vae_cfg: AutoencoderKlLtxVideoConfig =
            read_config(&dir, "vae", "AutoencoderKLLTXVideo")?;
        vae_cfg.check()?;
        let text_cfg = T5Config::from_file(dir.join("text_encoder").join("config.json"))?;
        for (key, value, other, other_value) in [
            (
                "caption_channels",
                transformer_cfg.caption_channels,
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
                "its in_channels",
                transformer_cfg.in_channels,
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
        // LTXPipeline hands the scheduler its own sigmas, which only the flow-matching Euler
        // scheduler takes; any other class is an error now, not after the text encoder ran.
        let scheduler_class = class_name(&scheduler_path)?;
        if scheduler_class != FlowMatchEulerDiscreteScheduler::CLASS_NAME {
            return Err(Error::Unsupported {
                what: "LTX scheduler",
                name: scheduler_class,
                supported: FlowMatchEulerDiscreteScheduler::CLASS_NAME.into(),
            });
        }
        let scheduler_cfg: FlowMatchEulerDiscreteConfig =
            crate::checkpoint::read_json(&scheduler_path)?;
        FlowMatchEulerDiscreteScheduler::new(scheduler_cfg.clone())?;
        for component in ["transformer", "vae", "text_encoder"] {
            crate::checkpoint::weight_files(&dir.join(component))?;
        }
        let defaults = ModelDefaults::load(&dir, ltx_defaults())?;
        Ok(Self {
            dir,
            opts,
            transformer_cfg,
            vae_cfg,
            text_cfg,
            tokenizer,
            scheduler_cfg,
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

    pub fn transformer_config(&self) -> &LtxVideoTransformer3DConfig {
        &self.transformer_cfg
    }

    pub fn vae_config(&self) -> &AutoencoderKlLtxVideoConfig {
        &self.vae_cfg
    }

    /// `(temporal, spatial)` compression of the VAE (LTX-Video: 8 and 32).
    pub fn vae_scale_factors(&self) -> (usize, usize) {
        (
            self.vae_cfg.temporal_compression(),
            self.vae_cfg.spatial_compression(),
        )
    }

    /// The latent grid `(T, H, W)` of the settings' size: `((F - 1) / t + 1, H / s, W / s)`.
    pub fn latent_grid(&self, s: &Settings) -> (usize, usize, usize) {
        let (tf, sf) = self.vae_scale_factors();
        ((s.num_frames - 1) / tf + 1, s.height / sf, s.width / sf)
    }

    /// Fills in defaults and checks every size and setting before any heavy work.
    pub fn resolve(&self, req: &GenerateRequest) -> Result<Settings> {
        req.check_mode("LTX-Video", &["text-to-video", "image-to-video"])?;
        if let Some(image) = &req.image {
            if !matches!(image.dims(), &[h, w, 3] if h > 0 && w > 0) {
                return Err(Error::InvalidRequest(format!(
                    "an input image must be (height, width, 3), got {:?}",
                    image.dims()
                )));
            }
        }
        let d = &self.defaults;
        let (tf, sf) = self.vae_scale_factors();
        let settings = Settings {
            prompt: req.prompt.clone(),
            negative_prompt: req
                .negative_prompt
                .clone()
                .unwrap_or_else(|| d.negative_prompt.clone()),
            num_frames: req.num_frames.unwrap_or(d.num_frames),
            height: req.height.unwrap_or(d.height),
            width: req.width.unwrap_or(d.width),
            num_inference_steps: req.num_inference_steps.unwrap_or(d.num_inference_steps),
            guidance_scale: req.guidance_scale.unwrap_or(d.guidance_scale),
            seed: req.seed,
            max_sequence_length: req.max_sequence_length.unwrap_or(d.max_sequence_length),
            fps: req.fps.unwrap_or(d.fps),
            scheduler: FlowMatchEulerDiscreteScheduler::CLASS_NAME.into(),
            strength: None,
            step_cache: check_step_cache(req.step_cache)?,
        };
        let bad = |msg: String| Err(Error::InvalidRequest(msg));
        let (num_frames, height, width) = (settings.num_frames, settings.height, settings.width);
        if num_frames == 0 || !(num_frames - 1).is_multiple_of(tf) {
            return bad(format!(
                "frames must be of the form {tf}k+1 (1, {}, {}, …, 161, …) for this VAE's \
                 {tf}× temporal compression, got {num_frames}",
                tf + 1,
                2 * tf + 1
            ));
        }
        if height == 0 || width == 0 || !height.is_multiple_of(sf) || !width.is_multiple_of(sf) {
            return bad(format!(
                "height and width must be positive multiples of {sf} (the VAE's spatial \
                 compression), got {height}x{width}"
            ));
        }
        if settings.fps == 0 {
            return bad(
                "fps must be at least 1 (LTX-Video is conditioned on the frame rate)".into(),
            );
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
        for (name, value) in [
            ("decode timestep", req.decode_timestep),
            ("decode noise scale", req.decode_noise_scale),
        ] {
            match value {
                Some(v) if !self.vae_cfg.timestep_conditioning => {
                    return bad(format!(
                        "this model's VAE decoder is not timestep-conditioned, so it takes no \
                         {name} (got {v})"
                    ))
                }
                Some(v) if !v.is_finite() || v < 0.0 => {
                    return bad(format!("{name} must be a finite number ≥ 0, got {v}"))
                }
                _ => {}
            }
        }
        if let Some(l) = &req.latents {
            let (t, h, w) = self.latent_grid(&settings);
            let want = [1, t * h * w, self.transformer_cfg.in_channels];
            if l.dims() != want {
                return bad(format!(
                    "latents must be packed (1, T·H·W, C) = {want:?} for {num_frames} frames at \
                     {height}x{width} (latent grid {t}x{h}x{w}), got {:?}; pass --frames, \
                     --height and --width that fit them",
                    l.dims()
                ));
            }
        }
        Ok(settings)
    }

    /// The scheduler as `LTXPipeline` sets it for `settings`: sigmas `linspace(1, 1/n, n)`,
    /// shifted by `mu` from the latent token count `T·H·W` (`calculate_shift` with the
    /// scheduler config's base/max sequence lengths and shifts).
    pub fn scheduler(&self, settings: &Settings) -> Result<FlowMatchEulerDiscreteScheduler> {
        let mut scheduler = FlowMatchEulerDiscreteScheduler::new(self.scheduler_cfg.clone())?;
        let (t, h, w) = self.latent_grid(settings);
        scheduler.set_mu(self.scheduler_cfg.calculate_shift(t * h * w));
        let n = settings.num_inference_steps;
        scheduler.set_sigmas(&linspace(1.0, 1.0 / n as f64, n))?;
        Ok(scheduler)
    }

    /// Prompts → `(B, L, D_txt)` T5 states (unmasked, padded rows kept) and their `(B, L)`
    /// token masks, building the text encoder for the call only (unless `keep_loaded`).
    pub fn encode_text(&mut self, prompts: &[&str], max_len: usize) -> Result<PromptEmbeds> {
        let model = self.take_text_encoder()?;
        let embeds = encode_prompts_unmasked(&self.tokenizer, &model, prompts, max_len)?;
        if self.opts.keep_loaded {
            self.text_encoder = Some(model);
        }
        Ok(embeds)
    }

    /// Steps 1–3 of the pipeline: encodes the prompts and denoises the initial noise (the
    /// request's packed latents, or vidgen's seeded noise drawn as `(1, C, T, H, W)` and
    /// packed). Returns the settings, the packed denoised latents `(1, T·H·W, C)` f32 and the
    /// text encoder's seconds.
    pub fn denoise(
        &mut self,
        req: &GenerateRequest,
        progress: &mut dyn FnMut(Progress),
    ) -> Result<(Settings, Tensor, f64, usize)> {
        let settings = self.resolve(req)?;
        let device = self.opts.device.clone();
        let do_cfg = settings.guidance_scale > 1.0;

        // 1. Text: batch [negative prompt, prompt] under guidance, as the reference.
        let clock = std::time::Instant::now();
        let prompts: Vec<&str> = if do_cfg {
            vec![&settings.negative_prompt, &settings.prompt]
        } else {
            vec![&settings.prompt]
        };
        let text = self.encode_text(&prompts, settings.max_sequence_length)?;
        let text_seconds = clock.elapsed().as_secs_f64();

        // 2. Initial noise, packed (1, N, C).
        let grid = self.latent_grid(&settings);
        let (t, h, w) = grid;
        let channels = self.transformer_cfg.in_channels;
        let noise = match &req.latents {
            Some(l) => l.to_dtype(DType::F32)?.to_device(&device)?,
            None => {
                let noise = crate::noise::randn(settings.seed, (1, channels, t, h, w), &device)?;
                pack_latents(&noise)?
            }
        };
        // Image-to-video: the image's latents are the first latent frame, noise the others (the
        // reference's conditioning mask); those h·w tokens get timestep 0 and are never stepped.
        let first_tokens = if req.image.is_some() { h * w } else { 0 };
        let mut latents = match &req.image {
            Some(image) => {
                let first = self.encode_image(image, &settings, req.encode_noise.as_ref())?;
                let first = pack_latents(&first)?; // (1, h·w, C)
                let rest = noise.narrow(1, first_tokens, t * h * w - first_tokens)?;
                Tensor::cat(&[&first, &rest], 1)?
            }
            None => noise,
        };

        // 3. Denoise with guidance `uncond + g · (cond − uncond)` (guidance_rescale 0: the
        // reference's default, under which it skips the rescale).
        let mut scheduler = self.scheduler(&settings)?;
        let timesteps = scheduler.timesteps().to_vec();
        let (tf, sf) = self.vae_scale_factors();
        let rope_scale = rope_interpolation_scale(tf, sf, settings.fps as f64);
        let transformer = self.transformer()?;
        let text_states = text.prompt_embeds.to_dtype(transformer.dtype())?;
        let batch = text_states.dim(0)?;
        let mut cache = settings.step_cache.map(FirstBlockCache::new);
        for (i, &timestep) in timesteps.iter().enumerate() {
            let model_input = latents
                .to_dtype(transformer.dtype())?
                .repeat((batch, 1, 1))?;
            let timestep_batch = if first_tokens == 0 {
                Tensor::full(timestep as f32, batch, &device)?
            } else {
                // per token: 0 on the conditioning frame, t elsewhere
                let n = t * h * w;
                let zeros = Tensor::zeros((batch, first_tokens), DType::F32, &device)?;
                let rest = Tensor::full(timestep as f32, (batch, n - first_tokens), &device)?;
                Tensor::cat(&[&zeros, &rest], 1)?
            };
            let out = transformer
                .forward_cached(
                    &LtxTransformerInputs {
                        hidden_states: &model_input,
                        encoder_hidden_states: &text_states,
                        timestep: &timestep_batch,
                        encoder_attention_mask: Some(&text.attention_mask),
                        latent_grid: grid,
                        rope_interpolation_scale: Some(rope_scale),
                    },
                    cache.as_mut(),
                )?
                .to_dtype(DType::F32)?;
            let noise_pred = if do_cfg {
                let (uncond, cond) = (out.narrow(0, 0, 1)?, out.narrow(0, 1, 1)?);
                (&uncond + ((cond - &uncond)? * settings.guidance_scale)?)?
            } else {
                out
            };
            let stepped = scheduler.step(&noise_pred, timestep, &latents)?;
            // the step is elementwise: stepping all tokens and restoring the conditioning frame
            // equals the reference's stepping frames 1.. only
            latents = if first_tokens == 0 {
                stepped
            } else {
                let n = t * h * w;
                Tensor::cat(
                    &[
                        &latents.narrow(1, 0, first_tokens)?,
                        &stepped.narrow(1, first_tokens, n - first_tokens)?,
                    ],
                    1,
                )?
            };
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
        let skipped = cache.map_or(0, |c| c.skipped());
        Ok((settings, latents, text_seconds, skipped))
    }

    /// An input image `(H, W, 3)` in [0, 1] → its normalised latents `(1, C, 1, h, w)` f32, as
    /// `LTXImageToVideoPipeline` makes them: resized to the settings' size, encoded as a
    /// one-frame video, the posterior *sampled* (`mean + std · ε`, ε `encode_noise` or drawn from
    /// the seed) and normalised (`(z − mean) / std`: the reference leaves the VAE's scaling
    /// factor out here, though it divides by it before decoding).
    pub fn encode_image(
        &mut self,
        image: &Tensor,
        settings: &Settings,
        encode_noise: Option<&Tensor>,
    ) -> Result<Tensor> {
        let device = self.opts.device.clone();
        let input = video_to_vae_input(
            &image.unsqueeze(0)?,
            1,
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
            // `_normalize_latents` with its default scaling factor 1.0, as the reference calls it
            Ok(vae.normalize_latents_scaled(&z.to_dtype(DType::F32)?, 1.0)?)
        })();
        if self.opts.keep_loaded {
            self.vae = Some(vae);
        }
        encoded
    }

    /// Step 4: packed latents `(1, T·H·W, C)` on the settings' grid → frames `(F, H, W, 3)`
    /// f32 in [0, 1]. Unpacks, un-normalises (`· std / scaling_factor + mean`), mixes in
    /// decode noise `(1 - s) · z + s · noise` (vidgen's seeded noise; `s` defaults to the
    /// decode timestep, skipped at 0) and decodes at `decode_timestep` (default 0) when the
    /// decoder is timestep-conditioned.
    pub fn decode(
        &mut self,
        packed: &Tensor,
        settings: &Settings,
        decode_timestep: Option<f64>,
        decode_noise_scale: Option<f64>,
        progress: &mut dyn FnMut(Progress),
    ) -> Result<Tensor> {
        let vae = self.take_vae()?;
        let grid = self.latent_grid(settings);
        let latents = unpack_latents(&packed.to_dtype(DType::F32)?, grid)?;
        let mut z = vae.denormalize_latents(&latents)?;
        let timestep = if self.vae_cfg.timestep_conditioning {
            let decode_timestep = decode_timestep.unwrap_or(0.0);
            let scale = decode_noise_scale.unwrap_or(decode_timestep);
            if scale != 0.0 {
                let noise = crate::noise::randn(
                    settings.seed.wrapping_add(DECODE_NOISE_SEED_OFFSET),
                    z.shape(),
                    z.device(),
                )?;
                z = AutoencoderKlLtxVideo::add_decode_noise(&z, &noise, &[scale])?;
            }
            Some(Tensor::new(&[decode_timestep as f32], z.device())?.to_dtype(self.opts.dtype)?)
        } else {
            None
        };
        let video = vae.decode(&z.to_dtype(self.opts.dtype)?, timestep.as_ref())?; // (1, 3, F, H, W)
        progress(Progress {
            stage: Stage::Decode,
            done: grid.0,
            total: grid.0,
        });
        if self.opts.keep_loaded {
            self.vae = Some(vae);
        }
        video_to_frames(&video)
    }

    /// Runs the whole pipeline, reporting progress after every step and after decoding.
    pub fn generate(
        &mut self,
        req: &GenerateRequest,
        progress: &mut dyn FnMut(Progress),
    ) -> Result<Generated> {
        let clock = std::time::Instant::now();
        let (settings, packed, text_encoder, skipped_steps) = self.denoise(req, progress)?;
        let mut timings = Timings {
            text_encoder,
            denoise: clock.elapsed().as_secs_f64() - text_encoder,
            ..Timings::default()
        };
        let clock = std::time::Instant::now();
        let frames = self.decode(
            &packed,
            &settings,
            req.decode_timestep,
            req.decode_noise_scale,
            progress,
        )?;
        timings.vae_decode = clock.elapsed().as_secs_f64();
        Ok(Generated {
            frames,
            latents: unpack_latents(&packed, self.latent_grid(&settings))?,
            settings,
            timings,
            skipped_steps,
        })
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
    fn take_vae(&mut self) -> Result<AutoencoderKlLtxVideo> {
        if let Some(vae) = self.vae.take() {
            return Ok(vae);
        }
        let cfg = self.vae_cfg.clone();
        let mut vae =
            build_component(&self.dir, "vae", self.opts.dtype, &self.opts.device, |vb| {
                AutoencoderKlLtxVideo::new(&cfg, vb)
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

    fn transformer(&mut self) -> Result<&LtxVideoTransformer3D> {
        if self.transformer.is_none() {
            let (cfg, quantize) = (self.transformer_cfg.clone(), self.opts.quantize);
            self.transformer = Some(build_component(
                &self.dir,
                "transformer",
                self.opts.dtype,
                &self.opts.device,
                |vb| {
                    crate::nn::linear::quantized(quantize, || LtxVideoTransformer3D::new(&cfg, vb))
                },
            )?);
        }
        Ok(self.transformer.as_ref().expect("just built"))
    }
}

/// `(B, C, T, H, W)` → packed `(B, T·H·W, C)` (patch size 1).
pub fn pack_latents(latents: &Tensor) -> candle_core::Result<Tensor> {
    let (b, c, t, h, w) = latents.dims5()?;
    // b c t h w -> b (t h w) c
    latents
        .reshape((b, c, t * h * w))?
        .transpose(1, 2)?
        .contiguous()
}

/// Packed `(B, T·H·W, C)` on the grid `(T, H, W)` → `(B, C, T, H, W)` (patch size 1).
pub fn unpack_latents(packed: &Tensor, grid: (usize, usize, usize)) -> candle_core::Result<Tensor> {
    let (b, n, c) = packed.dims3()?;
    let (t, h, w) = grid;
    if n != t * h * w {
        candle_core::bail!(
            "expected packed latents (B, {}, C) for the grid {grid:?}, got {:?}",
            t * h * w,
            packed.shape()
        )
    }
    // b (t h w) c -> b c t h w
    packed
        .transpose(1, 2)?
        .contiguous()?
        .reshape((b, c, t, h, w))
}

impl VideoPipeline for LtxPipeline {
    fn preload(&mut self) -> Result<()> {
        LtxPipeline::preload(self)
    }

    fn fork(&self) -> Box<dyn VideoPipeline> {
        Box::new(self.clone())
    }

    fn dir(&self) -> &Path {
        LtxPipeline::dir(self)
    }

    fn defaults(&self) -> &ModelDefaults {
        LtxPipeline::defaults(self)
    }

    fn resolve(&self, req: &GenerateRequest) -> Result<Settings> {
        LtxPipeline::resolve(self, req)
    }

    fn generate(
        &mut self,
        req: &GenerateRequest,
        progress: &mut dyn FnMut(Progress),
    ) -> Result<Generated> {
        LtxPipeline::generate(self, req, progress)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pack_then_unpack_is_identity_with_token_order_t_h_w() -> candle_core::Result<()> {
        let x = Tensor::arange(0f32, 36.0, &candle_core::Device::Cpu)?.reshape((1, 2, 3, 2, 3))?; // (B, C, T, H, W)
        let packed = pack_latents(&x)?;
        assert_eq!(packed.dims(), [1, 18, 2]);
        // token (t=1, h=0, w=2) = index (1·2 + 0)·3 + 2 = 8; channel 1
        let v = packed.get(0)?.get(8)?.get(1)?.to_scalar::<f32>()?;
        let want = x
            .get(0)?
            .get(1)?
            .get(1)?
            .get(0)?
            .get(2)?
            .to_scalar::<f32>()?;
        assert_eq!(v, want);
        let back = unpack_latents(&packed, (3, 2, 3))?;
        let diff = (back - &x)?.abs()?.sum_all()?.to_scalar::<f32>()?;
        assert_eq!(diff, 0.0);
        assert!(unpack_latents(&packed, (3, 2, 2)).is_err());
        Ok(())
    }
}
