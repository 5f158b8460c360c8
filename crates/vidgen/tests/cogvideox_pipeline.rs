//! The whole CogVideoX pipeline (T5 without a mask → denoise with guidance → VAE) against
//! diffusers 0.42.1 `CogVideoXPipeline` on the tiny 2b (sin-cos) and 5b (RoPE) models of
//! `tools/fixtures/cogvideox.py`, through the library API.

mod common;

use common::{family_fixture_dir, family_reference, max_abs_diff};
use vidgen::families::cogvideox::pipeline::CogVideoXPipeline;
use vidgen::pipeline::{GenerateRequest, LoadOptions, Stage};
use vidgen::Error;

fn pipeline(variant: &str) -> CogVideoXPipeline {
    let dir = family_fixture_dir(&format!("cogvideox/{variant}")).join("pipeline");
    CogVideoXPipeline::load(&dir, LoadOptions::default()).unwrap()
}

/// The fixture's call: 13 frames at 32x48 from the reference's latents (1, 4, 8, 4, 6).
fn request(variant: &str) -> GenerateRequest {
    let refs = family_reference(&format!("cogvideox/{variant}"));
    GenerateRequest {
        prompt: "A red ball and a blue box bounce slowly".into(),
        negative_prompt: Some("blurry, static".into()),
        num_inference_steps: Some(3),
        guidance_scale: Some(6.0),
        max_sequence_length: Some(16),
        latents: Some(refs["pipeline.latents"].clone()),
        ..Default::default()
    }
}

fn check_denoise(variant: &str) {
    let refs = family_reference(&format!("cogvideox/{variant}"));
    let mut pipe = pipeline(variant);
    let latents = pipe.denoise(&request(variant)).unwrap();
    let err = max_abs_diff(&latents, &refs["pipeline.final_latents"]);
    println!("{variant}: final latents max abs error {err:e}");
    assert!(err <= 1e-4, "{variant}: final latents max abs error {err}");
}

#[test]
fn denoise_2b_matches_diffusers_final_latents() {
    check_denoise("2b");
}

#[test]
fn denoise_5b_matches_diffusers_final_latents() {
    check_denoise("5b");
}

fn check_generate(variant: &str) {
    let refs = family_reference(&format!("cogvideox/{variant}"));
    let mut pipe = pipeline(variant);
    let mut events = Vec::new();
    let out = pipe
        .generate(&request(variant), &mut |p| {
            events.push((p.stage, p.done, p.total))
        })
        .unwrap();
    let s = &out.settings;
    assert_eq!((s.num_frames, s.height, s.width, s.fps), (13, 32, 48, 8));
    assert_eq!(s.scheduler, "CogVideoXDDIMScheduler");
    let latent_err = max_abs_diff(&out.latents, &refs["pipeline.final_latents"]);
    let frame_err = max_abs_diff(&out.frames, &refs["pipeline.frames"]);
    println!("{variant}: final latents max abs error {latent_err:e}, frames {frame_err:e}");
    assert!(
        latent_err <= 1e-4,
        "final latents max abs error {latent_err}"
    );
    assert!(frame_err <= 2e-3, "frames max abs error {frame_err}");
    let steps = events.iter().filter(|e| e.0 == Stage::Denoise).count();
    assert_eq!(steps, 3);
    assert_eq!(events.last().unwrap(), &(Stage::Decode, 4, 4));
}

#[test]
fn generate_2b_matches_diffusers_frames() {
    check_generate("2b");
}

#[test]
fn generate_5b_matches_diffusers_frames() {
    check_generate("5b");
}

#[test]
fn defaults_come_from_the_transformer_config() {
    let pipe = pipeline("2b");
    let d = pipe.defaults();
    // sample 6x10 latents, 13 frames; max_text_seq_length 16
    assert_eq!(
        (d.num_frames, d.height, d.width, d.max_sequence_length),
        (13, 48, 80, 16)
    );
    assert_eq!(
        (d.num_inference_steps, d.guidance_scale, d.fps),
        (50, 6.0, 8)
    );
}

#[test]
fn load_dispatches_on_model_index() {
    let dir = family_fixture_dir("cogvideox/5b").join("pipeline");
    let pipe = vidgen::pipeline::load(&dir, LoadOptions::default()).unwrap();
    let s = pipe
        .resolve(&GenerateRequest {
            prompt: "x".into(),
            ..Default::default()
        })
        .unwrap();
    assert_eq!((s.num_frames, s.height, s.width), (13, 48, 80));
}

