//! Parity of the CogVideoX VAE with diffusers 0.42.1 (`AutoencoderKLCogVideoX`) on the tiny
//! random models of `tests/fixtures/cogvideox/{2b,5b}/` (made by `tools/fixtures/cogvideox.py`):
//! encode of 17 frames (chunks of 9 and 8 frames with the conv cache), decode of 7 latent frames
//! (chunks of 3, 2, 2), and the pipeline's last step, `decode(final_latents / scaling_factor)`.

use std::collections::HashMap;
use std::path::PathBuf;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use vidgen::families::cogvideox::vae::{
    AutoencoderKlCogVideoX, AutoencoderKlCogVideoXConfig, TilingConfig,
};

mod common;
use common::max_abs_diff;

fn fixture_dir(variant: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures/cogvideox")
        .join(variant)
}

fn load_vae(variant: &str, dtype: DType) -> AutoencoderKlCogVideoX {
    let dir = fixture_dir(variant).join("pipeline/vae");
    let cfg = AutoencoderKlCogVideoXConfig::from_file(dir.join("config.json")).expect("config");
    let weights = dir.join("diffusion_pytorch_model.safetensors");
    let vb = unsafe { VarBuilder::from_mmaped_safetensors(&[weights], dtype, &Device::Cpu) }
        .expect("weights");
    AutoencoderKlCogVideoX::new(&cfg, vb).expect("model")
}

fn reference(variant: &str) -> HashMap<String, Tensor> {
    let path = fixture_dir(variant).join("reference.safetensors");
    candle_core::safetensors::load(&path, &Device::Cpu).unwrap_or_else(|e| panic!("{path:?}: {e}"))
}

#[test]
fn encode_matches_diffusers() {
    let vae = load_vae("2b", DType::F32);
    let r = reference("2b");
    let video = &r["vae.encode.input"];
    assert_eq!(
        video.dim(2).unwrap(),
        17,
        "the fixture should span two encoder chunks"
    );
    let dist = vae.encode(video).unwrap();
    let dm = max_abs_diff(&dist.mean, &r["vae.encode.mean"]);
    let dl = max_abs_diff(&dist.logvar, &r["vae.encode.logvar"]);
    eprintln!("encode: mean {dm:.2e}, logvar {dl:.2e}");
    assert!(dm <= 1e-4 && dl <= 1e-4, "mean {dm}, logvar {dl}");
}

#[test]
fn decode_matches_diffusers() {
    let vae = load_vae("2b", DType::F32);
    let r = reference("2b");
    let z = &r["vae.decode.input"];
    let mut calls = Vec::new();
    let out = vae
        .decode_with_progress(z, &mut |i, n| calls.push((i, n)))
        .unwrap();
    let d = max_abs_diff(&out, &r["vae.decode.output"]);
    eprintln!("decode: {d:.2e}");
    assert!(d <= 1e-4, "decode max abs diff {d}");
    // three chunks: latent frames (0, 1, 2), (3, 4), (5, 6)
    assert_eq!(calls, [(3, 7), (5, 7), (7, 7)]);
}

#[test]
fn chunked_decode_differs_from_one_chunk() {
    // guards the chunking itself: per-chunk group norms give a different video than one pass
    let vae = load_vae("2b", DType::F32);
    let r = reference("2b");
    let z = &r["vae.decode.input"];
    let (first, rest) = (z.narrow(2, 0, 3).unwrap(), z.narrow(2, 3, 4).unwrap());
    let out = vae.decode(z).unwrap();
    let head = vae.decode(&first).unwrap();
    assert!(max_abs_diff(&out.narrow(2, 0, 9).unwrap(), &head) <= 1e-6);
    let tail_alone = vae.decode(&rest).unwrap();
    assert!(max_abs_diff(&out.narrow(2, 9, 16).unwrap(), &tail_alone) > 1e-3);
}

#[test]
fn batch_elements_are_decoded_independently() {
    let vae = load_vae("2b", DType::F32);
    let r = reference("2b");
    let z = &r["vae.decode.input"].narrow(2, 0, 4).unwrap();
    let other = (z * -0.5).unwrap();
    let both = vae.decode(&Tensor::cat(&[z, &other], 0).unwrap()).unwrap();
    let one = vae.decode(z).unwrap();
    assert!(max_abs_diff(&both.narrow(0, 0, 1).unwrap(), &one) <= 1e-5);
    let two = vae.decode(&other).unwrap();
    assert!(max_abs_diff(&both.narrow(0, 1, 1).unwrap(), &two) <= 1e-5);
}

#[test]
fn pipeline_decode_of_final_latents_matches_diffusers() {
    for variant in ["2b", "5b"] {
        let vae = load_vae(variant, DType::F32);
        let r = reference(variant);
        // (B, T, Z, h, w) -> (B, Z, T, h, w), divided by scaling_factor
        let z = vae
            .latents_for_decode(&r["pipeline.final_latents"])
            .unwrap();
        let video = vae.decode(&z).unwrap(); // (1, 3, F, H, W)
        let frames = ((video * 0.5).unwrap() + 0.5)
            .unwrap()
            .clamp(0f32, 1f32)
            .unwrap()
            .squeeze(0)
            .unwrap()
            .permute((1, 2, 3, 0))
            .unwrap();
        let d = max_abs_diff(&frames, &r["pipeline.frames"]);
        eprintln!("{variant}: frames {d:.2e}");
        assert!(d <= 1e-4, "{variant}: frames max abs diff {d}");
    }
}

