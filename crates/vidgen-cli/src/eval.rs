//! `vidgen eval`: how well a model follows prompts of the procedural world.
//!
//! Draws `--count` clips of the held-out Eval split at the model's default size, generates a
//! video from each caption (seeded by the clip's seed), scores it against the clip's truth
//! with `vidgen::eval`, and prints a table and, as the last line of stdout, a JSON object.
//! `--ground-truth` scores the world's own clips and `--noise` uniform random frames: the
//! best and worst a model can do, with no model needed.

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use candle_core::{DType, Device, Tensor};
use clap::Args;
use vidgen::checkpoint::Weights;
use vidgen::data::{sample_clip, SceneKind, Split, WorldSpec, MIXTURE};
use vidgen::eval::similarity::psnr;
use vidgen::eval::{score_clip, summarize, ClipScore, Summary};
use vidgen::families::wan::vae::{AutoencoderKlWan, AutoencoderKlWanConfig};
use vidgen::noise::NoiseRng;
use vidgen::pipeline::{video_to_vae_input, GenerateRequest, LoadOptions, VideoPipeline};

use crate::generate::{builtin_model, parse_device, parse_dtype, parse_quantize, write_atomic};

#[derive(Args)]
pub struct EvalArgs {
    /// Model folder to evaluate. Default: the built-in model; optional with --ground-truth or
    /// --noise (then it only sets the clip size).
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// Number of Eval-split clips (seeds SEED..SEED+COUNT).
    #[arg(long, default_value_t = 100)]
    pub count: usize,
    /// First seed.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Denoising steps. Default: the model's.
    #[arg(long)]
    pub steps: Option<usize>,
    /// Classifier-free guidance scale. Default: the model's.
    #[arg(long)]
    pub guidance: Option<f64>,
    /// Also write the JSON object (summary, per-clip scores) to this file.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Score the world's own clips instead of a model's videos (a sanity ceiling).
    #[arg(long, conflicts_with = "noise")]
    pub ground_truth: bool,
    /// Score uniform random frames instead of a model's videos (a sanity floor).
    #[arg(long, conflicts_with = "reconstruct")]
    pub noise: bool,
    /// Score the world's clips after a round trip through the model's VAE (encode, then decode
    /// the posterior mean): the best its DiT could do with this VAE.
    #[arg(long, conflicts_with = "ground_truth")]
    pub reconstruct: bool,
    /// Which phrasings to draw the prompts from: `eval` (held out from training) or `train`.
    #[arg(long, default_value = "eval", value_parser = ["eval", "train"])]
    pub split: String,
    /// 8-bit transformer weights, as `vidgen generate --quantize`.
    #[arg(long, value_name = "q8_0")]
    pub quantize: Option<String>,
    /// Spatial tiling of the VAE, as `vidgen generate --vae-tiling`.
    #[arg(long)]
    pub vae_tiling: bool,
    /// Fast mode, as `vidgen generate --step-cache`.
    #[arg(long, value_name = "THRESHOLD")]
    pub step_cache: Option<f64>,
    /// Weights and activations: f32, bf16 or f16.
    #[arg(long, default_value = "f32")]
    pub dtype: String,
    /// cpu, cuda:N or metal.
    #[arg(long, default_value = "cpu")]
    pub device: String,
}

