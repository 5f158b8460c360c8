//! `vidgen generate`: prompt → video file.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use candle_core::quantized::GgmlDType;
use candle_core::{DType, Device, Tensor};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use vidgen::pipeline::{GenerateRequest, LoadOptions, Stage};

/// The built-in model, shipped in the repository at `models/tiny-world`.
pub fn builtin_model() -> PathBuf {
    let crate_dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let repo = crate_dir
        .parent()
        .and_then(Path::parent)
        .unwrap_or(crate_dir);
    repo.join("models").join("tiny-world")
}

#[derive(Args)]
pub struct GenerateArgs {
    /// What the video should show.
    pub prompt: String,
    /// What it should not show (used with guidance > 1).
    #[arg(long)]
    pub negative_prompt: Option<String>,
    /// Model folder (diffusers layout, or a Hugging Face cache folder). Default: the built-in model.
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// Number of frames, of the form 4k+1 for Wan, 8k+1 for LTX-Video. Default: the model's.
    #[arg(long)]
    pub frames: Option<usize>,
    /// Height in pixels, a multiple of 16 for Wan, 32 for LTX-Video. Default: the model's.
    #[arg(long)]
    pub height: Option<usize>,
    /// Width in pixels, a multiple of 16 for Wan, 32 for LTX-Video. Default: the model's.
    #[arg(long)]
    pub width: Option<usize>,
    /// Frames per second of the output (and the frame rate frame-rate-conditioned models get).
    #[arg(long)]
    pub fps: Option<u32>,
    /// Denoising steps. Default: the model's.
    #[arg(long)]
    pub steps: Option<usize>,
    /// Classifier-free guidance scale; 1 or less turns guidance off. Default: the model's.
    #[arg(long)]
    pub guidance: Option<f64>,
    /// Noise seed; default: a random one, printed and recorded next to the output.
    #[arg(long)]
    pub seed: Option<u64>,
    /// Text tokens the prompt is padded/truncated to. Default: the pipeline's (Wan: 512).
    #[arg(long)]
    pub max_sequence_length: Option<usize>,
    /// Timestep for timestep-conditioned VAE decoders (LTX; default 0).
    #[arg(long)]
    pub decode_timestep: Option<f64>,
    /// Noise scale for timestep-conditioned VAE decoders (LTX; default: the decode timestep).
    #[arg(long)]
    pub decode_noise_scale: Option<f64>,
    /// safetensors file whose tensor `latents` is the initial noise, laid out as the diffusers
    /// pipeline takes `latents=` (Wan: (B, C, T, H, W); CogVideoX: (B, T, C, H, W), frames
    /// before channels; LTX-Video: packed (B, T·H·W, C), token index (t·H + h)·W + w, with
    /// --frames/--height/--width giving the grid).
    #[arg(long)]
    pub latents: Option<PathBuf>,
    /// Video-to-video: the input video (.mp4, .gif, .png or a folder of numbered pngs), resized
    /// to the output size; its first 1 + 4k frames are used (SDEdit, as diffusers'
    /// WanVideoToVideoPipeline / CogVideoXVideoToVideoPipeline). With --latents, those are the
    /// noise mixed into it.
    #[arg(long, conflicts_with = "image")]
    pub video: Option<PathBuf>,
    /// With --video: how much to change it, in (0, 1]; the last ⌊steps × strength⌋ steps run.
    /// Default 0.8.
    #[arg(long, requires = "video")]
    pub strength: Option<f64>,
    /// Fast mode: skip the transformer's later blocks on steps where its first block's output
    /// changed by less than this fraction since the last full step (diffusers' first-block
    /// cache threshold: 0.05 is its default, 0.1–0.3 skips more). Off by default.
    #[arg(long, value_name = "THRESHOLD")]
    pub step_cache: Option<f64>,
    /// Image-to-video: the first frame (.png, .jpg, .webp), resized to the output size
    /// (LTX-Video, as diffusers' LTXImageToVideoPipeline).
    #[arg(long)]
    pub image: Option<PathBuf>,
    /// Output file: .mp4, .gif, or .png (then a folder of numbered frames is written next to it).
    #[arg(short, long, default_value = "video.mp4")]
    pub output: PathBuf,
    /// Also write the decoded video before 8-bit rounding: tensor `frames`, f32 (F, H, W, 3) in [0, 1].
    #[arg(long)]
    pub save_frames: Option<PathBuf>,
    /// Weights and activations: f32 (the reference), bf16 or f16.
    #[arg(long, default_value = "f32")]
    pub dtype: String,
    /// cpu, cuda:N or metal.
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Store the transformer's linear layers 8-bit (`q8_0`, GGUF's format: about a quarter of
    /// f32's memory) and multiply with candle's quantized matmul. Off by default.
    #[arg(long, value_name = "q8_0")]
    pub quantize: Option<String>,
    /// Decode (and encode) large frames in overlapping tiles blended at the seams, as
    /// diffusers' `vae.enable_tiling()`: bounds the VAE's memory at large sizes (Wan: tiles of
    /// 256 px). Off by default.
    #[arg(long)]
    pub vae_tiling: bool,
}

