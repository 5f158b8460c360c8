//! Parity of the LTX-Video VAE with diffusers 0.42.1 (`AutoencoderKLLTXVideo`) on the tiny random
//! model of `tests/fixtures/ltx/` (made by `tools/fixtures/ltx.py`): a 0.9.5-style encoder (a
//! 0.9.0 block, then `spatial` and `temporal` 0.9.5 blocks), a timestep-conditioned decoder with
//! residual, channel-halving up-samplers, and `scaling_factor` 0.8.

use std::collections::HashMap;
use std::path::PathBuf;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use vidgen::families::ltx::vae::{AutoencoderKlLtxVideo, AutoencoderKlLtxVideoConfig};

mod common;
use common::max_abs_diff;

fn fixture_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/ltx")
}

fn load_vae(dtype: DType) -> AutoencoderKlLtxVideo {
    let dir = fixture_dir().join("pipeline/vae");
    let cfg = AutoencoderKlLtxVideoConfig::from_file(dir.join("config.json")).expect("config");
    let weights = dir.join("diffusion_pytorch_model.safetensors");
    let vb = unsafe { VarBuilder::from_mmaped_safetensors(&[weights], dtype, &Device::Cpu) }
        .expect("weights");
    AutoencoderKlLtxVideo::new(&cfg, vb).expect("model")
}

fn reference() -> HashMap<String, Tensor> {
    let path = fixture_dir().join("reference.safetensors");
    candle_core::safetensors::load(&path, &Device::Cpu).unwrap_or_else(|e| panic!("{path:?}: {e}"))
}

#[test]
fn encode_matches_diffusers() {
    let vae = load_vae(DType::F32);
    let r = reference();
    let dist = vae.encode(&r["vae.encode.input"]).unwrap();
    let dm = max_abs_diff(&dist.mean, &r["vae.encode.mean"]);
    let dl = max_abs_diff(&dist.logvar, &r["vae.encode.logvar"]);
    eprintln!("encode: mean {dm:.2e}, logvar {dl:.2e}");
    assert!(dm <= 1e-4 && dl <= 1e-4, "mean {dm}, logvar {dl}");
}

#[test]
fn decode_with_timesteps_matches_diffusers() {
    let vae = load_vae(DType::F32);
    let r = reference();
    let out = vae
        .decode(&r["vae.decode.input"], Some(&r["vae.decode.timestep"]))
        .unwrap();
    let d = max_abs_diff(&out, &r["vae.decode.output"]);
    eprintln!("decode: {d:.2e}");
    assert!(d <= 1e-4, "decode max abs diff {d}");
}

#[test]
fn pipeline_final_decode_matches_diffusers_frames() {
    // the pipeline's last stage: unpack, un-normalise, noise at scale 0, decode at
    // decode_timestep 0.05, then (x / 2 + 0.5) clamped to [0, 1]
    let vae = load_vae(DType::F32);
    let r = reference();
    let packed = &r["pipeline.final_latents"]; // (1, T h w, Z), grid (3, 2, 4)
    let z = vae.config().latent_channels;
    // b (t h w) z -> b z t h w
    let latents = packed
        .reshape((1, 3, 2, 4, z))
        .unwrap()
        .permute((0, 4, 1, 2, 3))
        .unwrap()
        .contiguous()
        .unwrap();
    let latents = vae.denormalize_latents(&latents).unwrap();
    let noise = Tensor::ones(latents.shape(), DType::F32, &Device::Cpu).unwrap();
    let latents = AutoencoderKlLtxVideo::add_decode_noise(&latents, &noise, &[0.0]).unwrap();
    let t = Tensor::new(&[0.05f32], &Device::Cpu).unwrap();
    let video = vae.decode(&latents, Some(&t)).unwrap(); // (1, 3, F, H, W)
                                                         // b c f h w -> (b f) h w c
    let frames = ((video / 2.0).unwrap() + 0.5)
        .unwrap()
        .clamp(0f32, 1f32)
        .unwrap()
        .squeeze(0)
        .unwrap()
        .permute((1, 2, 3, 0))
        .unwrap();
    let d = max_abs_diff(&frames, &r["pipeline.frames"]);
    eprintln!("pipeline frames: {d:.2e}");
    assert!(d <= 1e-4, "frames max abs diff {d}");
}