#[test]
fn unscale_is_the_pipelines_formula() {
    let vae = load_vae("5b", DType::F32);
    assert_eq!(vae.config().scaling_factor, 0.7);
    let x = Tensor::new(&[1.4f32, -0.7], &Device::Cpu).unwrap();
    let y = vae.unscale_latents(&x).unwrap().to_vec1::<f32>().unwrap();
    assert_eq!(
        y,
        [
            1.4f32 * (1.0 / 0.7f64) as f32,
            -0.7f32 * (1.0 / 0.7f64) as f32
        ]
    );
    let back = vae
        .scale_latents(&vae.unscale_latents(&x).unwrap())
        .unwrap();
    assert!(max_abs_diff(&back, &x) <= 1e-6);
}

#[test]
fn bad_shapes_name_the_expected_shape() {
    let vae = load_vae("2b", DType::F32);
    let video = Tensor::zeros((1, 3, 9, 30, 48), DType::F32, &Device::Cpu).unwrap();
    let err = vae.encode(&video).unwrap_err().to_string();
    assert!(
        err.contains("(B, 3, F, H, W)") && err.contains("multiples of 8"),
        "{err}"
    );
    let video = Tensor::zeros((1, 4, 9, 32, 48), DType::F32, &Device::Cpu).unwrap();
    assert!(vae.encode(&video).is_err());
    let z = Tensor::zeros((1, 3, 2, 4, 6), DType::F32, &Device::Cpu).unwrap();
    let err = vae.decode(&z).unwrap_err().to_string();
    assert!(err.contains("(B, 8, T, h, w)"), "{err}");
    let z = Tensor::zeros((8, 2, 4, 6), DType::F32, &Device::Cpu).unwrap();
    assert!(vae.decode(&z).is_err());
}

#[test]
fn bf16_weights_stay_close_to_f32() {
    let vae = load_vae("2b", DType::BF16);
    let r = reference("2b");
    let z = r["vae.decode.input"].to_dtype(DType::BF16).unwrap();
    let out = vae.decode(&z).unwrap();
    assert_eq!(out.dtype(), DType::BF16);
    let want = &r["vae.decode.output"];
    let scale = want
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    let d = max_abs_diff(&out, want);
    eprintln!("decode bf16: {d:.2e} (outputs up to {scale:.2})");
    assert!(d <= 0.05 * scale.max(1.0), "bf16 decode max abs diff {d}");
}

#[test]
fn tiled_decode_and_encode_match_diffusers() {
    // tests/fixtures/cogvideox_vae_tiling/, made by tools/fixtures/cogvideox_vae_tiling.py
    let dir =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/cogvideox_vae_tiling");
    let cfg = AutoencoderKlCogVideoXConfig::from_file(dir.join("config.json")).unwrap();
    let weights = dir.join("diffusion_pytorch_model.safetensors");
    let vb = unsafe { VarBuilder::from_mmaped_safetensors(&[weights], DType::F32, &Device::Cpu) }
        .unwrap();
    let mut vae = AutoencoderKlCogVideoX::new(&cfg, vb).unwrap();
    let r =
        candle_core::safetensors::load(dir.join("reference.safetensors"), &Device::Cpu).unwrap();
    let t = r["tiling"].to_vec1::<f64>().unwrap();
    vae.set_tiling(Some(TilingConfig {
        tile_sample_min_height: t[0] as usize,
        tile_sample_min_width: t[1] as usize,
        tile_overlap_factor_height: t[2],
        tile_overlap_factor_width: t[3],
    }));
    let out = vae.decode(&r["decode.input"]).unwrap();
    let d = max_abs_diff(&out, &r["decode.output"]);
    let dist = vae.encode(&r["decode.output"]).unwrap();
    let dm = max_abs_diff(&dist.mean, &r["encode.mean"]);
    let dl = max_abs_diff(&dist.logvar, &r["encode.logvar"]);
    eprintln!("tiled: decode {d:.2e}, encode mean {dm:.2e}, logvar {dl:.2e}");
    assert!(
        d <= 1e-4 && dm <= 1e-4 && dl <= 1e-4,
        "decode {d}, mean {dm}, logvar {dl}"
    );
    // the untiled result differs at the seams, so the test does exercise tiling
    vae.set_tiling(None);
    assert!(max_abs_diff(&vae.decode(&r["decode.input"]).unwrap(), &out) > 1e-3);
}

#[test]
fn default_tiling_is_the_references() {
    let cfg = AutoencoderKlCogVideoXConfig::default();
    let t = TilingConfig::for_config(&cfg);
    assert_eq!(
        (t.tile_sample_min_height, t.tile_sample_min_width),
        (240, 360)
    );
    assert_eq!(
        (t.tile_overlap_factor_height, t.tile_overlap_factor_width),
        (1.0 / 6.0, 0.2)
    );
}
