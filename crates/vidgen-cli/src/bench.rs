//! `vidgen bench`: times the parts a user waits for, at real model sizes with random weights.
//! Prints one JSON object per part on stdout.

use std::time::Instant;

use anyhow::{bail, Context, Result};
use candle_core::quantized::GgmlDType;
use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use clap::Args;
use vidgen::families::wan::init::{detached, random_weights};
use vidgen::families::wan::presets;
use vidgen::families::wan::transformer::WanTransformer3D;
use vidgen::families::wan::vae::AutoencoderKlWan;
use vidgen::noise::NoiseRng;
use vidgen::text::{T5Config, T5EncoderModel};

#[derive(Args)]
pub struct BenchArgs {
    /// A model folder to time with its own weights and configs (instead of --preset).
    #[arg(long)]
    pub model: Option<std::path::PathBuf>,
    /// Model size preset: a Wan preset of `vidgen init --list`, or `ltx-video-2b` /
    /// `cogvideox-2b` (diffusers' default configs of those classes, which are the 2B models).
    #[arg(long, default_value = "wan2.1-1.3b")]
    pub preset: String,
    /// Override the transformer depth, for quicker runs.
    #[arg(long)]
    pub layers: Option<usize>,
    /// Comma-separated parts: text (the text encoder over --text-len tokens), dit, dit-cfg
    /// (prompt and negative prompt as one batch of 2), vae-decode, vae-encode, pipeline (a
    /// whole `generate` with --model, components loaded as the command loads them; with
    /// --step-cache, also the fast mode against it).
    #[arg(long, default_value = "dit,vae-decode")]
    pub parts: String,
    /// Frames (default 17; the model's own for the pipeline part).
    #[arg(long)]
    pub frames: Option<usize>,
    /// Height (default 256; the model's own for the pipeline part).
    #[arg(long)]
    pub height: Option<usize>,
    /// Width (default 256; the model's own for the pipeline part).
    #[arg(long)]
    pub width: Option<usize>,
    /// Text tokens. Default: the pipeline's (Wan 512, LTX-Video 128, CogVideoX 226, which the
    /// 2B's position table requires).
    #[arg(long)]
    pub text_len: Option<usize>,
    /// f32 or bf16.
    #[arg(long, default_value = "f32")]
    pub dtype: String,
    /// Timed runs per part after one warm-up; the median is reported.
    #[arg(long, default_value_t = 1)]
    pub repeats: usize,
    /// Worker threads (default: all cores, or RAYON_NUM_THREADS).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Transformer linear layers stored 8-bit (`q8_0`): for the dit parts; for the pipeline
    /// part, in its fast-mode run.
    #[arg(long, value_name = "q8_0")]
    pub quantize: Option<String>,
    /// Pipeline part: the prompt.
    #[arg(long, default_value = "a red ball bounces on the floor")]
    pub prompt: String,
    /// Pipeline part: denoising steps (default: the model's).
    #[arg(long)]
    pub steps: Option<usize>,
    /// Pipeline part: the seed.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Pipeline part: also time the fast mode (`generate --step-cache THRESHOLD`, with
    /// --quantize too if given) and report its speed-up and its frames' PSNR/SSIM against the
    /// default output.
    #[arg(long, value_name = "THRESHOLD")]
    pub step_cache: Option<f64>,
    /// VAE parts and the pipeline part: spatial tiling, as `generate --vae-tiling`.
    #[arg(long)]
    pub vae_tiling: bool,
}

impl BenchArgs {
    fn quantize(&self) -> Result<Option<GgmlDType>> {
        crate::generate::parse_quantize(self.quantize.as_deref())
    }

    fn frames(&self) -> usize {
        self.frames.unwrap_or(17)
    }
    fn height(&self) -> usize {
        self.height.unwrap_or(256)
    }
    fn width(&self) -> usize {
        self.width.unwrap_or(256)
    }
}

/// Starts a part's memory measurement: the free memory of building its model (random weights
/// are made through temporary copies) is returned to the system and the peak restarts from
/// what is resident now, the weights included.
fn fresh_peak() {
    vidgen::memory::release_free_memory();
    vidgen::memory::reset_peak_rss();
}

