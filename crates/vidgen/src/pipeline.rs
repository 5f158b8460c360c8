//! What every text-to-video pipeline shares: the request, the settings it resolves to, the
//! result, progress reports, and [`load`], which opens a model folder as the pipeline its
//! `model_index.json` names. Each family writes its loop out in full in its own folder
//! (`families::wan::pipeline`): encode prompt → noise → denoise with classifier-free
//! guidance → VAE decode → frames.

use std::path::Path;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use serde::Deserialize;

use crate::checkpoint::{class_name, read_json, resolve_model_dir, Weights};
use crate::{Error, Result};

/// Pipeline classes vidgen runs (`model_index.json`'s `_class_name`).
pub const SUPPORTED_PIPELINES: &[&str] = &["WanPipeline", "LTXPipeline", "CogVideoXPipeline"];

/// Where and how to run the model.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    /// Weight and activation dtype; f32 is the reference.
    pub dtype: DType,
    pub device: Device,
    /// Keep every component in memory between calls (a server); otherwise each is dropped
    /// after its stage to keep peak memory low (the command line).
    pub keep_loaded: bool,
    /// Store the transformer's linear layers in this block format (GGUF's Q8_0: 8-bit weights,
    /// about a quarter of f32's memory) and multiply with candle's quantized matmul. `None`:
    /// as `dtype`.
    pub quantize: Option<candle_core::quantized::GgmlDType>,
    /// Encode and decode large frames in overlapping spatial tiles, blended at the seams, as
    /// diffusers' `vae.enable_tiling()` with the family's default tile sizes (Wan: 256 px tiles
    /// every 192; LTX-Video: 512 every 448; CogVideoX: half its sample size, 1/6 and 1/5
    /// overlap). Bounds the VAE's memory by the tile instead of the frame; frames no larger
    /// than one tile are unchanged.
    pub vae_tiling: bool,
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self {
            dtype: DType::F32,
            device: Device::Cpu,
            keep_loaded: false,
            quantize: None,
            vae_tiling: false,
        }
    }
}

/// Generation defaults of a model: its pipeline's `__call__` defaults in diffusers, overridden
/// key by key by an optional `vidgen.json` at the model folder's root (vidgen's own models
/// ship one). `Default` gives Wan's.
#[derive(Debug, Clone, PartialEq, Deserialize, serde::Serialize)]
#[serde(default)]
pub struct ModelDefaults {
    pub num_frames: usize,
    pub height: usize,
    pub width: usize,
    pub num_inference_steps: usize,
    pub guidance_scale: f64,
    pub fps: u32,
    pub max_sequence_length: usize,
    pub negative_prompt: String,
}

impl Default for ModelDefaults {
    fn default() -> Self {
        Self {
            num_frames: 81,
            height: 480,
            width: 832,
            num_inference_steps: 50,
            guidance_scale: 5.0,
            fps: 16,
            max_sequence_length: 512,
            negative_prompt: String::new(),
        }
    }
}

impl ModelDefaults {
    /// The defaults of the model folder `dir`: the keys of its `vidgen.json` over `base` (the
    /// family's).
    pub fn load(dir: &Path, base: ModelDefaults) -> Result<Self> {
        let path = dir.join("vidgen.json");
        if !path.is_file() {
            return Ok(base);
        }
        let overrides: serde_json::Map<String, serde_json::Value> = read_json(&path)?;
        let mut merged = serde_json::to_value(base).expect("defaults serialise");
        for (key, value) in overrides {
            merged[key] = value;
        }
        serde_json::from_value(merged).map_err(|e| Error::BadConfig {
            path,
            reason: e.to_string(),
        })
    }
}