pub fn run(args: GenerateArgs) -> Result<()> {
    // Everything a user can get wrong is checked before the model runs.
    check_output_path(&args.output, &["mp4", "gif", "png"])?;
    if let Some(path) = &args.save_frames {
        check_output_path(path, &["safetensors"])?;
    }
    let dtype = parse_dtype(&args.dtype)?;
    let device = parse_device(&args.device)?;
    let quantize = parse_quantize(args.quantize.as_deref())?;
    let latents = match &args.latents {
        Some(path) => Some(load_latents(path)?),
        None => None,
    };
    let video = match &args.video {
        Some(path) => Some(load_input_video(path)?),
        None => None,
    };
    let image = match &args.image {
        Some(path) => Some(load_input_image(path)?),
        None => None,
    };

    let model_dir = args.model.clone().unwrap_or_else(builtin_model);
    if args.model.is_none() && !model_dir.join("model_index.json").is_file() {
        bail!(
            "the built-in model is not in this checkout ({}); pass --model DIR \
             (`vidgen init --preset tiny -o DIR` writes a small random one)",
            model_dir.display()
        );
    }
    let started = Instant::now();
    let mut pipeline = vidgen::pipeline::load(
        &model_dir,
        LoadOptions {
            dtype,
            device,
            keep_loaded: false,
            quantize,
            vae_tiling: args.vae_tiling,
        },
    )
    .with_context(|| format!("loading model {}", model_dir.display()))?;

    let seed = args.seed.unwrap_or_else(random_seed);
    let request = GenerateRequest {
        prompt: args.prompt.clone(),
        negative_prompt: args.negative_prompt.clone(),
        num_frames: args.frames,
        height: args.height,
        width: args.width,
        num_inference_steps: args.steps,
        guidance_scale: args.guidance,
        seed,
        max_sequence_length: args.max_sequence_length,
        latents,
        fps: args.fps,
        decode_timestep: args.decode_timestep,
        decode_noise_scale: args.decode_noise_scale,
        cancel: None,
        video,
        strength: args.strength,
        image,
        encode_noise: None,
        step_cache: args.step_cache,
    };
    let settings = pipeline.resolve(&request)?;
    eprintln!(
        "{} frames at {}x{}, {} steps, guidance {}, seed {}, {}",
        settings.num_frames,
        settings.width,
        settings.height,
        settings.num_inference_steps,
        settings.guidance_scale,
        seed,
        settings.scheduler
    );

    let bars = Bars::new();
    let generated = pipeline.generate(&request, &mut |p| bars.update(p.stage, p.done, p.total))?;
    bars.finish();

    let (f, h, w, _) = generated.frames.dims4()?;
    let data = generated.frames.flatten_all()?.to_vec1::<f32>()?;
    let fps = generated.settings.fps;
    let video = vidgen_video::Frames::new(f, h, w, fps as f32, data)?;
    if let Some(path) = &args.save_frames {
        vidgen_video::write_frames_safetensors(path, &video)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    vidgen_video::write(&args.output, &video)
        .with_context(|| format!("writing {}", args.output.display()))?;
    let record = serde_json::json!({
        "settings": generated.settings,
        "model": pipeline.dir(),
        "quantize": args.quantize,
        "vae_tiling": args.vae_tiling,
        "seconds": generated.timings,
    });
    let sidecar = sidecar_path(&args.output);
    write_atomic(&sidecar, serde_json::to_string_pretty(&record)?.as_bytes())?;
    let t = generated.timings;
    if let Some(threshold) = settings.step_cache {
        eprintln!(
            "step cache {threshold}: {} steps reused the later blocks",
            generated.skipped_steps
        );
    }
    eprintln!(
        "wrote {} ({f} frames, {w}x{h}, {fps} fps) in {:.1}s (text encoder {:.1}s, denoise {:.1}s, \
         VAE decode {:.1}s); settings in {}",
        args.output.display(),
        started.elapsed().as_secs_f64(),
        t.text_encoder,
        t.denoise,
        t.vae_decode,
        sidecar.display()
    );
    Ok(())
}

/// Largest input frame side, and most input frames, checked from the file's header before
/// anything is decoded.
const MAX_INPUT_SIDE: usize = 8192;
const MAX_INPUT_FRAMES: usize = 2048;

fn check_input_size(path: &Path, frames: Option<usize>, height: usize, width: usize) -> Result<()> {
    if height == 0 || width == 0 || height > MAX_INPUT_SIDE || width > MAX_INPUT_SIDE {
        bail!(
            "{}: {width}x{height} frames; inputs may be at most {MAX_INPUT_SIDE} pixels a side",
            path.display()
        );
    }
    if frames.is_some_and(|f| f > MAX_INPUT_FRAMES) {
        bail!(
            "{}: {} frames; inputs may have at most {MAX_INPUT_FRAMES}",
            path.display(),
            frames.unwrap_or_default()
        );
    }
    Ok(())
}

/// An input video as `(F, H, W, 3)` f32 in [0, 1].
fn load_input_video(path: &Path) -> Result<Tensor> {
    let (frames, height, width) =
        vidgen_video::probe(path).with_context(|| format!("--video {}", path.display()))?;
    check_input_size(path, frames, height, width)?;
    let video = vidgen_video::read(path).with_context(|| format!("--video {}", path.display()))?;
    check_input_size(path, Some(video.frames), video.height, video.width)?;
    let shape = (video.frames, video.height, video.width, 3);
    Ok(Tensor::from_vec(video.data, shape, &Device::Cpu)?)
}

/// An input image as `(H, W, 3)` f32 in [0, 1] (alpha dropped).
fn load_input_image(path: &Path) -> Result<Tensor> {
    let reader = image::ImageReader::open(path)
        .with_context(|| format!("--image {}", path.display()))?
        .with_guessed_format()
        .with_context(|| format!("--image {}", path.display()))?;
    let (w, h) = reader
        .into_dimensions()
        .with_context(|| format!("--image {}: not a readable image", path.display()))?;
    check_input_size(path, Some(1), h as usize, w as usize)?;
    let decoded = image::ImageReader::open(path)?
        .with_guessed_format()?
        .decode()
        .with_context(|| format!("--image {}: not a readable image", path.display()))?
        .into_rgb32f();
    let (w, h) = (decoded.width() as usize, decoded.height() as usize);
    Ok(Tensor::from_vec(
        decoded.into_raw(),
        (h, w, 3),
        &Device::Cpu,
    )?)
}

/// Progress bars for the denoising steps and the VAE decode.
struct Bars {
    steps: ProgressBar,
    decode: ProgressBar,
}

impl Bars {
    fn new() -> Self {
        let style = ProgressStyle::with_template(
            "{prefix:>8} [{bar:30}] {pos}/{len} {elapsed_precise} eta {eta}",
        )
        .expect("valid template")
        .progress_chars("=> ");
        let make = |prefix: &'static str| {
            let bar = ProgressBar::hidden();
            bar.set_style(style.clone());
            bar.set_prefix(prefix);
            bar
        };
        Self {
            steps: make("denoise"),
            decode: make("decode"),
        }
    }

    fn update(&self, stage: Stage, done: usize, total: usize) {
        let bar = match stage {
            Stage::Denoise => &self.steps,
            Stage::Decode => &self.decode,
        };
        if bar.is_hidden() {
            bar.set_draw_target(indicatif::ProgressDrawTarget::stderr());
            bar.set_length(total as u64);
            bar.reset_elapsed();
        }
        bar.set_position(done as u64);
        if done == total {
            bar.finish();
        }
    }

    fn finish(&self) {
        self.steps.finish();
        self.decode.finish();
    }
}