/// Median seconds of `repeats` runs after one warm-up.
fn time(repeats: usize, f: &mut dyn FnMut() -> Result<()>) -> Result<f64> {
    f()?;
    let mut times = Vec::with_capacity(repeats);
    for _ in 0..repeats.max(1) {
        let start = Instant::now();
        f()?;
        times.push(start.elapsed().as_secs_f64());
    }
    times.sort_by(|a, b| a.total_cmp(b));
    Ok(times[times.len() / 2])
}

/// GFLOP/s of a large matmul in `dtype` through the models' linear layer (candle's matmul, or
/// the bf16 kernel where it applies), the peak the parts are compared with.
fn matmul_peak(dtype: DType) -> Result<f64> {
    use candle_core::Module;
    // large enough (17 GFLOP) that thread wake-ups and the output's page faults do not count
    let n = 2048;
    let a = Tensor::randn(0f32, 1., (n, n), &Device::Cpu)?.to_dtype(dtype)?;
    let b = Tensor::randn(0f32, 1., (n, n), &Device::Cpu)?.to_dtype(dtype)?;
    let layer = vidgen::nn::linear::Linear::new(b, None);
    // the fastest of several runs after a warm-up: a peak, and one a single slow run (a
    // frequency dip, another process) cannot lower — a median of 3 once measured 171 GFLOP/s
    // where the same run's DiT forward sustained 225
    layer.forward(&a)?;
    let mut best = f64::INFINITY;
    for _ in 0..7 {
        let start = Instant::now();
        layer.forward(&a)?;
        best = best.min(start.elapsed().as_secs_f64());
    }
    Ok(2.0 * (n * n * n) as f64 / best / 1e9)
}

pub fn run(args: BenchArgs) -> Result<()> {
    if let Some(n) = args.threads {
        // Read by candle's kernels and rayon's pool, which start after this.
        std::env::set_var("RAYON_NUM_THREADS", n.to_string());
    }
    args.quantize()?; // checked before any work
    let dtype = match args.dtype.as_str() {
        "f32" => DType::F32,
        "bf16" => DType::BF16,
        other => bail!("unknown --dtype `{other}`; use f32 or bf16"),
    };
    if let Some(dir) = &args.model {
        let dir = vidgen::checkpoint::resolve_model_dir(dir)?;
        let source = Source::Folder(dir.clone());
        let class = vidgen::checkpoint::class_name(&dir.join("model_index.json"))?;
        return match class.as_str() {
            "WanPipeline" => run_wan(
                &args,
                dtype,
                config(&dir, "transformer")?,
                config(&dir, "vae")?,
                text_config(&dir)?,
                source,
            ),
            "LTXPipeline" => run_ltx(
                &args,
                dtype,
                config(&dir, "transformer")?,
                config(&dir, "vae")?,
                text_config(&dir)?,
                source,
            ),
            "CogVideoXPipeline" => run_cogvideox(
                &args,
                dtype,
                config(&dir, "transformer")?,
                config(&dir, "vae")?,
                text_config(&dir)?,
                source,
            ),
            other => bail!(
                "{}: `{other}` is not a pipeline vidgen runs; supported: {}",
                dir.display(),
                vidgen::pipeline::SUPPORTED_PIPELINES.join(", ")
            ),
        };
    }
    match args.preset.as_str() {
        "ltx-video-2b" => run_ltx(
            &args,
            dtype,
            Default::default(),
            Default::default(),
            t5_xxl()?,
            Source::Random,
        ),
        "cogvideox-2b" => run_cogvideox(
            &args,
            dtype,
            Default::default(),
            Default::default(),
            t5_xxl()?,
            Source::Random,
        ),
        name => {
            let preset = presets::preset(name)?;
            let mut text = preset.text_encoder;
            if text.vocab_size == 0 {
                // written with the model's own tokenizer, whose size `vidgen init` sets
                text.vocab_size = vidgen::text::default_vocab().len();
            }
            let (transformer, vae) = (preset.transformer, preset.vae);
            run_wan(&args, dtype, transformer, vae, text, Source::Random)
        }
    }
}

/// Where a benchmarked component's weights come from.
enum Source {
    /// Random, at the config's sizes.
    Random,
    /// A model folder's component subfolders.
    Folder(std::path::PathBuf),
}

/// A component's `config.json` in a model folder.
fn config<T: serde::de::DeserializeOwned>(dir: &std::path::Path, component: &str) -> Result<T> {
    let path = dir.join(component).join("config.json");
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))
}