/// What to generate. `None` fields take the model's defaults.
#[derive(Debug, Clone, Default)]
pub struct GenerateRequest {
    pub prompt: String,
    pub negative_prompt: Option<String>,
    pub num_frames: Option<usize>,
    pub height: Option<usize>,
    pub width: Option<usize>,
    pub num_inference_steps: Option<usize>,
    pub guidance_scale: Option<f64>,
    pub seed: u64,
    pub max_sequence_length: Option<usize>,
    /// Initial noise exactly as the family's diffusers pipeline takes `latents=` (Wan:
    /// `(1, C, T, H, W)`; CogVideoX: `(1, T, C, H, W)`, frames before channels); sizes then
    /// default to the latents'.
    pub latents: Option<Tensor>,
    /// Frame rate of the output, which frame-rate-conditioned models (LTX) also receive.
    pub fps: Option<u32>,
    /// For timestep-conditioned VAE decoders (LTX): the decode timestep and noise scale.
    pub decode_timestep: Option<f64>,
    pub decode_noise_scale: Option<f64>,
    /// Set from another thread to stop the generation after its current step
    /// ([`Error::Cancelled`]).
    pub cancel: Option<CancelFlag>,
    /// Video-to-video: the input video `(F, H, W, 3)` f32 in [0, 1], at any size (resized to
    /// the requested one). It is encoded, noised to the level `strength` names and denoised
    /// from there; `latents` are then the noise mixed in. Families without the mode refuse it.
    pub video: Option<Tensor>,
    /// With `video`: how much to change it, in (0, 1]; the last `⌊steps · strength⌋` steps
    /// run. Default 0.8 (diffusers').
    pub strength: Option<f64>,
    /// Image-to-video: the first frame `(H, W, 3)` f32 in [0, 1]. Families without the mode
    /// refuse it.
    pub image: Option<Tensor>,
    /// Video-to-video with a VAE whose posterior the reference samples (CogVideoX): the draw
    /// ε of `mean + std · ε`, shaped as the posterior `(1, C, T, H, W)`. Default: from the seed.
    pub encode_noise: Option<Tensor>,
    /// Fast mode: skip the transformer's later blocks on steps where its first block's
    /// residual changed by less than this (relative) since the last full step — diffusers'
    /// first-block cache threshold ([`crate::nn::step_cache`]). `None`: every step runs in full.
    pub step_cache: Option<f64>,
}

/// diffusers' default `strength` for video-to-video.
pub const DEFAULT_STRENGTH: f64 = 0.8;

impl GenerateRequest {
    /// The generation modes a request asks for, by name, for error messages.
    pub fn mode(&self) -> &'static str {
        match (&self.video, &self.image) {
            (Some(_), _) => "video-to-video",
            (None, Some(_)) => "image-to-video",
            (None, None) => "text-to-video",
        }
    }

    /// An error unless the request's mode is among `supported` (by [`Self::mode`]'s names);
    /// `family` names the model in the message.
    pub fn check_mode(&self, family: &str, supported: &[&str]) -> Result<()> {
        if self.video.is_some() && self.image.is_some() {
            return Err(Error::InvalidRequest(
                "give an input video or an input image, not both".into(),
            ));
        }
        if self.strength.is_some() && self.video.is_none() {
            return Err(Error::InvalidRequest(
                "strength applies to video-to-video (an input video)".into(),
            ));
        }
        let mode = self.mode();
        if supported.contains(&mode) {
            Ok(())
        } else {
            Err(Error::InvalidRequest(format!(
                "{family} models do not do {mode}; they do: {}",
                supported.join(", ")
            )))
        }
    }
}

/// A shared flag that asks a running generation to stop.
#[derive(Debug, Clone, Default)]
pub struct CancelFlag(std::sync::Arc<std::sync::atomic::AtomicBool>);

impl CancelFlag {
    pub fn new() -> Self {
        Self::default()
    }

    /// Asks the generation to stop at its next step.
    pub fn cancel(&self) {
        self.0.store(true, std::sync::atomic::Ordering::SeqCst);
    }

    pub fn is_cancelled(&self) -> bool {
        self.0.load(std::sync::atomic::Ordering::SeqCst)
    }
}

impl GenerateRequest {
    /// [`Error::Cancelled`] once the request's cancel flag is set.
    pub fn check_cancelled(&self) -> Result<()> {
        match &self.cancel {
            Some(flag) if flag.is_cancelled() => Err(Error::Cancelled),
            _ => Ok(()),
        }
    }
}

/// The settings a generation actually ran with (defaults filled in).
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Settings {
    pub prompt: String,
    pub negative_prompt: String,
    pub num_frames: usize,
    pub height: usize,
    pub width: usize,
    pub num_inference_steps: usize,
    pub guidance_scale: f64,
    pub seed: u64,
    pub max_sequence_length: usize,
    pub fps: u32,
    pub scheduler: String,
    /// Video-to-video: how much of the input was repainted.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub strength: Option<f64>,
    /// The first-block cache threshold of the fast mode, if on.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub step_cache: Option<f64>,
}

