//! Parity of the Wan VAE with diffusers 0.42.1 (`AutoencoderKLWan`) on the tiny random model of
//! `tests/fixtures/wan/` (made by `tools/fixtures/wan.py`), and of its tiled mode on
//! `tests/fixtures/wan_vae_tiling/` (made by `tools/fixtures/wan_vae_tiling.py`).

use std::collections::HashMap;
use std::path::PathBuf;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use vidgen::families::wan::vae::{AutoencoderKlWan, AutoencoderKlWanConfig, TilingConfig};

mod common;
use common::max_abs_diff;

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures")
}

fn load_vae(dir: PathBuf, dtype: DType) -> AutoencoderKlWan {
    let cfg = AutoencoderKlWanConfig::from_file(dir.join("config.json")).expect("config");
    let weights = dir.join("diffusion_pytorch_model.safetensors");
    let vb = unsafe { VarBuilder::from_mmaped_safetensors(&[weights], dtype, &Device::Cpu) }
        .expect("weights");
    AutoencoderKlWan::new(&cfg, vb).expect("model")
}

fn reference(path: PathBuf) -> HashMap<String, Tensor> {
    candle_core::safetensors::load(&path, &Device::Cpu).unwrap_or_else(|e| panic!("{path:?}: {e}"))
}

#[test]
fn encode_matches_diffusers() {
    let vae = load_vae(fixtures().join("wan/pipeline/vae"), DType::F32);
    let r = reference(fixtures().join("wan/reference.safetensors"));
    let dist = vae.encode(&r["vae.encode.input"]).unwrap();
    let (dm, dl) = (
        max_abs_diff(&dist.mean, &r["vae.encode.mean"]),
        max_abs_diff(&dist.logvar, &r["vae.encode.logvar"]),
    );
    eprintln!("encode: mean {dm:.2e}, logvar {dl:.2e}");
    assert!(dm <= 1e-4 && dl <= 1e-4, "mean {dm}, logvar {dl}");
}

#[test]
fn decode_matches_diffusers() {
    let vae = load_vae(fixtures().join("wan/pipeline/vae"), DType::F32);
    let r = reference(fixtures().join("wan/reference.safetensors"));
    let z = &r["vae.decode.input"];
    let mut calls = Vec::new();
    let out = vae
        .decode_with_progress(z, &mut |i, n| calls.push((i, n)))
        .unwrap();
    let d = max_abs_diff(&out, &r["vae.decode.output"]);
    eprintln!("decode: {d:.2e}");
    assert!(d <= 1e-4, "decode max abs diff {d}");
    let t = z.dim(2).unwrap();
    assert_eq!(calls, (1..=t).map(|i| (i, t)).collect::<Vec<_>>());
}

#[test]
fn bf16_weights_stay_close_to_f32() {
    let vae = load_vae(fixtures().join("wan/pipeline/vae"), DType::BF16);
    let r = reference(fixtures().join("wan/reference.safetensors"));
    let out = vae
        .decode(&r["vae.decode.input"].to_dtype(DType::BF16).unwrap())
        .unwrap();
    assert_eq!(out.dtype(), DType::BF16);
    let d = max_abs_diff(&out, &r["vae.decode.output"]);
    eprintln!("decode bf16: {d:.2e}");
    // diffusers' own bf16 decode of this fixture is 0.127 away from its f32 one
    assert!(d <= 0.15, "bf16 decode max abs diff {d}");
    let dist = vae
        .encode(&r["vae.encode.input"].to_dtype(DType::BF16).unwrap())
        .unwrap();
    assert_eq!(dist.mean.dtype(), DType::BF16);
    let dm = max_abs_diff(&dist.mean, &r["vae.encode.mean"]);
    eprintln!("encode bf16: mean {dm:.2e}");
    assert!(dm <= 0.15, "bf16 encode mean max abs diff {dm}");
}

#[test]
fn bad_shapes_name_the_expected_shape() {
    let vae = load_vae(fixtures().join("wan/pipeline/vae"), DType::F32);
    let video = Tensor::zeros((1, 3, 8, 32, 48), DType::F32, &Device::Cpu).unwrap();
    let err = vae.encode(&video).unwrap_err().to_string();
    assert!(
        err.contains("(B, 3, F, H, W)") && err.contains("F = 1 + 4k"),
        "{err}"
    );
    let video = Tensor::zeros((1, 3, 5, 30, 48), DType::F32, &Device::Cpu).unwrap();
    assert!(vae
        .encode(&video)
        .unwrap_err()
        .to_string()
        .contains("multiples of 8"));
    let z = Tensor::zeros((1, 4, 2, 4, 6), DType::F32, &Device::Cpu).unwrap();
    let err = vae.decode(&z).unwrap_err().to_string();
    assert!(err.contains("(B, 8, T, h, w)"), "{err}");
}