/// A model folder's `text_encoder/config.json`.
fn text_config(dir: &std::path::Path) -> Result<T5Config> {
    Ok(T5Config::from_file(
        dir.join("text_encoder").join("config.json"),
    )?)
}

/// The text encoder of LTX-Video and CogVideoX: T5 v1.1 XXL's encoder (google/t5-v1_1-xxl).
fn t5_xxl() -> Result<T5Config> {
    T5Config::from_json(&serde_json::json!({
        "model_type": "t5", "vocab_size": 32128, "d_model": 4096, "d_kv": 64, "d_ff": 10240,
        "num_layers": 24, "num_heads": 64, "relative_attention_num_buckets": 32,
        "relative_attention_max_distance": 128, "feed_forward_proj": "gated-gelu",
    }))
    .map_err(anyhow::Error::msg)
}

/// `build` with weights from `source`: random (seeded by `seed`) or the folder's `component`;
/// its linear layers stored as `quantize` (random weights are drawn dense, then quantized once,
/// in the model that is kept).
fn model<M>(
    source: &Source,
    component: &str,
    seed: u64,
    dtype: DType,
    quantize: Option<GgmlDType>,
    build: impl Fn(VarBuilder) -> candle_core::Result<M>,
) -> Result<M> {
    let kept = |vb| vidgen::nn::linear::quantized(quantize, || build(vb));
    match source {
        Source::Random => {
            // the var map's pass only registers the weights: dense
            let map = random_weights(&mut NoiseRng::new(seed), dtype, |vb| build(vb).map(|_| ()))?;
            Ok(kept(VarBuilder::from_tensors(
                detached(&map),
                dtype,
                &Device::Cpu,
            ))?)
        }
        Source::Folder(dir) => {
            let weights =
                vidgen::checkpoint::Weights::open(&dir.join(component), dtype, &Device::Cpu)?;
            Ok(kept(weights.var_builder())?)
        }
    }
}

/// Rejects a size the family cannot take: frames `1 + k·tf`, sides multiples of `m`.
fn check_size(args: &BenchArgs, tf: usize, m: usize) -> Result<()> {
    if args.frames() == 0
        || !(args.frames() - 1).is_multiple_of(tf)
        || !args.height().is_multiple_of(m)
        || !args.width().is_multiple_of(m)
    {
        bail!("this model: --frames must be {tf}k+1 and --height/--width multiples of {m}");
    }
    Ok(())
}

/// A timed piece of work.
type Job<'a> = Box<dyn FnMut() -> Result<()> + 'a>;

/// What a family's model (preset or folder) gives the bench.
struct Family<'a> {
    layers: usize,
    text_len: usize,
    /// The text encoder's config (its depth is overridden by --layers too) and where its
    /// weights come from.
    text_encoder: T5Config,
    source: &'a Source,
    /// Builds the transformer (random weights) and inputs for `batch`: one forward, and its
    /// FLOPs.
    dit: Box<dyn Fn(usize) -> Result<(Job<'a>, f64)> + 'a>,
    /// Builds the VAE (random weights) and its input: one decode of latents, or (`true`) one
    /// encode of the video.
    vae: Box<dyn Fn(bool) -> Result<Job<'a>> + 'a>,
}

/// A job that runs `run(model, input)`, its result dropped.
fn job<'a, M: 'a, O>(
    model: M,
    input: Tensor,
    run: impl Fn(&M, &Tensor) -> candle_core::Result<O> + 'a,
) -> Result<Job<'a>> {
    Ok(Box::new(move || {
        run(&model, &input)?;
        Ok(())
    }))
}

/// A random video `(1, 3, frames, height, width)` in [-1, 1] at the bench's size.
fn random_video(args: &BenchArgs, dtype: DType) -> Result<Tensor> {
    let shape = (1, 3, args.frames(), args.height(), args.width());
    Ok(Tensor::rand(-1f32, 1f32, shape, &Device::Cpu)?.to_dtype(dtype)?)
}