/// A finished generation.
#[derive(Debug, Clone)]
pub struct Generated {
    /// `(F, H, W, 3)` f32 in [0, 1], before any 8-bit rounding.
    pub frames: Tensor,
    /// The denoised latents before VAE decoding, in the layout the family takes them
    /// (Wan: `(1, C, T, H, W)`; CogVideoX: `(1, T, C, H, W)`).
    pub latents: Tensor,
    pub settings: Settings,
    /// Wall-clock seconds of each stage, components' loading included.
    pub timings: Timings,
    /// Denoising steps whose later transformer blocks the fast mode skipped.
    pub skipped_steps: usize,
}

/// Seconds spent in each stage of a generation.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize)]
pub struct Timings {
    pub text_encoder: f64,
    pub denoise: f64,
    pub vae_decode: f64,
}

/// Which stage a progress report is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// One denoising step (a transformer call, two fused with guidance) done.
    Denoise,
    /// One latent frame decoded by the VAE.
    Decode,
}

/// Progress: `done` of `total` units of `stage`.
#[derive(Debug, Clone, Copy)]
pub struct Progress {
    pub stage: Stage,
    pub done: usize,
    pub total: usize,
}

/// A text-to-video pipeline over a model folder.
pub trait VideoPipeline: Send {
    /// The folder the model was loaded from (a snapshot folder for a cache path).
    fn dir(&self) -> &Path;

    /// The model's generation defaults.
    fn defaults(&self) -> &ModelDefaults;

    /// Fills in defaults and checks every size and setting before any heavy work.
    fn resolve(&self, req: &GenerateRequest) -> Result<Settings>;

    /// Runs the whole pipeline, reporting progress after every step and decoded latent frame.
    fn generate(
        &mut self,
        req: &GenerateRequest,
        progress: &mut dyn FnMut(Progress),
    ) -> Result<Generated>;

    /// Builds every component now and keeps them loaded between calls (a server).
    fn preload(&mut self) -> Result<()>;

    /// A second handle on the same model: loaded weights are shared, not copied, so
    /// [`Self::preload`] first. For several workers over one loaded model.
    fn fork(&self) -> Box<dyn VideoPipeline>;
}

/// The draw ε of a sampled VAE posterior (`mean + std · ε`, as the CogVideoX video-to-video
/// and LTX image-to-video references encode): the request's `encode_noise`, checked against
/// the posterior's `shape`, or vidgen's noise from a seed derived from `seed` (apart from the
/// initial noise's). f32 on `device`.
pub fn posterior_noise(
    given: Option<&Tensor>,
    shape: (usize, usize, usize, usize, usize),
    seed: u64,
    device: &Device,
) -> Result<Tensor> {
    match given {
        Some(e) if e.dims5()? == shape => Ok(e.to_dtype(DType::F32)?.to_device(device)?),
        Some(e) => Err(Error::InvalidRequest(format!(
            "encode noise {:?} does not fit the posterior {shape:?}",
            e.dims()
        ))),
        None => Ok(crate::noise::randn(
            seed ^ 0x9e37_79b9_7f4a_7c15,
            shape,
            device,
        )?),
    }
}

/// Checks an input video `(F, H, W, 3)` and returns `F`.
pub fn input_video_frames(video: &Tensor) -> Result<usize> {
    match video.dims() {
        &[f, h, w, 3] if f > 0 && h > 0 && w > 0 => Ok(f),
        other => Err(Error::InvalidRequest(format!(
            "an input video must be (frames, height, width, 3) with no empty side, got {other:?}"
        ))),
    }
}

/// Video-to-video: how many frames the request's input video gives — its first `1 + tf·k`,
/// what a causal VAE with temporal factor `tf` encodes — after checking that a frame count
/// the request asks for fits in it. `None` without an input video.
pub fn video_frame_count(req: &GenerateRequest, tf: usize) -> Result<Option<usize>> {
    let Some(video) = &req.video else {
        return Ok(None);
    };
    let available = input_video_frames(video)?;
    if let Some(asked) = req.num_frames {
        if asked > available {
            return Err(Error::InvalidRequest(format!(
                "{asked} frames asked of an input video of {available}"
            )));
        }
    }
    Ok(Some((available - 1) / tf * tf + 1))
}

