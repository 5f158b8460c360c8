//! `vidgen generate` on the tiny CogVideoX fixtures of `tools/fixtures/cogvideox.py`: parity
//! with diffusers' `CogVideoXPipeline` through `--latents` (laid out `(1, T, C, H, W)`, frames
//! before channels) and `--save-frames`, and sizes the model cannot take.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use candle_core::{Device, Tensor};

mod common;
use common::saved_frames_error;

fn fixture(variant: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures/cogvideox")
        .join(variant)
}

fn vidgen(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_vidgen"))
        .args(args)
        .output()
        .expect("run vidgen")
}

fn reference(variant: &str) -> std::collections::HashMap<String, Tensor> {
    candle_core::safetensors::load(fixture(variant).join("reference.safetensors"), &Device::Cpu)
        .unwrap()
}

fn save_latents(path: &Path, latents: &Tensor) {
    candle_core::safetensors::save(
        &[("latents".to_string(), latents.clone())]
            .into_iter()
            .collect(),
        path,
    )
    .unwrap();
}

fn cli_parity(variant: &str) {
    let tmp = tempfile::tempdir().unwrap();
    let refs = reference(variant);
    let latents = tmp.path().join("latents.safetensors");
    save_latents(&latents, &refs["pipeline.latents"]);
    let frames = tmp.path().join("frames.safetensors");
    let out = tmp.path().join("out.mp4");
    let model = fixture(variant).join("pipeline");
    let o = vidgen(&[
        "generate",
        "A red ball and a blue box bounce slowly",
        "--negative-prompt",
        "blurry, static",
        "--model",
        model.to_str().unwrap(),
        "--latents",
        latents.to_str().unwrap(),
        "--steps",
        "3",
        "--guidance",
        "6",
        "--max-sequence-length",
        "16",
        "--save-frames",
        frames.to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(out.is_file());
    let err = saved_frames_error(&frames, &refs["pipeline.frames"]);
    println!("{variant}: frames max abs error {err:e}");
    assert!(err <= 2e-3, "{variant}: frames max abs error {err}");
}

#[test]
fn cogvideox_2b_matches_diffusers_through_the_cli() {
    cli_parity("2b");
}

#[test]
fn cogvideox_5b_matches_diffusers_through_the_cli() {
    cli_parity("5b");
}

#[test]
fn sizes_cogvideox_cannot_take_are_refused_with_what_is_accepted() {
    let model = fixture("2b").join("pipeline");
    for (extra, expected) in [
        (&["--height", "40"][..], "multiples of 16"),
        (&["--frames", "12"][..], "4k+1"),
        (&["--max-sequence-length", "226"][..], "must be 16"),
    ] {
        let tmp = tempfile::tempdir().unwrap();
        let out = tmp.path().join("o.mp4");
        let mut args = vec!["generate", "a ball", "--model", model.to_str().unwrap()];
        args.extend_from_slice(extra);
        args.extend_from_slice(&["--steps", "1", "-o", out.to_str().unwrap()]);
        let o = vidgen(&args);
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success(), "expected failure for {extra:?}");
        assert!(err.contains(expected), "{extra:?}: {err}");
        assert!(!out.exists());
    }
}

#[test]
fn wan_layout_latents_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let latents = tmp.path().join("l.safetensors");
    // (1, C, T, H, W) instead of (1, T, C, H, W)
    save_latents(
        &latents,
        &Tensor::zeros((1, 8, 4, 4, 6), candle_core::DType::F32, &Device::Cpu).unwrap(),
    );
    let model = fixture("2b").join("pipeline");
    let out = tmp.path().join("o.mp4");
    let o = vidgen(&[
        "generate",
        "a ball",
        "--model",
        model.to_str().unwrap(),
        "--latents",
        latents.to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
    ]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(err.contains("(1, T, 8, H, W)"), "{err}");
    assert!(!out.exists());
}