/// Times each of `--parts` and prints its JSON line.
fn run_parts(args: &BenchArgs, dtype: DType, family: Family) -> Result<()> {
    let peak = matmul_peak(dtype)?;
    // one part's measurement: its peak memory from here, its median time, its JSON line
    let measure = |part: &str, mut job: Job, flops: f64, layers: usize| -> Result<()> {
        fresh_peak();
        let secs = time(args.repeats, &mut job)?;
        report(part, secs, flops, peak, args, layers, family.text_len);
        Ok(())
    };
    for part in args.parts.split(',').map(str::trim) {
        match part {
            "dit" | "dit-cfg" => {
                let (forward, flops) = (family.dit)(if part == "dit" { 1 } else { 2 })?;
                measure(part, forward, flops, family.layers)?;
            }
            "vae-decode" | "vae-encode" => {
                let job = (family.vae)(part == "vae-encode")?;
                measure(part, job, f64::NAN, 0)?;
            }
            "text" => {
                let mut cfg = family.text_encoder.clone();
                if let Some(layers) = args.layers {
                    cfg.num_layers = layers;
                }
                let (job, flops) = text_job(&cfg, family.source, dtype, family.text_len)?;
                measure(part, job, flops, cfg.num_layers)?;
            }
            "pipeline" => pipeline_part(args, dtype)?,
            other => bail!(
                "unknown part `{other}`; use text, dit, dit-cfg, vae-decode, vae-encode or pipeline"
            ),
        }
    }
    Ok(())
}

/// The text encoder over `text_len` tokens (all attended, as a full-length prompt), and its
/// FLOPs.
fn text_job<'a>(
    cfg: &T5Config,
    source: &Source,
    dtype: DType,
    text_len: usize,
) -> Result<(Job<'a>, f64)> {
    let encoder = model(source, "text_encoder", 4, dtype, None, |vb| {
        T5EncoderModel::new(cfg, vb)
    })?;
    let ids: Vec<u32> = (0..text_len)
        .map(|i| ((i * 7919 + 13) % cfg.vocab_size) as u32)
        .collect();
    let ids = Tensor::from_vec(ids, (1, text_len), &Device::Cpu)?;
    let (_, gated) = cfg.feed_forward().map_err(anyhow::Error::msg)?;
    let (d, inner, f, l) = (
        cfg.d_model as f64,
        (cfg.num_heads * cfg.d_kv) as f64,
        cfg.d_ff as f64,
        text_len as f64,
    );
    let per_layer = 2.0 * l * d * 4.0 * inner // q, k, v, o
        + 2.0 * 2.0 * l * l * inner // scores and weighted sum
        + 2.0 * l * d * f * if gated { 3.0 } else { 2.0 };
    let job: Job = Box::new(move || {
        encoder.forward(&ids, None)?;
        Ok(())
    });
    Ok((job, per_layer * cfg.num_layers as f64))
}