#[test]
fn wan22_config_is_rejected() {
    let cfg: AutoencoderKlWanConfig =
        serde_json::from_str(r#"{"is_residual": true, "patch_size": 2, "z_dim": 48}"#).unwrap();
    let err = cfg.check().unwrap_err().to_string();
    assert!(err.contains("is_residual"), "{err}");
    let vb = VarBuilder::zeros(DType::F32, &Device::Cpu);
    assert!(AutoencoderKlWan::new(&cfg, vb).is_err());
}

#[test]
fn default_config_is_wan21() {
    let cfg = AutoencoderKlWanConfig::default();
    assert_eq!((cfg.base_dim, cfg.z_dim, cfg.num_res_blocks), (96, 16, 2));
    assert_eq!(cfg.dim_mult, [1, 2, 4, 4]);
    assert_eq!(cfg.latents_mean.len(), 16);
    assert_eq!(cfg.latents_std[15], 1.916);
}

#[test]
#[allow(clippy::needless_range_loop)] // indexes three parallel lists
fn denormalize_is_the_pipelines_formula() {
    let vae = load_vae(fixtures().join("wan/pipeline/vae"), DType::F32);
    let cfg = vae.config().clone();
    let z = Tensor::ones((1, 8, 1, 1, 1), DType::F32, &Device::Cpu).unwrap();
    let x = vae
        .denormalize_latents(&z)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1::<f32>()
        .unwrap();
    for (c, got) in x.iter().enumerate() {
        let want = 1.0 / (1.0 / cfg.latents_std[c] as f32) + cfg.latents_mean[c] as f32;
        assert!((got - want).abs() < 1e-6);
    }
    let back = vae
        .normalize_latents(&vae.denormalize_latents(&z).unwrap())
        .unwrap();
    assert!(max_abs_diff(&back, &z) < 1e-5);
}

#[test]
fn tiled_decode_and_encode_match_diffusers() {
    let dir = fixtures().join("wan_vae_tiling");
    let mut vae = load_vae(dir.clone(), DType::F32);
    let r = reference(dir.join("reference.safetensors"));
    let t = r["tiling"].to_vec1::<i64>().unwrap();
    vae.set_tiling(Some(TilingConfig {
        tile_sample_min_height: t[0] as usize,
        tile_sample_min_width: t[1] as usize,
        tile_sample_stride_height: t[2] as usize,
        tile_sample_stride_width: t[3] as usize,
    }));
    let out = vae.decode(&r["decode.input"]).unwrap();
    let d = max_abs_diff(&out, &r["decode.output"]);
    let dist = vae.encode(&r["decode.output"]).unwrap();
    let (dm, dl) = (
        max_abs_diff(&dist.mean, &r["encode.mean"]),
        max_abs_diff(&dist.logvar, &r["encode.logvar"]),
    );
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
fn batch_elements_are_decoded_independently() {
    let vae = load_vae(fixtures().join("wan/pipeline/vae"), DType::F32);
    let r = reference(fixtures().join("wan/reference.safetensors"));
    let z = &r["vae.decode.input"];
    let pair = Tensor::cat(&[z, &(z * 0.5).unwrap()], 0).unwrap();
    let out = vae.decode(&pair).unwrap();
    let d = max_abs_diff(&out.narrow(0, 0, 1).unwrap(), &r["vae.decode.output"]);
    assert!(
        d <= 1e-4,
        "batch element 0 differs from the single decode by {d}"
    );
    let half = vae.decode(&(z * 0.5).unwrap()).unwrap();
    assert!(max_abs_diff(&out.narrow(0, 1, 1).unwrap(), &half) <= 1e-5);
}

#[test]
fn a_decoder_only_vae_decodes_the_same_and_refuses_to_encode() {
    let dir = fixtures().join("wan/pipeline/vae");
    let full = load_vae(dir.clone(), DType::F32);
    let cfg = AutoencoderKlWanConfig::from_file(dir.join("config.json")).unwrap();
    let weights = vidgen::checkpoint::Weights::open(&dir, DType::F32, &Device::Cpu).unwrap();
    let decoder = AutoencoderKlWan::decoder_only(&cfg, weights.var_builder()).unwrap();
    assert!(full.has_encoder() && !decoder.has_encoder());
    // it read no encoder tensor
    assert!(weights
        .unused()
        .iter()
        .all(|n| AutoencoderKlWan::ENCODER_PREFIXES
            .iter()
            .any(|p| n.starts_with(p))));
    assert!(!weights.unused().is_empty());
    let r = reference(fixtures().join("wan/reference.safetensors"));
    let z = &r["vae.decode.input"];
    let d = max_abs_diff(&decoder.decode(z).unwrap(), &full.decode(z).unwrap());
    assert_eq!(d, 0.0);
    let err = decoder
        .encode(&r["vae.encode.input"])
        .unwrap_err()
        .to_string();
    assert!(err.contains("decoding only"), "{err}");
}