pub fn run(args: EvalArgs) -> Result<()> {
    let baseline = args.ground_truth || args.noise;
    let mut pipeline = match (&args.model, baseline) {
        (None, true) => None,
        (model, _) => Some(load(model.clone(), &args)?),
    };
    let vae = match &pipeline {
        Some(p) if args.reconstruct => {
            let (dtype, device) = (parse_dtype(&args.dtype)?, parse_device(&args.device)?);
            Some((load_vae(p.dir(), dtype, &device)?, dtype, device))
        }
        _ => None,
    };
    let split = match args.split.as_str() {
        "train" => Split::Train,
        _ => Split::Eval,
    };
    let spec = match &pipeline {
        Some(p) => {
            let d = p.defaults();
            WorldSpec {
                num_frames: d.num_frames,
                height: d.height,
                width: d.width,
                fps: d.fps,
            }
        }
        None => WorldSpec::default(),
    };
    vidgen::data::check_spec(&spec)
        .map_err(|reason| anyhow::anyhow!("the model's default size: {reason}"))?;
    let mode = if args.ground_truth {
        "ground-truth"
    } else if args.noise {
        "noise"
    } else if args.reconstruct {
        "reconstruct"
    } else {
        "model"
    };

    let started = Instant::now();
    // --reconstruct: the round trip's PSNR against the world's clip, summed by frame index
    let mut psnr_sums = vec![0.0; spec.num_frames];
    let mut scores: Vec<ClipScore> = Vec::with_capacity(args.count);
    let mut scenes: Vec<SceneKind> = Vec::with_capacity(args.count);
    let mut per_clip = Vec::with_capacity(args.count);
    for i in 0..args.count {
        let seed = args.seed + i as u64;
        let clip = sample_clip(&spec, seed, split);
        let clip_started = Instant::now();
        // --reconstruct only: PSNR of each decoded frame against the clip's
        let mut psnrs = None;
        let (video, (f, h, w)) = if args.ground_truth {
            (clip.video, (spec.num_frames, spec.height, spec.width))
        } else if args.noise {
            let mut rng = NoiseRng::new(seed);
            let n = spec.num_frames * spec.height * spec.width * 3;
            let noise = (0..n).map(|_| rng.uniform() as f32).collect();
            (noise, (spec.num_frames, spec.height, spec.width))
        } else if let Some((vae, dtype, device)) = &vae {
            let decoded = round_trip(vae, &clip.video, &spec, *dtype, device)?;
            psnrs = Some(frame_psnr(&clip.video, &decoded, spec.num_frames));
            (decoded, (spec.num_frames, spec.height, spec.width))
        } else {
            let pipeline = pipeline
                .as_mut()
                .expect("a model is loaded unless a baseline");
            generate(pipeline.as_mut(), &args, &spec, &clip.caption, seed)?
        };
        let seconds = clip_started.elapsed().as_secs_f64();
        let score = score_clip(&video, f, h, w, &clip.truth, &clip.caption);
        let mut entry = serde_json::json!({
            "seed": seed,
            "caption": clip.caption,
            "scene": clip.truth.scene,
            "seconds": seconds,
            "score": score,
        });
        if let Some(psnrs) = psnrs {
            for (sum, p) in psnr_sums.iter_mut().zip(&psnrs) {
                *sum += p;
            }
            entry["frame_psnr_db"] = psnrs.into();
        }
        per_clip.push(entry);
        scores.push(score);
        scenes.push(clip.truth.scene);
        if mode == "model" {
            eprintln!(
                "[{}/{}] {:.1}s {}",
                i + 1,
                args.count,
                seconds,
                clip.caption
            );
        }
    }
    let seconds_per_clip = started.elapsed().as_secs_f64() / args.count.max(1) as f64;
    let summary = summarize(&scores);
    print_table(mode, &summary, seconds_per_clip);
    let by_scene = direction_by_scene(&scenes, &scores);
    let line: Vec<String> = by_scene
        .iter()
        .map(|(scene, n, right)| format!("{} {right}/{n}", scene.name()))
        .collect();
    println!("direction by scene: {}", line.join(", "));
    let by_scene_json: serde_json::Map<String, serde_json::Value> = by_scene
        .iter()
        .map(|&(scene, n, right)| {
            let accuracy = right as f64 / n as f64;
            let entry = serde_json::json!({ "count": n, "accuracy": accuracy });
            (scene.name().to_string(), entry)
        })
        .collect();
    let mut record = serde_json::json!({
        "mode": mode,
        "model": args.model,
        "spec": spec,
        "seed": args.seed,
        "split": args.split,
        "steps": args.steps,
        "seconds_per_clip": seconds_per_clip,
        "summary": summary,
        "direction_by_scene": by_scene_json,
    });
    if vae.is_some() {
        let means: Vec<f64> = psnr_sums
            .iter()
            .map(|s| s / args.count.max(1) as f64)
            .collect();
        let list: Vec<String> = means.iter().map(|p| format!("{p:.1}")).collect();
        println!(
            "round-trip PSNR by frame (dB, mean over clips): {}",
            list.join(" ")
        );
        record["frame_psnr_db"] = means.into();
    }
    if let Some(path) = &args.json {
        let mut full = record.clone();
        full["clips"] = per_clip.into();
        write_atomic(path, serde_json::to_string_pretty(&full)?.as_bytes())?;
    }
    println!("{record}");
    Ok(())
}

fn load(model: Option<PathBuf>, args: &EvalArgs) -> Result<Box<dyn VideoPipeline>> {
    let dir = model.clone().unwrap_or_else(builtin_model);
    if model.is_none() && !dir.join("model_index.json").is_file() {
        bail!(
            "the built-in model is not in this checkout ({}); pass --model DIR, or \
             --ground-truth / --noise for the baselines",
            dir.display()
        );
    }
    let dtype: DType = parse_dtype(&args.dtype)?;
    let options = LoadOptions {
        dtype,
        device: parse_device(&args.device)?,
        keep_loaded: true,
        quantize: parse_quantize(args.quantize.as_deref())?,
        vae_tiling: args.vae_tiling,
    };
    vidgen::pipeline::load(&dir, options)
        .with_context(|| format!("loading model {}", dir.display()))
}