/// The pipeline part: `generate` as the command runs it (each component loaded for its stage
/// and dropped after), its median time and stage times; with --step-cache, the fast mode too,
/// its speed-up and how far its frames are from the default's.
fn pipeline_part(args: &BenchArgs, dtype: DType) -> Result<()> {
    use vidgen::eval::similarity::{psnr, ssim};
    use vidgen::pipeline::{GenerateRequest, Generated, LoadOptions};
    let Some(dir) = &args.model else {
        bail!(
            "the pipeline part runs a real model folder: pass --model DIR (the built-in model \
             is models/tiny-world); presets have random weights at sizes only the other parts \
             time"
        );
    };
    let request = GenerateRequest {
        prompt: args.prompt.clone(),
        num_frames: args.frames,
        height: args.height,
        width: args.width,
        num_inference_steps: args.steps,
        seed: args.seed,
        ..GenerateRequest::default()
    };
    // the fast mode: the step cache and / or 8-bit transformer weights
    let quantize = args.quantize()?;
    let generate = |fast: bool| -> Result<Generated> {
        let opts = LoadOptions {
            dtype,
            quantize: if fast { quantize } else { None },
            vae_tiling: args.vae_tiling,
            ..LoadOptions::default()
        };
        let mut pipeline = vidgen::pipeline::load(dir, opts)?;
        let request = GenerateRequest {
            step_cache: if fast { args.step_cache } else { None },
            ..request.clone()
        };
        Ok(pipeline.generate(&request, &mut |_| {})?)
    };
    let timed = |fast: bool| -> Result<(f64, Generated)> {
        fresh_peak();
        let mut last = None;
        let secs = time(args.repeats, &mut || {
            last = Some(generate(fast)?);
            Ok(())
        })?;
        Ok((secs, last.expect("ran at least once")))
    };
    let pixels = |g: &Generated| -> Result<Vec<f32>> { Ok(g.frames.flatten_all()?.to_vec1()?) };

    let (secs, default) = timed(false)?;
    let s = &default.settings;
    let record = |part: &str, secs: f64, g: &Generated| {
        serde_json::json!({
            "part": part,
            "seconds": secs,
            "peak_rss_bytes": vidgen::memory::peak_rss_bytes(),
            "stage_seconds": g.timings,
            "model": dir, "dtype": args.dtype,
            "frames": s.num_frames, "height": s.height, "width": s.width,
            "steps": s.num_inference_steps, "guidance": s.guidance_scale, "seed": s.seed,
            "threads": candle_core::utils::get_num_threads(),
        })
    };
    println!("{}", record("pipeline", secs, &default));
    if args.step_cache.is_some() || quantize.is_some() {
        let (fast_secs, fast) = timed(true)?;
        let (a, b) = (pixels(&default)?, pixels(&fast)?);
        let (f, h, w, _) = default.frames.dims4()?;
        let mut value = record("pipeline-fast", fast_secs, &fast);
        let psnr_db = psnr(&a, &b);
        value["step_cache"] = args.step_cache.into();
        value["quantize"] = args.quantize.clone().into();
        value["skipped_steps"] = fast.skipped_steps.into();
        value["speedup"] = (secs / fast_secs).into();
        value["denoise_speedup"] = (default.timings.denoise / fast.timings.denoise).into();
        // JSON has no infinity: identical frames report null
        value["psnr_db"] = if psnr_db.is_finite() {
            psnr_db.into()
        } else {
            serde_json::Value::Null
        };
        value["ssim"] = ssim(&a, &b, f, h, w).into();
        println!("{value}");
    }
    Ok(())
}

fn run_wan(
    args: &BenchArgs,
    dtype: DType,
    mut cfg: vidgen::families::wan::config::WanTransformerConfig,
    vae_cfg: vidgen::families::wan::vae::AutoencoderKlWanConfig,
    text_encoder: T5Config,
    source: Source,
) -> Result<()> {
    if let Some(layers) = args.layers {
        cfg.num_layers = layers;
    }
    let quantize = args.quantize()?;
    let (tf, sf) = (
        vae_cfg.temporal_compression(),
        vae_cfg.spatial_compression(),
    );
    let (_, ph, pw) = cfg.patch().map_err(anyhow::Error::msg)?;
    check_size(args, tf, sf * ph.max(pw))?;
    let text_len = args.text_len.unwrap_or(512);
    let (t, h, w) = (
        (args.frames() - 1) / tf + 1,
        args.height() / sf,
        args.width() / sf,
    );
    run_parts(
        args,
        dtype,
        Family {
            layers: cfg.num_layers,
            text_len,
            text_encoder,
            source: &source,
            dit: Box::new(|batch| {
                let device = Device::Cpu;
                let model = model(&source, "transformer", 0, dtype, quantize, |vb| {
                    WanTransformer3D::new(&cfg, vb)
                })?;
                let x = vidgen::noise::randn(1, (batch, cfg.in_channels, t, h, w), &device)?;
                let text = vidgen::noise::randn(2, (batch, text_len, cfg.text_dim), &device)?;
                let ts = Tensor::full(500f32, batch, &device)?;
                let n = model.num_tokens((t, h, w));
                let flops = batch as f64
                    * cross_dit_flops(cfg.inner_dim(), cfg.ffn_dim, n, text_len)
                    * cfg.num_layers as f64;
                let forward: Job = Box::new(move || {
                    model.forward(&x, &ts, &text)?;
                    Ok(())
                });
                Ok((forward, flops))
            }),
            vae: Box::new(|encode| {
                // decoding builds the decoder only, as text-to-video does
                let mut vae = model(&source, "vae", 1, dtype, None, |vb| {
                    if encode {
                        AutoencoderKlWan::new(&vae_cfg, vb)
                    } else {
                        AutoencoderKlWan::decoder_only(&vae_cfg, vb)
                    }
                })?;
                vae.enable_tiling(args.vae_tiling);
                if encode {
                    return job(vae, random_video(args, dtype)?, |vae, x| vae.encode(x));
                }
                let z = vidgen::noise::randn(3, (1, vae_cfg.z_dim, t, h, w), &Device::Cpu)?
                    .to_dtype(dtype)?;
                job(vae, z, |vae, z| vae.decode(z))
            }),
        },
    )
}

