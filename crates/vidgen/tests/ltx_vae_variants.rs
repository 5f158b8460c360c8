//! Parity of the LTX-Video VAE with diffusers 0.42.1 on the layouts `tests/fixtures/ltx` does not
//! reach (`tests/fixtures/ltx_vae/`, made by `tools/fixtures/ltx_vae.py`): the 0.9.0 layout with
//! channel-changing resnets, plain up-samplers and flipped causality (`v0_9_0`), and 0.9.5
//! `spatial` / `spatiotemporal` down-samplers (`v0_9_5`), spatial tiling (`v0_9_0`, `tiled.*`)
//! and temporal tiling (`v0_9_0`, `framewise.*`).
//! Neither decoder is timestep-conditioned.

use std::collections::HashMap;
use std::path::PathBuf;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use vidgen::families::ltx::vae::{
    AutoencoderKlLtxVideo, AutoencoderKlLtxVideoConfig, FramewiseConfig, TilingConfig,
};

mod common;
use common::max_abs_diff;

fn load(variant: &str) -> (AutoencoderKlLtxVideo, HashMap<String, Tensor>) {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures/ltx_vae")
        .join(variant);
    let cfg = AutoencoderKlLtxVideoConfig::from_file(dir.join("config.json")).expect("config");
    let weights = dir.join("diffusion_pytorch_model.safetensors");
    let vb = unsafe { VarBuilder::from_mmaped_safetensors(&[weights], DType::F32, &Device::Cpu) }
        .expect("weights");
    let vae = AutoencoderKlLtxVideo::new(&cfg, vb).expect("model");
    let reference = candle_core::safetensors::load(dir.join("reference.safetensors"), &Device::Cpu)
        .expect("reference.safetensors");
    (vae, reference)
}

fn check(variant: &str) {
    let (vae, r) = load(variant);
    let dist = vae.encode(&r["encode.input"]).unwrap();
    let dm = max_abs_diff(&dist.mean, &r["encode.mean"]);
    let dl = max_abs_diff(&dist.logvar, &r["encode.logvar"]);
    let out = vae.decode(&r["decode.input"], None).unwrap();
    let dd = max_abs_diff(&out, &r["decode.output"]);
    eprintln!("{variant}: encode mean {dm:.2e}, logvar {dl:.2e}; decode {dd:.2e}");
    assert!(
        dm <= 1e-4 && dl <= 1e-4 && dd <= 1e-4,
        "{variant}: {dm} {dl} {dd}"
    );
}

#[test]
fn ltx_0_9_0_layout_matches_diffusers() {
    check("v0_9_0");
}

#[test]
fn ltx_0_9_5_down_samplers_match_diffusers() {
    check("v0_9_5");
}

#[test]
fn tiled_decode_and_encode_match_diffusers() {
    let (mut vae, r) = load("v0_9_0");
    let t: Vec<i64> = r["tiled.tiling"].to_vec1().unwrap();
    let t: Vec<usize> = t.into_iter().map(|v| v as usize).collect();
    vae.set_tiling(Some(TilingConfig {
        tile_sample_min_height: t[0],
        tile_sample_min_width: t[1],
        tile_sample_stride_height: t[2],
        tile_sample_stride_width: t[3],
    }));
    let out = vae.decode(&r["tiled.decode.input"], None).unwrap();
    let dd = max_abs_diff(&out, &r["tiled.decode.output"]);
    let dist = vae.encode(&r["tiled.decode.output"]).unwrap();
    let dm = max_abs_diff(&dist.mean, &r["tiled.encode.mean"]);
    let dl = max_abs_diff(&dist.logvar, &r["tiled.encode.logvar"]);
    eprintln!("tiled: decode {dd:.2e}; encode mean {dm:.2e}, logvar {dl:.2e}");
    assert!(dm <= 1e-4 && dl <= 1e-4 && dd <= 1e-4, "{dm} {dl} {dd}");
    // without tiling the result differs: the test would notice tiling being skipped
    vae.set_tiling(None);
    let whole = vae.decode(&r["tiled.decode.input"], None).unwrap();
    assert!(max_abs_diff(&whole, &r["tiled.decode.output"]) > 1e-3);
}

#[test]
fn framewise_decode_and_encode_match_diffusers() {
    let (mut vae, r) = load("v0_9_0");
    let f: Vec<i64> = r["framewise.frames"].to_vec1().unwrap();
    vae.set_framewise(Some(FramewiseConfig {
        tile_sample_min_num_frames: f[0] as usize,
        tile_sample_stride_num_frames: f[1] as usize,
    }));
    let out = vae.decode(&r["framewise.decode.input"], None).unwrap();
    let dd = max_abs_diff(&out, &r["framewise.decode.output"]);
    let dist = vae.encode(&r["framewise.decode.output"]).unwrap();
    let dm = max_abs_diff(&dist.mean, &r["framewise.encode.mean"]);
    let dl = max_abs_diff(&dist.logvar, &r["framewise.encode.logvar"]);
    eprintln!("framewise: decode {dd:.2e}; encode mean {dm:.2e}, logvar {dl:.2e}");
    assert!(dm <= 1e-4 && dl <= 1e-4 && dd <= 1e-4, "{dm} {dl} {dd}");
    // the windows change the result: the test would notice them being skipped
    vae.set_framewise(None);
    let whole = vae.decode(&r["framewise.decode.input"], None).unwrap();
    assert!(max_abs_diff(&whole, &r["framewise.decode.output"]) > 1e-3);
}
