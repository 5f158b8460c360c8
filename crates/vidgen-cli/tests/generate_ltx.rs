//! End-to-end tests of `vidgen generate` on an LTX-Video folder (`tests/fixtures/ltx/pipeline`,
//! made by `tools/fixtures/ltx.py` with diffusers 0.42.1): frames through the command-line
//! contract (`--latents` in LTX's packed layout, `--fps`, `--decode-timestep`,
//! `--save-frames`), and sizes LTX cannot take.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use candle_core::{Device, Tensor};

mod common;
use common::saved_frames_error;

fn fixture() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/ltx")
}

fn vidgen(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_vidgen"))
        .args(args)
        .output()
        .expect("run vidgen")
}

fn reference() -> std::collections::HashMap<String, Tensor> {
    candle_core::safetensors::load(fixture().join("reference.safetensors"), &Device::Cpu).unwrap()
}

/// Writes the fixture's packed noise `(1, T·H·W, C)` as tensor `latents`.
fn save_latents(dir: &Path) -> PathBuf {
    let path = dir.join("latents.safetensors");
    let latents = reference()["pipeline.latents"].clone();
    candle_core::safetensors::save(
        &[("latents".to_string(), latents)].into_iter().collect(),
        &path,
    )
    .unwrap();
    path
}

/// The fixture's call, with the values of the flags in `overrides` replaced.
fn generate(dir: &Path, overrides: &[&str]) -> (Output, PathBuf, PathBuf) {
    let latents = save_latents(dir);
    let frames = dir.join("frames.safetensors");
    let out = dir.join("out.mp4");
    let model = fixture().join("pipeline");
    let mut args = vec![
        "generate",
        "A red ball bounces slowly over a blue box",
        "--negative-prompt",
        "blurry, static",
        "--model",
        model.to_str().unwrap(),
        "--latents",
        latents.to_str().unwrap(),
        "--frames",
        "9",
        "--height",
        "32",
        "--width",
        "64",
        "--fps",
        "24",
        "--steps",
        "3",
        "--guidance",
        "3",
        "--max-sequence-length",
        "16",
        "--decode-timestep",
        "0.05",
        "--decode-noise-scale",
        "0",
        "--seed",
        "7",
        "--save-frames",
        frames.to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
    ];
    for pair in overrides.chunks(2) {
        let at = args
            .iter()
            .position(|a| *a == pair[0])
            .expect("a flag of the call");
        args[at + 1] = pair[1];
    }
    (vidgen(&args), frames, out)
}

#[test]
fn ltx_pipeline_matches_diffusers_through_the_cli() {
    let tmp = tempfile::tempdir().unwrap();
    let (o, frames, out) = generate(tmp.path(), &[]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(out.is_file());
    let err = saved_frames_error(&frames, &reference()["pipeline.frames"]);
    println!("ltx: frames max abs error {err:e}");
    assert!(err <= 2e-3, "ltx: frames max abs error {err}");
}

#[test]
fn sizes_ltx_cannot_take_fail_with_what_it_accepts() {
    for (flags, expected) in [
        (["--frames", "10"], "frames must be of the form 4k+1"),
        (["--height", "40"], "multiples of 16"),
        (["--width", "96"], "latents must be packed (1, T·H·W, C)"),
    ] {
        let tmp = tempfile::tempdir().unwrap();
        let (o, frames, out) = generate(tmp.path(), &flags);
        let stderr = String::from_utf8_lossy(&o.stderr);
        assert!(!o.status.success(), "{flags:?} should fail");
        assert!(stderr.contains(expected), "{flags:?}: {stderr}");
        assert!(!out.exists() && !frames.exists(), "{flags:?} left output");
    }
}

#[test]
fn info_describes_an_ltx_folder() {
    let model = fixture().join("pipeline");
    let o = vidgen(&["info", model.to_str().unwrap(), "--json"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let info: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(info["pipeline"], "LTXPipeline");
    assert_eq!(info["family"], "ltx");
    assert_eq!(info["defaults"]["num_frames"], 161);
    assert_eq!(info["defaults"]["fps"], 25);
    let vae = info["vae"]["summary"].as_str().unwrap();
    assert!(vae.contains("4× in time and 16× in space"), "{vae}");
    assert!(info["transformer"]["parameters"].as_u64().unwrap() > 1_000);
}