fn run_ltx(
    args: &BenchArgs,
    dtype: DType,
    mut cfg: vidgen::families::ltx::config::LtxVideoTransformer3DConfig,
    vae_cfg: vidgen::families::ltx::vae::AutoencoderKlLtxVideoConfig,
    text_encoder: T5Config,
    source: Source,
) -> Result<()> {
    use vidgen::families::ltx::transformer::{LtxTransformerInputs, LtxVideoTransformer3D};
    use vidgen::families::ltx::vae::AutoencoderKlLtxVideo;
    if let Some(layers) = args.layers {
        cfg.num_layers = layers;
    }
    let quantize = args.quantize()?;
    let (tf, sf) = (
        vae_cfg.temporal_compression(),
        vae_cfg.spatial_compression(),
    );
    check_size(args, tf, sf)?;
    let text_len = args.text_len.unwrap_or(128);
    let grid = (
        (args.frames() - 1) / tf + 1,
        args.height() / sf,
        args.width() / sf,
    );
    let n = grid.0 * grid.1 * grid.2;
    run_parts(
        args,
        dtype,
        Family {
            layers: cfg.num_layers,
            text_len,
            text_encoder,
            source: &source,
            dit: Box::new(|batch| {
                let device = Device::Cpu;
                let model = model(&source, "transformer", 0, dtype, quantize, |vb| {
                    LtxVideoTransformer3D::new(&cfg, vb)
                })?;
                let x = vidgen::noise::randn(1, (batch, n, cfg.in_channels), &device)?
                    .to_dtype(dtype)?;
                let text =
                    vidgen::noise::randn(2, (batch, text_len, cfg.caption_channels), &device)?
                        .to_dtype(dtype)?;
                let ts = Tensor::full(500f32, batch, &device)?;
                let d = cfg.inner_dim();
                let flops =
                    batch as f64 * cross_dit_flops(d, 4 * d, n, text_len) * cfg.num_layers as f64;
                // LTX's default 25 fps
                let rope_scale = [tf as f64 / 25.0, sf as f64, sf as f64];
                let forward: Job = Box::new(move || {
                    model.forward(&LtxTransformerInputs {
                        hidden_states: &x,
                        encoder_hidden_states: &text,
                        timestep: &ts,
                        encoder_attention_mask: None,
                        latent_grid: grid,
                        rope_interpolation_scale: Some(rope_scale),
                    })?;
                    Ok(())
                });
                Ok((forward, flops))
            }),
            vae: Box::new(|encode| {
                let device = Device::Cpu;
                let mut vae = model(&source, "vae", 1, dtype, None, |vb| {
                    AutoencoderKlLtxVideo::new(&vae_cfg, vb)
                })?;
                vae.enable_tiling(args.vae_tiling);
                if encode {
                    return job(vae, random_video(args, dtype)?, |vae, x| vae.encode(x));
                }
                let shape = (1, vae_cfg.latent_channels, grid.0, grid.1, grid.2);
                let z = vidgen::noise::randn(3, shape, &device)?.to_dtype(dtype)?;
                let timestep = if vae_cfg.timestep_conditioning {
                    Some(Tensor::new(&[0.05f32], &device)?.to_dtype(dtype)?)
                } else {
                    None
                };
                job(vae, z, move |vae, z| vae.decode(z, timestep.as_ref()))
            }),
        },
    )
}