#[test]
fn bad_requests_say_what_is_accepted() {
    let pipe = pipeline("2b");
    let err = |req: GenerateRequest| match pipe.resolve(&req) {
        Err(Error::InvalidRequest(msg)) => msg,
        other => panic!("expected an invalid request, got {other:?}"),
    };
    let base = GenerateRequest {
        prompt: "x".into(),
        ..Default::default()
    };
    let msg = err(GenerateRequest {
        height: Some(40),
        ..base.clone()
    });
    assert!(msg.contains("multiples of 16"), "{msg}");
    let msg = err(GenerateRequest {
        num_frames: Some(12),
        ..base.clone()
    });
    assert!(msg.contains("4k+1"), "{msg}");
    let msg = err(GenerateRequest {
        max_sequence_length: Some(226),
        ..base.clone()
    });
    assert!(msg.contains("must be 16"), "{msg}");
    // Channels-before-frames latents (the Wan layout) are rejected with the expected layout.
    let msg = err(GenerateRequest {
        latents: Some(
            candle_core::Tensor::zeros(
                (1, 8, 4, 4, 6),
                candle_core::DType::F32,
                &candle_core::Device::Cpu,
            )
            .unwrap(),
        ),
        ..base.clone()
    });
    assert!(msg.contains("frames before channels"), "{msg}");
    let msg = err(GenerateRequest {
        num_frames: Some(9),
        ..request("2b")
    });
    assert!(msg.contains("do not fit"), "{msg}");
}

#[test]
fn info_describes_a_cogvideox_folder() {
    let dir = family_fixture_dir("cogvideox/5b").join("pipeline");
    let info = vidgen::info::describe(&dir).unwrap();
    assert_eq!(info.family, "cogvideox");
    assert_eq!(info.pipeline, "CogVideoXPipeline");
    assert_eq!(info.scheduler, "CogVideoXDDIMScheduler");
    assert!(
        info.transformer.summary.contains("RoPE"),
        "{}",
        info.transformer.summary
    );
    assert_eq!(info.defaults.num_frames, 13);
}

/// The 5b fixture with `CogVideoXDPMScheduler` (CogVideoX-5b's published scheduler): its noise
/// comes from vidgen's generator seeded with the request's seed, so a seed repeats its video.
#[test]
fn dpm_scheduler_runs_and_its_noise_follows_the_seed() {
    let tmp = tempfile::tempdir().unwrap();
    let src = family_fixture_dir("cogvideox/5b").join("pipeline");
    let dst = tmp.path().join("model");
    copy_dir(&src, &dst);
    let path = dst.join("scheduler/scheduler_config.json");
    let config = std::fs::read_to_string(&path)
        .unwrap()
        .replace("CogVideoXDDIMScheduler", "CogVideoXDPMScheduler");
    std::fs::write(&path, config).unwrap();
    let mut pipe = CogVideoXPipeline::load(&dst, LoadOptions::default()).unwrap();
    let run = |pipe: &mut CogVideoXPipeline, seed: u64| {
        pipe.denoise(&GenerateRequest {
            seed,
            ..request("5b")
        })
        .unwrap()
    };
    let a = run(&mut pipe, 1);
    let b = run(&mut pipe, 1);
    let c = run(&mut pipe, 2);
    assert_eq!(max_abs_diff(&a, &b), 0.0);
    assert!(max_abs_diff(&a, &c) > 1e-3);
    let out = pipe.generate(&request("5b"), &mut |_| {}).unwrap();
    assert_eq!(out.settings.scheduler, "CogVideoXDPMScheduler");
    assert_eq!(out.frames.dims(), &[16, 32, 48, 3]);
}

#[test]
fn guidance_of_one_runs_the_prompt_alone_and_dynamic_cfg_changes_the_result() {
    let mut pipe = pipeline("2b");
    let plain = pipe.denoise(&request("2b")).unwrap();
    let no_cfg = pipe
        .denoise(&GenerateRequest {
            guidance_scale: Some(1.0),
            ..request("2b")
        })
        .unwrap();
    assert_eq!(no_cfg.dims(), plain.dims());
    assert!(max_abs_diff(&plain, &no_cfg) > 1e-4);
    pipe.set_dynamic_cfg(true);
    let dynamic = pipe.denoise(&request("2b")).unwrap();
    assert!(max_abs_diff(&plain, &dynamic) > 1e-4);
}

fn copy_dir(src: &std::path::Path, dst: &std::path::Path) {
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
