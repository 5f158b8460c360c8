//! Wan video-to-video (SDEdit: encode the input, noise it to `strength`, denoise the rest)
//! against diffusers 0.42.1's `WanVideoToVideoPipeline` on the tiny Wan fixture
//! (`tools/fixtures/wan_v2v.py`): UniPC with guidance and a negative prompt, and flow-match
//! Euler without guidance; a 10-frame input of which the causal VAE keeps 9.

mod common;

use std::path::Path;

use candle_core::Tensor;
use common::{family_fixture_dir, family_reference, fixture_dir, max_abs_diff};
use vidgen::families::wan::pipeline::WanPipeline;
use vidgen::pipeline::{GenerateRequest, LoadOptions, Stage};

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

/// The fixture pipeline with run `name`'s scheduler.
fn pipeline(name: &str, meta: &serde_json::Value, tmp: &Path) -> WanPipeline {
    let run = &meta["runs"][name];
    let dir = tmp.join(name);
    copy_dir(&fixture_dir().join("pipeline"), &dir);
    let mut config = run["scheduler_config"].clone();
    config["_class_name"] = run["scheduler"].clone();
    std::fs::write(
        dir.join("scheduler/scheduler_config.json"),
        serde_json::to_string_pretty(&config).unwrap(),
    )
    .unwrap();
    WanPipeline::load(&dir, LoadOptions::default()).unwrap()
}

#[test]
fn video_to_video_matches_diffusers() {
    let refs = family_reference("wan_v2v");
    let meta: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(family_fixture_dir("wan_v2v").join("reference.json")).unwrap(),
    )
    .unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let input: Tensor = refs["input_frames"].clone(); // (10, 32, 48, 3)
    for name in ["unipc", "euler"] {
        let run = &meta["runs"][name];
        let mut pipe = pipeline(name, &meta, tmp.path());
        let steps = run["steps"].as_u64().unwrap() as usize;
        let strength = run["strength"].as_f64().unwrap();
        let request = GenerateRequest {
            prompt: meta["prompt"].as_str().unwrap().into(),
            negative_prompt: Some(meta["negative_prompt"].as_str().unwrap().into()),
            num_inference_steps: Some(steps),
            guidance_scale: run["guidance"].as_f64(),
            max_sequence_length: Some(24),
            height: Some(32),
            width: Some(48),
            latents: Some(refs[&format!("{name}.noise")].clone()),
            video: Some(input.clone()),
            strength: Some(strength),
            ..Default::default()
        };
        let mut events = Vec::new();
        let out = pipe
            .generate(&request, &mut |p| events.push((p.stage, p.done, p.total)))
            .unwrap();
        assert_eq!(
            out.settings.num_frames, 9,
            "{name}: 1 + 4k of the 10 input frames"
        );
        assert_eq!(out.settings.strength, Some(strength));
        let expected_steps = (steps as f64 * strength) as usize;
        let denoise: Vec<_> = events.iter().filter(|e| e.0 == Stage::Denoise).collect();
        assert_eq!(denoise.len(), expected_steps, "{name}: steps run");
        let err = max_abs_diff(&out.frames, &refs[&format!("{name}.frames")]);
        println!("{name}: frames max abs error {err:e}");
        assert!(err <= 2e-3, "{name}: frames max abs error {err}");
    }
}

#[test]
fn video_to_video_rejects_what_it_cannot_do() {
    let mut pipe =
        WanPipeline::load(&fixture_dir().join("pipeline"), LoadOptions::default()).unwrap();
    let video = Tensor::zeros(
        (9, 32, 48, 3),
        candle_core::DType::F32,
        &candle_core::Device::Cpu,
    )
    .unwrap();
    let base = GenerateRequest {
        prompt: "a ball".into(),
        num_inference_steps: Some(4),
        height: Some(32),
        width: Some(48),
        video: Some(video.clone()),
        ..Default::default()
    };
    let err = |req: GenerateRequest| pipe.resolve(&req).unwrap_err().to_string();
    assert!(err(GenerateRequest {
        strength: Some(0.0),
        ..base.clone()
    })
    .contains("strength"));
    assert!(err(GenerateRequest {
        strength: Some(1.5),
        ..base.clone()
    })
    .contains("(0, 1]"));
    assert!(err(GenerateRequest {
        strength: Some(0.2),
        ..base.clone()
    })
    .contains("no step"));
    assert!(err(GenerateRequest {
        num_frames: Some(13),
        ..base.clone()
    })
    .contains("13 frames"));
    let image = Tensor::zeros(
        (32, 48, 3),
        candle_core::DType::F32,
        &candle_core::Device::Cpu,
    )
    .unwrap();
    let msg = err(GenerateRequest {
        video: None,
        image: Some(image),
        ..base.clone()
    });
    assert!(
        msg.contains("image-to-video") && msg.contains("video-to-video"),
        "{msg}"
    );
    let msg = err(GenerateRequest {
        video: None,
        strength: Some(0.5),
        ..base.clone()
    });
    assert!(msg.contains("strength"), "{msg}");
    // a different input size is resized; the default frame count is the input's 1 + 4k
    let big = Tensor::rand(0f32, 1.0, (7, 40, 40, 3), &candle_core::Device::Cpu).unwrap();
    let out = pipe
        .generate(
            &GenerateRequest {
                video: Some(big),
                strength: Some(0.5),
                ..base
            },
            &mut |_| {},
        )
        .unwrap();
    assert_eq!(out.frames.dims(), &[5, 32, 48, 3]);
}
