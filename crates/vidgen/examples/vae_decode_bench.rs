//! Times the Wan VAE decoder (and, with `conv`, the conv3d strategies) on the CPU.
//!
//! `cargo run --release -p vidgen --example vae_decode_bench -- decode [frames height width]`
//! decodes a `(1, 16, T, H/8, W/8)` latent with the real Wan2.1 VAE sizes and random weights;
//! `... -- conv` compares ways of computing a causal 3x3x3 conv at decoder sizes (`Conv3d` is
//! vidgen's: Winograd on the CPU, or im2col + matmul with `VIDGEN_CONV=im2col`).
//! Run under `/usr/bin/time -v` for the peak RSS.

use std::time::Instant;

use candle_core::{DType, Device, Result, Shape, Tensor};
use candle_nn::var_builder::SimpleBackend;
use candle_nn::{Init, VarBuilder};
use vidgen::families::wan::vae::{AutoencoderKlWan, AutoencoderKlWanConfig};
use vidgen::nn::conv3d::Conv3d;

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("conv") => bench_convs(),
        _ => {
            let num = |i: usize, d: usize| args.get(i).and_then(|s| s.parse().ok()).unwrap_or(d);
            bench_decode(num(1, 17), num(2, 256), num(3, 256))
        }
    }
}

/// Best of `n` runs of `f`, in seconds.
fn best_of(n: usize, mut f: impl FnMut() -> Result<Tensor>) -> Result<f64> {
    let mut best = f64::MAX;
    for _ in 0..n {
        let t0 = Instant::now();
        let y = f()?;
        drop(y);
        best = best.min(t0.elapsed().as_secs_f64());
    }
    Ok(best)
}

/// Conv strategies for one chunk: `t_out` output frames from `t_out + 2` input frames
/// (the two cached frames in front), `c` channels in and out, 3x3x3 kernel.
fn bench_convs() -> Result<()> {
    let dev = Device::Cpu;
    println!(
        "ms per chunk          | conv2d/tap | conv2d(3C) | Conv3d     | matmul only | GFLOP | GFLOP/s"
    );
    for &(c, h, t_out) in &[
        (384, 32, 1),
        (384, 64, 1),
        (384, 64, 2),
        (192, 128, 1),
        (192, 128, 4),
        (96, 256, 1),
        (96, 256, 4),
    ] {
        let w = h;
        let t_in = t_out + 2;
        let weight = (Tensor::randn(0f32, 1.0, (c, c, 3, 3, 3), &dev)? * 0.02)?;
        let bias = Tensor::zeros(c, DType::F32, &dev)?;
        let x = Tensor::randn(0f32, 1.0, (1, c, t_in, h, w), &dev)?;
        let gflop = 2.0 * (c * c * 27 * h * w * t_out) as f64 / 1e9;

        // (a) candle conv2d per temporal tap on the frames as a batch, summed
        let frames = x.squeeze(0)?.permute((1, 0, 2, 3))?.contiguous()?; // t c h w
        let taps: Vec<Tensor> = (0..3)
            .map(|dt| weight.narrow(2, dt, 1)?.squeeze(2)?.contiguous())
            .collect::<Result<_>>()?;
        let per_tap = best_of(3, || {
            let mut acc: Option<Tensor> = None;
            for (dt, k) in taps.iter().enumerate() {
                let y = frames.narrow(0, dt, t_out)?.conv2d(k, 1, 1, 1, 1)?;
                acc = Some(match acc {
                    Some(a) => (a + y)?,
                    None => y,
                });
            }
            acc.unwrap().broadcast_add(&bias.reshape((1, c, 1, 1))?)
        })?;

        // (b) candle conv2d with the three frames stacked as 3C input channels
        // (C_out, C_in, kt, kh, kw) -> (C_out, kt C_in, kh, kw)
        let k3 = weight
            .permute((0, 2, 1, 3, 4))?
            .contiguous()?
            .reshape((c, 3 * c, 3, 3))?;
        let stacked = best_of(3, || {
            let outs = (0..t_out)
                .map(|t| {
                    let xs = frames.narrow(0, t, 3)?.reshape((1, 3 * c, h, w))?;
                    xs.conv2d(&k3, 1, 1, 1, 1)
                })
                .collect::<Result<Vec<_>>>()?;
            Tensor::cat(&outs, 0)
        })?;

        // (c) vidgen's channels-last im2col + matmul (the layout the VAE keeps), interleaved
        //     with (d) the bare matmul of the same FLOPs, as a ceiling
        let conv = Conv3d::new(weight.clone(), Some(bias.clone()), (1, 1, 1), (0, 1, 1))?;
        let x_cl = x.permute((0, 2, 3, 4, 1))?.contiguous()?;
        let a = Tensor::randn(0f32, 1.0, (h * w, 27 * c), &dev)?;
        let bm = Tensor::randn(0f32, 1.0, (27 * c, c), &dev)?;
        let (mut mine, mut mm) = (f64::MAX, f64::MAX);
        for _ in 0..4 {
            mine = mine.min(best_of(1, || conv.forward_cl(&x_cl))?);
            mm = mm.min(best_of(1, || {
                let outs = (0..t_out)
                    .map(|_| a.matmul(&bm))
                    .collect::<Result<Vec<_>>>()?;
                Ok(outs.into_iter().next().unwrap())
            })?);
        }
        println!(
            "C={c:3} {h:3}x{w:<3} T_out={t_out} | {:10.1} | {:10.1} | {:10.1} | {:11.1} | {gflop:5.1} | {:.0}",
            per_tap * 1e3,
            stacked * 1e3,
            mine * 1e3,
            mm * 1e3,
            gflop / mine,
        );
    }
    Ok(())
}