fn run_cogvideox(
    args: &BenchArgs,
    dtype: DType,
    mut cfg: vidgen::families::cogvideox::config::CogVideoXTransformerConfig,
    vae_cfg: vidgen::families::cogvideox::vae::AutoencoderKlCogVideoXConfig,
    text_encoder: T5Config,
    source: Source,
) -> Result<()> {
    use vidgen::families::cogvideox::transformer::CogVideoXTransformer3D;
    use vidgen::families::cogvideox::vae::AutoencoderKlCogVideoX;
    if let Some(layers) = args.layers {
        cfg.num_layers = layers;
    }
    let quantize = args.quantize()?;
    let sf = vae_cfg.spatial_compression();
    check_size(args, 4, sf * cfg.patch_size)?;
    let text_len = args.text_len.unwrap_or(cfg.max_text_seq_length);
    if cfg.adds_position_table() && text_len != cfg.max_text_seq_length {
        bail!(
            "this CogVideoX's position table is laid out for {} text tokens (--text-len)",
            cfg.max_text_seq_length
        );
    }
    let (t, h, w) = (
        (args.frames() - 1) / 4 + 1,
        args.height() / sf,
        args.width() / sf,
    );
    run_parts(
        args,
        dtype,
        Family {
            layers: cfg.num_layers,
            text_len,
            text_encoder,
            source: &source,
            dit: Box::new(|batch| {
                let device = Device::Cpu;
                let model = model(&source, "transformer", 0, dtype, quantize, |vb| {
                    CogVideoXTransformer3D::new(&cfg, vb)
                })?;
                let x = vidgen::noise::randn(1, (batch, t, cfg.in_channels, h, w), &device)?
                    .to_dtype(dtype)?;
                let text = vidgen::noise::randn(2, (batch, text_len, cfg.text_embed_dim), &device)?
                    .to_dtype(dtype)?;
                let ts = Tensor::full(500f32, batch, &device)?;
                let n = t * (h / cfg.patch_size) * (w / cfg.patch_size);
                let d = cfg.inner_dim();
                let flops =
                    batch as f64 * joint_dit_flops(d, 4 * d, n + text_len) * cfg.num_layers as f64;
                let forward: Job = Box::new(move || {
                    model.forward(&x, &text, &ts)?;
                    Ok(())
                });
                Ok((forward, flops))
            }),
            vae: Box::new(|encode| {
                let mut vae = model(&source, "vae", 1, dtype, None, |vb| {
                    AutoencoderKlCogVideoX::new(&vae_cfg, vb)
                })?;
                vae.enable_tiling(args.vae_tiling);
                if encode {
                    return job(vae, random_video(args, dtype)?, |vae, x| vae.encode(x));
                }
                let z =
                    vidgen::noise::randn(3, (1, vae_cfg.latent_channels, t, h, w), &Device::Cpu)?
                        .to_dtype(dtype)?;
                job(vae, z, |vae, z| vae.decode(z))
            }),
        },
    )
}

/// FLOPs of one layer with self-attention over `n` tokens, cross-attention to `l` text tokens
/// (already projected to width `d`) and an MLP of width `f`: matmuls and attention only.
fn cross_dit_flops(d: usize, f: usize, n: usize, l: usize) -> f64 {
    let (d, f, n, l) = (d as f64, f as f64, n as f64, l as f64);
    2.0 * (4.0 * n * d * d) // self-attention projections
        + 2.0 * 2.0 * n * n * d // scores and weighted sum
        + 2.0 * (2.0 * n * d * d + 2.0 * l * d * d) // cross-attention projections
        + 2.0 * 2.0 * n * l * d
        + 2.0 * 2.0 * n * d * f // MLP
}

/// FLOPs of one joint-attention layer over `n` tokens (text and video together).
fn joint_dit_flops(d: usize, f: usize, n: usize) -> f64 {
    let (d, f, n) = (d as f64, f as f64, n as f64);
    2.0 * (4.0 * n * d * d) + 2.0 * 2.0 * n * n * d + 2.0 * 2.0 * n * d * f
}

fn report(
    part: &str,
    seconds: f64,
    flops: f64,
    peak_gflops: f64,
    args: &BenchArgs,
    layers: usize,
    text_len: usize,
) {
    let gflops = flops / seconds / 1e9;
    let value = serde_json::json!({
        "part": part,
        "seconds": seconds,
        "peak_rss_bytes": vidgen::memory::peak_rss_bytes(),
        "gflops": if gflops.is_finite() { Some(gflops) } else { None },
        "peak_fraction": if gflops.is_finite() { Some(gflops / peak_gflops) } else { None },
        "matmul_peak_gflops": peak_gflops,
        "preset": if args.model.is_some() { None } else { Some(&args.preset) },
        "model": args.model, "layers": layers, "dtype": args.dtype,
        "frames": args.frames(), "height": args.height(), "width": args.width(), "text_len": text_len,
        "threads": candle_core::utils::get_num_threads(),
    });
    println!("{value}");
}