#[test]
fn normalize_inverts_denormalize_with_the_scaling_factor() {
    let vae = load_vae(DType::F32);
    assert_eq!(vae.config().scaling_factor, 0.8);
    let z = Tensor::ones((1, 8, 1, 1, 1), DType::F32, &Device::Cpu).unwrap();
    let x = vae.denormalize_latents(&z).unwrap();
    let back = vae.normalize_latents(&x).unwrap();
    assert!(max_abs_diff(&back, &z) < 1e-6);
    // channel 0: 1 * std / 0.8 + mean, with the fixture's buffers
    let x0 = x.flatten_all().unwrap().to_vec1::<f32>().unwrap()[0];
    let want = 1.2102f32 / 0.8 + 0.3647;
    assert!((x0 - want).abs() < 1e-5, "{x0} vs {want}");
}

#[test]
fn decode_noise_mixes_per_batch_element() {
    let latents = Tensor::ones((2, 1, 1, 1, 1), DType::F32, &Device::Cpu).unwrap();
    let noise = Tensor::full(3f32, (2, 1, 1, 1, 1), &Device::Cpu).unwrap();
    let mixed = AutoencoderKlLtxVideo::add_decode_noise(&latents, &noise, &[0.0, 0.25]).unwrap();
    assert_eq!(
        mixed.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
        vec![1.0, 1.5]
    );
}

#[test]
fn bad_shapes_are_errors_that_say_what_was_expected() {
    let vae = load_vae(DType::F32);
    // 4 channels instead of 3
    let video = Tensor::zeros((1, 4, 9, 32, 48), DType::F32, &Device::Cpu).unwrap();
    let err = vae.encode(&video).unwrap_err().to_string();
    assert!(err.contains("expected video (B, 3, F, H, W)"), "{err}");
    // width not a multiple of the patch size
    let video = Tensor::zeros((1, 3, 9, 32, 46), DType::F32, &Device::Cpu).unwrap();
    assert!(vae.encode(&video).is_err());
    // latents with the wrong channel count
    let z = Tensor::zeros((1, 4, 3, 2, 3), DType::F32, &Device::Cpu).unwrap();
    let t = Tensor::new(&[0.05f32], &Device::Cpu).unwrap();
    let err = vae.decode(&z, Some(&t)).unwrap_err().to_string();
    assert!(err.contains("expected latents (B, 8, T, h, w)"), "{err}");
    // a conditioned decoder without its timestep, or with one per wrong batch
    let z = Tensor::zeros((1, 8, 3, 2, 3), DType::F32, &Device::Cpu).unwrap();
    let err = vae.decode(&z, None).unwrap_err().to_string();
    assert!(err.contains("timestep"), "{err}");
    let t2 = Tensor::new(&[0.05f32, 0.1], &Device::Cpu).unwrap();
    assert!(vae.decode(&z, Some(&t2)).is_err());
}

#[test]
fn bf16_weights_stay_close_to_f32() {
    let vae = load_vae(DType::BF16);
    let r = reference();
    let z = r["vae.decode.input"].to_dtype(DType::BF16).unwrap();
    let t = r["vae.decode.timestep"].to_dtype(DType::BF16).unwrap();
    let out = vae.decode(&z, Some(&t)).unwrap();
    let d = max_abs_diff(&out, &r["vae.decode.output"]);
    eprintln!("decode bf16: {d:.2e}");
    assert!(d <= 0.1, "bf16 decode max abs diff {d}");
}