/// The strength of a video-to-video request: given or [`DEFAULT_STRENGTH`], checked to be in
/// (0, 1] and to leave at least one of `steps` steps to run.
pub fn check_strength(strength: Option<f64>, steps: usize) -> Result<f64> {
    let s = strength.unwrap_or(DEFAULT_STRENGTH);
    if !(s.is_finite() && s > 0.0 && s <= 1.0) {
        return Err(Error::InvalidRequest(format!(
            "strength must be in (0, 1] (1 repaints everything), got {s}"
        )));
    }
    if (steps as f64 * s) < 1.0 {
        return Err(Error::InvalidRequest(format!(
            "strength {s} of {steps} steps runs no step (⌊steps × strength⌋ = 0); raise either"
        )));
    }
    Ok(s)
}

/// The fast mode's threshold of a request, checked: finite and positive.
pub fn check_step_cache(threshold: Option<f64>) -> Result<Option<f64>> {
    match threshold {
        Some(t) if !(t.is_finite() && t > 0.0) => Err(Error::InvalidRequest(format!(
            "the step cache threshold must be a positive number (0.05 is diffusers' default; \
             0.1–0.3 skips more steps), got {t}"
        ))),
        t => Ok(t),
    }
}

/// The timesteps video-to-video runs: the last `⌊n · strength⌋` of the schedule's `n`, as
/// diffusers' `get_timesteps` keeps them.
pub fn strength_timesteps(timesteps: &[f64], strength: f64) -> Result<Vec<f64>> {
    let n = timesteps.len();
    let keep = ((n as f64 * strength) as usize).min(n);
    if keep == 0 {
        return Err(Error::InvalidRequest(format!(
            "strength {strength} of {n} steps runs no step; raise either"
        )));
    }
    Ok(timesteps[n - keep..].to_vec())
}

/// An input video `(F, H, W, 3)` in [0, 1] as a VAE takes it: `(1, 3, frames, height, width)`
/// in [-1, 1], f32 on `device`, from its first `frames` frames, each resized to `height ×
/// width` (Lanczos-3, as diffusers' image processor resizes PIL frames; the aspect ratio is not
/// kept) when its size differs.
pub fn video_to_vae_input(
    video: &Tensor,
    frames: usize,
    height: usize,
    width: usize,
    device: &Device,
) -> Result<Tensor> {
    let available = input_video_frames(video)?;
    if frames > available {
        return Err(Error::InvalidRequest(format!(
            "{frames} frames asked of an input video of {available}"
        )));
    }
    let (_, h, w, _) = video.dims4()?;
    let video = video.narrow(0, 0, frames)?.to_dtype(DType::F32)?;
    let video = if (h, w) == (height, width) {
        video
    } else {
        let data = video.flatten_all()?.to_vec1::<f32>()?;
        let mut out = Vec::with_capacity(frames * height * width * 3);
        for frame in data.chunks_exact(h * w * 3) {
            let img = image::Rgb32FImage::from_raw(w as u32, h as u32, frame.to_vec())
                .expect("the frame's length is h·w·3");
            let resized = image::imageops::resize(
                &img,
                width as u32,
                height as u32,
                image::imageops::FilterType::Lanczos3,
            );
            out.extend(resized.into_raw().into_iter().map(|v| v.clamp(0.0, 1.0)));
        }
        Tensor::from_vec(out, (frames, height, width, 3), &Device::Cpu)?
    };
    // f h w c -> 1 c f h w, [0, 1] -> [-1, 1]
    let x = video
        .to_device(device)?
        .permute((3, 0, 1, 2))?
        .unsqueeze(0)?
        .contiguous()?;
    Ok(((x * 2.0)? - 1.0)?)
}

/// Opens the model folder `path` (or a Hugging Face cache folder holding one) as the pipeline
/// its `model_index.json` names; nothing heavy is built yet.
pub fn load(path: &Path, opts: LoadOptions) -> Result<Box<dyn VideoPipeline>> {
    let dir = resolve_model_dir(path)?;
    let class = class_name(&dir.join("model_index.json"))?;
    match class.as_str() {
        "WanPipeline" => Ok(Box::new(crate::families::wan::pipeline::WanPipeline::load(
            &dir, opts,
        )?)),
        "LTXPipeline" => Ok(Box::new(crate::families::ltx::pipeline::LtxPipeline::load(
            &dir, opts,
        )?)),
        "CogVideoXPipeline" => Ok(Box::new(
            crate::families::cogvideox::pipeline::CogVideoXPipeline::load(&dir, opts)?,
        )),
        _ => Err(Error::Unsupported {
            what: "pipeline",
            name: class,
            supported: SUPPORTED_PIPELINES.join(", "),
        }),
    }
}

