//! `vidgen bench`: times the parts a user waits for, at real model sizes with random weights.
//! Prints one JSON object per part on stdout.

use std::time::Instant;

use anyhow::{bail, Result};
use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use clap::Args;
use vidgen::families::wan::init::{detached, random_weights};
use vidgen::families::wan::presets;
use vidgen::families::wan::transformer::WanTransformer3D;
use vidgen::families::wan::vae::AutoencoderKlWan;
use vidgen::noise::NoiseRng;

#[derive(Args)]
pub struct BenchArgs {
    /// Model size preset (see `vidgen init --list`).
    #[arg(long, default_value = "wan2.1-1.3b")]
    pub preset: String,
    /// Override the transformer depth, for quicker runs.
    #[arg(long)]
    pub layers: Option<usize>,
    /// Comma-separated parts: dit, dit-cfg (prompt and negative prompt as one batch of 2), vae-decode.
    #[arg(long, default_value = "dit,vae-decode")]
    pub parts: String,
    #[arg(long, default_value_t = 17)]
    pub frames: usize,
    #[arg(long, default_value_t = 256)]
    pub height: usize,
    #[arg(long, default_value_t = 256)]
    pub width: usize,
    /// Text tokens of the cross-attention.
    #[arg(long, default_value_t = 512)]
    pub text_len: usize,
    /// f32 or bf16.
    #[arg(long, default_value = "f32")]
    pub dtype: String,
    /// Timed runs per part after one warm-up; the median is reported.
    #[arg(long, default_value_t = 1)]
    pub repeats: usize,
    /// Worker threads (default: all cores, or RAYON_NUM_THREADS).
    #[arg(long)]
    pub threads: Option<usize>,
}

fn peak_rss_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

/// Median seconds of `repeats` runs after one warm-up.
fn time(repeats: usize, mut f: impl FnMut() -> Result<()>) -> Result<f64> {
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

/// GFLOP/s of a large f32 matmul, the peak the parts are compared with.
fn matmul_peak(dtype: DType) -> Result<f64> {
    let n = 1024;
    let a = Tensor::randn(0f32, 1., (n, n), &Device::Cpu)?.to_dtype(dtype)?;
    let b = Tensor::randn(0f32, 1., (n, n), &Device::Cpu)?.to_dtype(dtype)?;
    let secs = time(3, || {
        a.matmul(&b)?;
        Ok(())
    })?;
    Ok(2.0 * (n * n * n) as f64 / secs / 1e9)
}

/// FLOPs of one transformer forward: matmuls and attention only.
fn dit_flops(
    cfg: &vidgen::families::wan::config::WanTransformerConfig,
    batch: usize,
    n: usize,
    l: usize,
) -> f64 {
    let (d, f) = (cfg.inner_dim() as f64, cfg.ffn_dim as f64);
    let (n, l) = (n as f64, l as f64);
    let per_layer = 2.0 * (4.0 * n * d * d) // self-attention projections
        + 2.0 * 2.0 * n * n * d // scores and weighted sum
        + 2.0 * (2.0 * n * d * d + 2.0 * l * d * d) // cross-attention projections
        + 2.0 * 2.0 * n * l * d
        + 2.0 * 2.0 * n * d * f; // MLP
    batch as f64 * per_layer * cfg.num_layers as f64
}

pub fn run(args: BenchArgs) -> Result<()> {
    if let Some(n) = args.threads {
        // Read by candle's kernels and rayon's pool, which start after this.
        std::env::set_var("RAYON_NUM_THREADS", n.to_string());
    }
    let dtype = match args.dtype.as_str() {
        "f32" => DType::F32,
        "bf16" => DType::BF16,
        other => bail!("unknown --dtype `{other}`; use f32 or bf16"),
    };
    let mut preset = presets::preset(&args.preset)?;
    if let Some(layers) = args.layers {
        preset.transformer.num_layers = layers;
    }
    if !(args.frames - 1).is_multiple_of(4)
        || !args.height.is_multiple_of(16)
        || !args.width.is_multiple_of(16)
    {
        bail!("--frames must be 4k+1 and --height/--width multiples of 16");
    }
    let peak = matmul_peak(dtype)?;
    let device = Device::Cpu;
    let (t, h, w) = ((args.frames - 1) / 4 + 1, args.height / 8, args.width / 8);
    let mut rng = NoiseRng::new(0);
    for part in args.parts.split(',').map(str::trim) {
        match part {
            "dit" | "dit-cfg" => {
                let batch = if part == "dit" { 1 } else { 2 };
                let cfg = preset.transformer.clone();
                let map = random_weights(&mut rng, dtype, |vb| {
                    WanTransformer3D::new(&cfg, vb).map(|_| ())
                })?;
                let vb = VarBuilder::from_tensors(detached(&map), dtype, &device);
                let model = WanTransformer3D::new(&cfg, vb)?;
                let x = vidgen::noise::randn(1, (batch, cfg.in_channels, t, h, w), &device)?;
                let text = vidgen::noise::randn(2, (batch, args.text_len, cfg.text_dim), &device)?;
                let ts = Tensor::full(500f32, batch, &device)?;
                let secs = time(args.repeats, || {
                    model.forward(&x, &ts, &text)?;
                    Ok(())
                })?;
                let flops = dit_flops(&cfg, batch, model.num_tokens((t, h, w)), args.text_len);
                report(part, secs, flops, peak, &args, cfg.num_layers);
            }
            "vae-decode" => {
                let cfg = preset.vae.clone();
                let map = random_weights(&mut rng, dtype, |vb| {
                    AutoencoderKlWan::new(&cfg, vb).map(|_| ())
                })?;
                let vb = VarBuilder::from_tensors(detached(&map), dtype, &device);
                let vae = AutoencoderKlWan::new(&cfg, vb)?;
                let z =
                    vidgen::noise::randn(3, (1, cfg.z_dim, t, h, w), &device)?.to_dtype(dtype)?;
                let secs = time(args.repeats, || {
                    vae.decode(&z)?;
                    Ok(())
                })?;
                report(part, secs, f64::NAN, peak, &args, 0);
            }
            other => bail!("unknown part `{other}`; use dit, dit-cfg or vae-decode"),
        }
    }
    Ok(())
}

fn report(part: &str, seconds: f64, flops: f64, peak_gflops: f64, args: &BenchArgs, layers: usize) {
    let gflops = flops / seconds / 1e9;
    let value = serde_json::json!({
        "part": part,
        "seconds": seconds,
        "peak_rss_bytes": peak_rss_bytes(),
        "gflops": if gflops.is_finite() { Some(gflops) } else { None },
        "peak_fraction": if gflops.is_finite() { Some(gflops / peak_gflops) } else { None },
        "matmul_peak_gflops": peak_gflops,
        "preset": args.preset, "layers": layers, "dtype": args.dtype,
        "frames": args.frames, "height": args.height, "width": args.width, "text_len": args.text_len,
        "threads": candle_core::utils::get_num_threads(),
    });
    println!("{value}");
}