/// Decodes a random latent with the real Wan2.1 VAE sizes and random weights.
fn bench_decode(frames: usize, height: usize, width: usize) -> Result<()> {
    let dev = Device::Cpu;
    let cfg = AutoencoderKlWanConfig::default(); // Wan2.1: base_dim 96, z_dim 16, [1, 2, 4, 4]
    let vb = VarBuilder::from_backend(Box::new(RandomWeights), DType::F32, dev.clone());
    let vae = AutoencoderKlWan::new(&cfg, vb)?;
    eprintln!("model built, RSS {:.2} GB", rss_gb());
    let t = (frames - 1) / 4 + 1;
    let z = Tensor::randn(0f32, 1.0, (1, cfg.z_dim, t, height / 8, width / 8), &dev)?;
    let t0 = Instant::now();
    let video = vae.decode_with_progress(&z, &mut |i, n| {
        eprintln!(
            "latent frame {i}/{n} at {:.1} s, RSS {:.2} GB",
            t0.elapsed().as_secs_f64(),
            rss_gb()
        )
    })?;
    let secs = t0.elapsed().as_secs_f64();
    println!(
        "decode {:?} -> {:?}: {secs:.2} s ({} threads)",
        z.dims(),
        video.dims(),
        rayon::current_num_threads()
    );
    Ok(())
}

/// Current resident set size in GB (Linux), for progress lines.
fn rss_gb() -> f64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: f64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0.0);
    pages * 4096.0 / 1e9
}

/// Weights made up on request: fan-in scaled normal weights, small biases, unit norm gains.
struct RandomWeights;

impl SimpleBackend for RandomWeights {
    fn get(&self, s: Shape, name: &str, _: Init, dtype: DType, dev: &Device) -> Result<Tensor> {
        let value = if name.ends_with("gamma") {
            Tensor::ones(&s, DType::F32, dev)?
        } else if name.ends_with("bias") {
            (Tensor::randn(0f32, 1.0, &s, dev)? * 0.01)?
        } else {
            let fan_in = s.elem_count() / s.dims()[0];
            (Tensor::randn(0f32, 1.0, &s, dev)? / (fan_in as f64).sqrt())?
        };
        value.to_dtype(dtype)
    }

    fn get_unchecked(&self, name: &str, _: DType, _: &Device) -> Result<Tensor> {
        candle_core::bail!("random weights need a shape for {name}")
    }

    fn contains_tensor(&self, _: &str) -> bool {
        true
    }
}