/// Builds one component of the model folder `dir` from its weights as `dtype`; errors name the
/// folder, and checkpoint tensors the model never read are reported.
pub(crate) fn build_component<T>(
    dir: &Path,
    component: &str,
    dtype: DType,
    device: &Device,
    make: impl FnOnce(VarBuilder<'static>) -> candle_core::Result<T>,
) -> Result<T> {
    build_component_part(dir, component, dtype, device, &[], make)
}

/// [`build_component`] for a model that reads only part of the checkpoint: tensors whose names
/// start with one of `skipped` are left unread without a warning.
pub(crate) fn build_component_part<T>(
    dir: &Path,
    component: &str,
    dtype: DType,
    device: &Device,
    skipped: &[&str],
    make: impl FnOnce(VarBuilder<'static>) -> candle_core::Result<T>,
) -> Result<T> {
    let dir = dir.join(component);
    let weights = Weights::open(&dir, dtype, device)?;
    let model = make(weights.var_builder()).map_err(|e| Error::BadWeights {
        path: dir.clone(),
        reason: e.to_string(),
    })?;
    let mut unused = weights.unused();
    unused.retain(|name| !skipped.iter().any(|prefix| name.starts_with(prefix)));
    if !unused.is_empty() {
        tracing::warn!(
            "{}: {} checkpoint tensors not used by the model: {}",
            dir.display(),
            unused.len(),
            unused.join(", ")
        );
    }
    Ok(model)
}

/// The text encoder's dtype: the requested one, except that an encoder stored in bf16 stays
/// bf16 when f32 is requested. It runs once per prompt, and the big ones (UMT5-XXL 5.7B, T5-XXL
/// 4.7B parameters) would need 19–23 GB as f32 — more than the transformer and the VAE
/// together. Their norms and residual streams still run in f32.
pub(crate) fn text_encoder_dtype(model_dir: &Path, requested: DType) -> Result<DType> {
    if requested != DType::F32 {
        return Ok(requested);
    }
    let dir = model_dir.join("text_encoder");
    let stored = Weights::open(&dir, DType::F32, &Device::Cpu)?.stored_dtype();
    Ok(if stored == Some(DType::BF16) {
        tracing::info!("{}: stored in bf16, kept in bf16", dir.display());
        DType::BF16
    } else {
        DType::F32
    })
}

/// A decoded video `(1, 3, F, H, W)` in about [-1, 1] → frames `(F, H, W, 3)` f32 in [0, 1]
/// (diffusers' `postprocess_video`: `x / 2 + 0.5`, clamped). A NaN or infinity is an error.
pub(crate) fn video_to_frames(video: &Tensor) -> Result<Tensor> {
    let frames = ((video.to_dtype(DType::F32)? * 0.5)? + 0.5)?
        .clamp(0f32, 1f32)?
        .squeeze(0)?
        .permute((1, 2, 3, 0))?
        .contiguous()?; // c f h w -> f h w c
    check_finite(&frames, "decoded frames")?;
    Ok(frames)
}

/// Reads `DIR/component/config.json`, checking its `_class_name`.
pub(crate) fn read_config<T: serde::de::DeserializeOwned>(
    dir: &Path,
    component: &str,
    expected_class: &'static str,
) -> Result<T> {
    let path = dir.join(component).join("config.json");
    let class = class_name(&path)?;
    if class != expected_class {
        return Err(Error::Unsupported {
            what: "component class",
            name: format!("{class} (in {component}/)"),
            supported: expected_class.into(),
        });
    }
    read_json(&path)
}

/// A NaN or infinity is an error, not an output.
pub(crate) fn check_finite(x: &Tensor, what: &str) -> Result<()> {
    let sum = x
        .abs()?
        .sum_all()?
        .to_dtype(DType::F32)?
        .to_scalar::<f32>()?;
    if sum.is_finite() {
        Ok(())
    } else {
        Err(Error::NonFinite(what.into()))
    }
}