/// The VAE of the (Wan-layout) model folder `dir`.
fn load_vae(dir: &Path, dtype: DType, device: &Device) -> Result<AutoencoderKlWan> {
    let cfg = AutoencoderKlWanConfig::from_file(dir.join("vae/config.json"))
        .context("--reconstruct needs a Wan-layout model (vae/config.json)")?;
    let weights = Weights::open(&dir.join("vae"), dtype, device)?;
    Ok(AutoencoderKlWan::new(&cfg, weights.var_builder())?)
}

/// `video` `(F, H, W, 3)` in [0, 1] encoded and decoded (posterior mean), same layout.
fn round_trip(
    vae: &AutoencoderKlWan,
    video: &[f32],
    spec: &WorldSpec,
    dtype: DType,
    device: &Device,
) -> Result<Vec<f32>> {
    let (f, h, w) = (spec.num_frames, spec.height, spec.width);
    let pixels = Tensor::from_slice(video, (f, h, w, 3), &Device::Cpu)?;
    let input = video_to_vae_input(&pixels, f, h, w, device)?.to_dtype(dtype)?;
    let decoded = vae.decode(&vae.encode(&input)?.mean)?;
    // b c f h w -> f h w c, in [0, 1]
    let frames = ((decoded
        .to_dtype(DType::F32)?
        .squeeze(0)?
        .permute((1, 2, 3, 0))?
        + 1.0)?
        * 0.5)?;
    Ok(frames.flatten_all()?.to_vec1::<f32>()?)
}

/// PSNR (dB) of each of the `frames` frames of `decoded` against `truth`, both `(F, H, W, 3)`
/// in [0, 1]; a perfect frame counts as 100 dB, so that means stay finite.
fn frame_psnr(truth: &[f32], decoded: &[f32], frames: usize) -> Vec<f64> {
    let n = truth.len() / frames.max(1);
    (0..frames)
        .map(|t| psnr(&truth[t * n..(t + 1) * n], &decoded[t * n..(t + 1) * n]).min(100.0))
        .collect()
}

/// One video of `caption`: `(F, H, W, 3)` pixels and their sizes.
fn generate(
    pipeline: &mut dyn VideoPipeline,
    args: &EvalArgs,
    spec: &WorldSpec,
    caption: &str,
    seed: u64,
) -> Result<(Vec<f32>, (usize, usize, usize))> {
    let request = GenerateRequest {
        prompt: caption.to_string(),
        num_frames: Some(spec.num_frames),
        height: Some(spec.height),
        width: Some(spec.width),
        fps: Some(spec.fps),
        num_inference_steps: args.steps,
        guidance_scale: args.guidance,
        seed,
        step_cache: args.step_cache,
        ..GenerateRequest::default()
    };
    let generated = pipeline
        .generate(&request, &mut |_| {})
        .with_context(|| format!("generating `{caption}`"))?;
    let (f, h, w, _) = generated.frames.dims4()?;
    let data = generated.frames.flatten_all()?.to_vec1::<f32>()?;
    Ok((data, (f, h, w)))
}

/// `(scene, clips scored for direction, of them right)` for each scene that had any, in
/// [`MIXTURE`]'s order: where a model's motion goes wrong.
fn direction_by_scene(
    scenes: &[SceneKind],
    scores: &[ClipScore],
) -> Vec<(SceneKind, usize, usize)> {
    MIXTURE
        .iter()
        .map(|&(kind, _)| {
            let verdicts: Vec<bool> = scenes
                .iter()
                .zip(scores)
                .filter(|(scene, _)| **scene == kind)
                .filter_map(|(_, score)| score.direction)
                .collect();
            let right = verdicts.iter().filter(|v| **v).count();
            (kind, verdicts.len(), right)
        })
        .filter(|(_, n, _)| *n > 0)
        .collect()
}

fn print_table(mode: &str, s: &Summary, seconds_per_clip: f64) {
    let pct = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{:.1}%", 100.0 * v));
    println!(
        "{:<13} {:>5} {:>7} {:>7} {:>10} {:>11} {:>11} {:>12} {:>8}",
        "mode",
        "clips",
        "colour",
        "shape",
        "direction",
        "trajectory",
        "permanence",
        "consistency",
        "s/clip"
    );
    println!(
        "{:<13} {:>5} {:>7} {:>7} {:>10} {:>11} {:>11} {:>12} {:>8.3}",
        mode,
        s.count,
        pct(Some(s.colour_accuracy)),
        pct(Some(s.shape_accuracy)),
        pct(s.direction_accuracy),
        s.trajectory_error
            .map_or("-".to_string(), |e| format!("{e:.4}")),
        pct(s.permanence_rate),
        pct(Some(s.consistency)),
        seconds_per_clip
    );
}
