//! End-to-end tests of the `vidgen` binary: parity with diffusers through the command-line
//! contract (`--latents`, `--save-frames`), and bad input that must fail cleanly.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use candle_core::{Device, Tensor};

mod common;
use common::{max_abs_diff, saved_frames_error};

fn fixture() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/wan")
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

/// Copies the fixture pipeline folder (small) so a test can change one file of it.
fn copy_model(to: &Path) -> PathBuf {
    let dst = to.join("model");
    copy_dir(&fixture().join("pipeline"), &dst);
    dst
}

fn copy_dir(src: &Path, dst: &Path) {
    std::fs::create_dir_all(dst).unwrap();
    for entry in std::fs::read_dir(src).unwrap() {
        let entry = entry.unwrap();
        let target = dst.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
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

/// Runs the fixture's pipeline call through the CLI and compares frames with diffusers'.
fn pipeline_parity(model: &Path, scheduler: &str) {
    let tmp = tempfile::tempdir().unwrap();
    let refs = reference();
    let latents = tmp.path().join("latents.safetensors");
    save_latents(&latents, &refs[&format!("pipeline.{scheduler}.latents")]);
    let frames = tmp.path().join("frames.safetensors");
    let out = tmp.path().join("out.mp4");
    let o = vidgen(&[
        "generate",
        "A red  ball &amp; a blue box bounce",
        "--negative-prompt",
        "blurry, static",
        "--model",
        model.to_str().unwrap(),
        "--latents",
        latents.to_str().unwrap(),
        "--steps",
        "4",
        "--guidance",
        "4.5",
        "--max-sequence-length",
        "24",
        "--save-frames",
        frames.to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(out.is_file());
    let err = saved_frames_error(&frames, &refs[&format!("pipeline.{scheduler}.frames")]);
    println!("{scheduler}: frames max abs error {err:e}");
    assert!(err <= 2e-3, "{scheduler}: frames max abs error {err}");
}

#[test]
fn unipc_pipeline_matches_diffusers_through_the_cli() {
    pipeline_parity(&fixture().join("pipeline"), "unipc");
}

#[test]
fn euler_pipeline_matches_diffusers_through_the_cli() {
    let tmp = tempfile::tempdir().unwrap();
    let model = copy_model(tmp.path());
    std::fs::write(
        model.join("scheduler/scheduler_config.json"),
        r#"{"_class_name": "FlowMatchEulerDiscreteScheduler", "num_train_timesteps": 1000, "shift": 3.0}"#,
    )
    .unwrap();
    pipeline_parity(&model, "euler");
}

/// Runs `generate` expecting failure; returns stderr and checks no output was left.
fn fails(model: &Path, extra: &[&str], out_name: &str) -> String {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join(out_name);
    let mut args = vec!["generate", "a ball", "--model", model.to_str().unwrap()];
    args.extend_from_slice(extra);
    // A size this fixture can take, for every flag the case does not set itself.
    for (flag, value) in [
        ("--frames", "9"),
        ("--height", "32"),
        ("--width", "48"),
        ("--steps", "1"),
    ] {
        if !extra.iter().any(|a| a.starts_with(flag)) {
            args.extend_from_slice(&[flag, value]);
        }
    }
    args.extend_from_slice(&["-o", out.to_str().unwrap()]);
    let o = vidgen(&args);
    let stderr = String::from_utf8_lossy(&o.stderr).to_string();
    assert!(!o.status.success(), "expected failure for {extra:?}");
    let left: Vec<_> = std::fs::read_dir(tmp.path()).unwrap().collect();
    assert!(left.is_empty(), "files left behind for {extra:?}: {left:?}");
    stderr
}

#[test]
fn impossible_sizes_and_settings_are_refused_with_what_is_accepted() {
    let model = fixture().join("pipeline");
    let err = fails(&model, &["--frames", "8"], "o.mp4");
    assert!(err.contains("frames must be of the form 4k+1"), "{err}");
    let err = fails(&model, &["--height", "40"], "o.mp4");
    assert!(err.contains("multiples of 16"), "{err}");
    let err = fails(&model, &["--width", "0"], "o.mp4");
    assert!(err.contains("multiples of 16"), "{err}");
    let err = fails(&model, &["--guidance=-1"], "o.mp4");
    assert!(
        err.contains("guidance must be a finite number ≥ 0"),
        "{err}"
    );
    let err = fails(&model, &["--steps", "0"], "o.mp4");
    assert!(err.contains("steps must be at least 1"), "{err}");
    let err = fails(&model, &["--decode-timestep", "0.05"], "o.mp4");
    assert!(err.contains("Wan's decoder takes neither"), "{err}");
    let err = fails(&model, &["--fps", "0"], "o.mp4");
    assert!(err.contains("fps must be at least 1"), "{err}");
    let err = fails(&model, &[], "o.avi");
    assert!(err.contains("use one of: .mp4, .gif, .png"), "{err}");
    let err = fails(
        &model,
        &["--frames", "1", "--height", "2048", "--width", "32"],
        "o.mp4",
    );
    assert!(err.contains("at most 32 patches per axis"), "{err}");
    let err = fails(&model, &["--step-cache", "0"], "o.mp4");
    assert!(
        err.contains("step cache threshold must be a positive number"),
        "{err}"
    );
    let err = fails(&model, &["--quantize", "q4_k"], "o.mp4");
    assert!(err.contains("use q8_0 or none"), "{err}");
}

#[test]
fn fast_mode_and_memory_flags_run_and_are_recorded() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("fast.mp4");
    let model = fixture().join("pipeline");
    let o = vidgen(&[
        "generate",
        "a ball",
        "--model",
        model.to_str().unwrap(),
        "--steps",
        "6",
        "--frames",
        "9",
        "--height",
        "32",
        "--width",
        "48",
        "--step-cache",
        "0.3",
        "--quantize",
        "q8_0",
        "--vae-tiling",
        "--seed",
        "1",
        "-o",
        out.to_str().unwrap(),
    ]);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "{stderr}");
    assert!(stderr.contains("reused the later blocks"), "{stderr}");
    let sidecar: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(tmp.path().join("fast.mp4.json")).unwrap())
            .unwrap();
    assert_eq!(sidecar["settings"]["step_cache"], 0.3);
    assert_eq!(sidecar["quantize"], "q8_0");
    assert_eq!(sidecar["vae_tiling"], true);
}

#[test]
fn zero_steps_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let out = tmp.path().join("o.mp4");
    let model = fixture().join("pipeline");
    let o = vidgen(&[
        "generate",
        "a",
        "--model",
        model.to_str().unwrap(),
        "--steps",
        "0",
        "-o",
        out.to_str().unwrap(),
    ]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("steps must be at least 1"));
    assert!(!out.exists());
}

