//! Times one VAE / DiT training step's forward and backward on random tiny-world weights.
//! `cargo run --release --example train_profile -- MODEL_DIR`
use candle_core::{DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use std::time::Instant;
use vidgen::families::wan::vae::{AutoencoderKlWan, AutoencoderKlWanConfig};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = std::path::PathBuf::from(std::env::args().nth(1).expect("model dir"));
    let cfg = AutoencoderKlWanConfig::from_file(dir.join("vae/config.json"))?;
    let dev = Device::Cpu;
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, &dev);
    let vae = AutoencoderKlWan::new(&cfg, vb)?;
    for (b, f, h, w) in [
        (4, 5, 32, 32),
        (4, 5, 64, 64),
        (4, 9, 64, 64),
        (1, 17, 64, 64),
    ] {
        let x = Tensor::randn(0f32, 0.5, (b, 3, f, h, w), &dev)?;
        let t = Instant::now();
        let post = vae.encode(&x)?;
        let t_enc = t.elapsed().as_secs_f64();
        let t = Instant::now();
        let y = vae.decode(&post.mean)?;
        let t_dec = t.elapsed().as_secs_f64();
        let loss = y.sqr()?.mean_all()?;
        let t = Instant::now();
        let _g = loss.backward()?;
        let t_bwd = t.elapsed().as_secs_f64();
        println!("{b}x{f}x{h}x{w}: encode {t_enc:.2}s decode {t_dec:.2}s backward {t_bwd:.2}s");
    }
    let tcfg: vidgen::families::wan::config::WanTransformerConfig = serde_json::from_str(
        &std::fs::read_to_string(dir.join("transformer/config.json"))?,
    )?;
    let varmap = VarMap::new();
    let vb = VarBuilder::from_varmap(&varmap, DType::F32, &dev);
    let dit = vidgen::families::wan::transformer::WanTransformer3D::new(&tcfg, vb)?;
    for (b, t, h, w) in [(8, 5, 16, 16), (8, 3, 12, 20)] {
        let x = Tensor::randn(0f32, 1., (b, tcfg.in_channels, t, h, w), &dev)?;
        let ts = Tensor::new(vec![500f32; b], &dev)?;
        let text = Tensor::randn(0f32, 1., (b, 32, tcfg.text_dim), &dev)?;
        let t0 = Instant::now();
        let y = dit.forward(&x, &ts, &text)?;
        let t_fwd = t0.elapsed().as_secs_f64();
        let loss = y.sqr()?.mean_all()?;
        let t0 = Instant::now();
        let _g = loss.backward()?;
        let t_bwd = t0.elapsed().as_secs_f64();
        println!("dit {b}x{t}x{h}x{w}: forward {t_fwd:.2}s backward {t_bwd:.2}s");
    }
    // encode cost of one world clip
    let x = Tensor::randn(0f32, 0.5, (1, 3, 17, 64, 64), &dev)?;
    let t0 = Instant::now();
    let frozen = AutoencoderKlWan::new(&cfg, VarBuilder::zeros(DType::F32, &dev))?;
    let _ = frozen.encode(&x)?;
    println!(
        "inference encode 1x17x64x64: {:.3}s",
        t0.elapsed().as_secs_f64()
    );
    Ok(())
}