/// Checks the extension and that the folder exists and is writable, before any work is done.
pub fn check_output_path(path: &Path, accepted: &[&str]) -> Result<()> {
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .map(|e| e.to_ascii_lowercase())
        .unwrap_or_default();
    if !accepted.contains(&ext.as_str()) {
        bail!(
            "{}: unsupported output type; use one of: {}",
            path.display(),
            accepted
                .iter()
                .map(|e| format!(".{e}"))
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    let parent = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    if !parent.is_dir() {
        bail!(
            "{}: the folder {} does not exist",
            path.display(),
            parent.display()
        );
    }
    let probe = parent.join(format!(".vidgen-write-test-{}", std::process::id()));
    std::fs::write(&probe, b"")
        .with_context(|| format!("{}: cannot write in {}", path.display(), parent.display()))?;
    let _ = std::fs::remove_file(&probe);
    if path.is_dir() {
        bail!("{}: is a folder", path.display());
    }
    Ok(())
}

pub fn parse_dtype(name: &str) -> Result<DType> {
    Ok(match name {
        "f32" => DType::F32,
        "bf16" => DType::BF16,
        "f16" => DType::F16,
        other => bail!("unknown --dtype `{other}`; use f32, bf16 or f16"),
    })
}

/// `--quantize`: `q8_0` (GGUF's 8-bit blocks) or `none`.
pub fn parse_quantize(name: Option<&str>) -> Result<Option<GgmlDType>> {
    Ok(match name {
        None | Some("none") => None,
        Some("q8_0") => Some(GgmlDType::Q8_0),
        Some(other) => bail!("unknown --quantize `{other}`; use q8_0 or none"),
    })
}

pub fn parse_device(name: &str) -> Result<Device> {
    if name == "cpu" {
        return Ok(Device::Cpu);
    }
    if name == "metal" {
        return Device::new_metal(0).context("--device metal");
    }
    if let Some(n) = name.strip_prefix("cuda") {
        let ordinal = match n.strip_prefix(':') {
            Some(i) => i
                .parse()
                .with_context(|| format!("--device {name}: bad GPU index"))?,
            None if n.is_empty() => 0,
            None => bail!("unknown --device `{name}`; use cpu, cuda:N or metal"),
        };
        return Device::new_cuda(ordinal).with_context(|| {
            format!("--device {name} (is this build made with --features cuda?)")
        });
    }
    bail!("unknown --device `{name}`; use cpu, cuda:N or metal")
}

fn load_latents(path: &Path) -> Result<candle_core::Tensor> {
    let tensors = candle_core::safetensors::load(path, &Device::Cpu)
        .with_context(|| format!("reading --latents {}", path.display()))?;
    let names: Vec<&String> = tensors.keys().collect();
    match tensors.get("latents") {
        Some(t) => Ok(t.to_dtype(DType::F32)?),
        None => bail!(
            "--latents {}: no tensor named `latents` (found: {names:?})",
            path.display()
        ),
    }
}

fn random_seed() -> u64 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    (nanos ^ (u64::from(std::process::id()) << 32)) % 1_000_000_000
}

/// `clip.mp4` → `clip.mp4.json`: the settings the video was made with.
fn sidecar_path(output: &Path) -> PathBuf {
    let mut name = output.as_os_str().to_owned();
    name.push(".json");
    PathBuf::from(name)
}

/// Writes to a temporary file in the same folder, then renames into place.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    vidgen_video::write_atomic(path, bytes).with_context(|| format!("writing {}", path.display()))
}