#[test]
fn bad_output_locations_are_refused_before_any_work() {
    let model = fixture().join("pipeline");
    let o = vidgen(&[
        "generate",
        "a",
        "--model",
        model.to_str().unwrap(),
        "-o",
        "/nonexistent-dir/x.mp4",
    ]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("does not exist"), "{err}");
    // Not writable even for root: /proc takes no new files.
    let o = vidgen(&[
        "generate",
        "a",
        "--model",
        model.to_str().unwrap(),
        "-o",
        "/proc/vidgen-test.mp4",
    ]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("cannot write in /proc"), "{err}");
}

#[test]
fn broken_model_folders_get_clear_errors() {
    let tmp = tempfile::tempdir().unwrap();
    // Not a pipeline folder at all.
    let err = fails(tmp.path(), &[], "o.mp4");
    assert!(err.contains("no model_index.json"), "{err}");
    let err = fails(&tmp.path().join("missing"), &[], "o.mp4");
    assert!(err.contains("no such file or folder"), "{err}");

    // An unknown pipeline class.
    let model = copy_model(tmp.path());
    std::fs::write(
        model.join("model_index.json"),
        r#"{"_class_name": "FancyPipeline"}"#,
    )
    .unwrap();
    let err = fails(&model, &[], "o.mp4");
    assert!(
        err.contains("unsupported pipeline `FancyPipeline`; supported: WanPipeline"),
        "{err}"
    );
    std::fs::remove_dir_all(&model).unwrap();

    // A truncated weight file.
    let model = copy_model(tmp.path());
    let file = model.join("transformer/diffusion_pytorch_model.safetensors");
    let bytes = std::fs::read(&file).unwrap();
    std::fs::write(&file, &bytes[..bytes.len() / 2]).unwrap();
    let err = fails(&model, &[], "o.mp4");
    assert!(err.contains("truncated or corrupt"), "{err}");
    assert!(err.contains("diffusion_pytorch_model.safetensors"), "{err}");
    std::fs::remove_dir_all(&model).unwrap();

    // A missing weight file.
    let model = copy_model(tmp.path());
    std::fs::remove_file(model.join("vae/diffusion_pytorch_model.safetensors")).unwrap();
    let err = fails(&model, &[], "o.mp4");
    assert!(err.contains("no *.safetensors file"), "{err}");
    std::fs::remove_dir_all(&model).unwrap();

    // A weight of the wrong shape: a config that disagrees with the checkpoint.
    let model = copy_model(tmp.path());
    let cfg_path = model.join("transformer/config.json");
    let cfg = std::fs::read_to_string(&cfg_path)
        .unwrap()
        .replace("\"ffn_dim\": 40", "\"ffn_dim\": 41");
    std::fs::write(&cfg_path, cfg).unwrap();
    let err = fails(&model, &[], "o.mp4");
    assert!(err.contains("blocks.0.ffn.net.0.proj.weight"), "{err}");
    assert!(err.contains("has shape [40, 48]"), "{err}");
    std::fs::remove_dir_all(&model).unwrap();

    // An unsupported scheduler.
    let model = copy_model(tmp.path());
    std::fs::write(
        model.join("scheduler/scheduler_config.json"),
        r#"{"_class_name": "DPMSolverSDEScheduler"}"#,
    )
    .unwrap();
    let err = fails(&model, &[], "o.mp4");
    assert!(err.contains("DPMSolverSDEScheduler"), "{err}");
}

#[test]
fn latents_of_the_wrong_shape_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let latents = tmp.path().join("l.safetensors");
    save_latents(
        &latents,
        &Tensor::zeros((1, 4, 3, 4, 6), candle_core::DType::F32, &Device::Cpu).unwrap(),
    );
    let model = fixture().join("pipeline");
    let out = tmp.path().join("o.mp4");
    let o = vidgen(&[
        "generate",
        "a",
        "--model",
        model.to_str().unwrap(),
        "--latents",
        latents.to_str().unwrap(),
        "-o",
        out.to_str().unwrap(),
    ]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("latents must be (1, 8, T, H, W)"), "{err}");
    assert!(!out.exists());
}

#[test]
fn init_info_and_generate_work_together() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tmp.path().join("tiny");
    let o = vidgen(&["init", "--preset", "tiny", "-o", model.to_str().unwrap()]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let o = vidgen(&["info", model.to_str().unwrap(), "--json"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let info: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(info["pipeline"], "WanPipeline");
    assert_eq!(info["defaults"]["num_frames"], 17);
    assert!(info["transformer"]["parameters"].as_u64().unwrap() > 10_000);
    // A second init into the same folder is refused; --force replaces it.
    let o = vidgen(&["init", "--preset", "tiny", "-o", model.to_str().unwrap()]);
    assert!(!o.status.success());
    let o = vidgen(&[
        "init",
        "--preset",
        "tiny",
        "-o",
        model.to_str().unwrap(),
        "--force",
    ]);
    assert!(o.status.success());

    // Seed 3, two steps, the model's own size; returns the saved frames.
    let out = tmp.path().join("clip.gif");
    let generate = |frames_name: &str| {
        let frames = tmp.path().join(frames_name);
        let o = vidgen(&[
            "generate",
            "a red ball bounces",
            "--model",
            model.to_str().unwrap(),
            "--seed",
            "3",
            "--steps",
            "2",
            "-o",
            out.to_str().unwrap(),
            "--save-frames",
            frames.to_str().unwrap(),
        ]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        candle_core::safetensors::load(&frames, &Device::Cpu).unwrap()["frames"].clone()
    };
    let got = generate("frames.safetensors");
    assert!(out.is_file());
    let sidecar: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(tmp.path().join("clip.gif.json")).unwrap())
            .unwrap();
    assert_eq!(sidecar["settings"]["seed"], 3);
    assert_eq!(got.dims(), &[17, 64, 96, 3]);

    // The same seed gives the same frames.
    let again = generate("frames2.safetensors");
    assert_eq!(max_abs_diff(&got, &again), 0.0);
}

#[test]
fn a_hugging_face_cache_folder_works_as_model() {
    // models--org--name/{refs/main, snapshots/HASH/…}: the layout of ~/.cache/huggingface/hub.
    let tmp = tempfile::tempdir().unwrap();
    let repo = tmp.path().join("models--vidgen--tiny");
    copy_dir(
        &fixture().join("pipeline"),
        &repo.join("snapshots").join("0123abc"),
    );
    std::fs::create_dir_all(repo.join("refs")).unwrap();
    std::fs::write(repo.join("refs").join("main"), "0123abc").unwrap();
    let out = tmp.path().join("o.gif");
    let o = vidgen(&[
        "generate",
        "a ball",
        "--model",
        repo.to_str().unwrap(),
        "--frames",
        "5",
        "--height",
        "32",
        "--width",
        "32",
        "--steps",
        "1",
        "-o",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(out.is_file());
}

#[test]
fn video_to_video_matches_diffusers_through_the_cli() {
    // the input: the v2v fixture's 10 frames (8-bit values) as a folder of pngs, lossless
    let tmp = tempfile::tempdir().unwrap();
    let refs = candle_core::safetensors::load(
        fixture().join("../wan_v2v/reference.safetensors"),
        &Device::Cpu,
    )
    .unwrap();
    let input = &refs["input_frames"];
    let (f, h, w, _) = input.dims4().unwrap();
    let frames = vidgen_video::Frames::new(
        f,
        h,
        w,
        8.0,
        input.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
    )
    .unwrap();
    vidgen_video::write(&tmp.path().join("input.png"), &frames).unwrap();
    let noise = tmp.path().join("noise.safetensors");
    save_latents(&noise, &refs["unipc.noise"]);
    let saved = tmp.path().join("frames.safetensors");
    let o = vidgen(&[
        "generate",
        "A red  ball &amp; a blue box bounce",
        "--negative-prompt",
        "blurry, static",
        "--model",
        fixture().join("pipeline").to_str().unwrap(),
        "--video",
        tmp.path().join("input").to_str().unwrap(),
        "--strength",
        "0.6",
        "--latents",
        noise.to_str().unwrap(),
        "--steps",
        "5",
        "--guidance",
        "4.5",
        "--max-sequence-length",
        "24",
        "--height",
        "32",
        "--width",
        "48",
        "--save-frames",
        saved.to_str().unwrap(),
        "-o",
        tmp.path().join("out.mp4").to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let err = saved_frames_error(&saved, &refs["unipc.frames"]);
    println!("video-to-video: frames max abs error {err:e}");
    assert!(err <= 2e-3, "video-to-video: frames max abs error {err}");

    // image-to-video on a model that does not do it: the modes it does are named; a file that
    // is not a video
    let model = fixture().join("pipeline");
    let image = tmp.path().join("first.png");
    vidgen_video::write(&image, &frames).unwrap();
    let stderr = fails(&model, &["--image", image.to_str().unwrap()], "i2v.mp4");
    assert!(
        stderr.contains("image-to-video") && stderr.contains("video-to-video"),
        "{stderr}"
    );
    let bogus = tmp.path().join("bogus.mp4");
    std::fs::write(&bogus, b"not a video").unwrap();
    let stderr = fails(&model, &["--video", bogus.to_str().unwrap()], "v2v.mp4");
    assert!(stderr.contains("--video"), "{stderr}");
}
