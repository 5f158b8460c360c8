//! CogVideoX video-to-video against diffusers 0.42.1's `CogVideoXVideoToVideoPipeline` on the
//! tiny CogVideoX fixtures (`tools/fixtures/cogvideox_v2v.py`): 2b (sin-cos positions, DDIM,
//! guidance with a negative prompt, strength 0.7) and 5b (RoPE, strength 1). The posterior
//! draw and the noise are the reference's, passed in.

mod common;

use common::{family_fixture_dir, family_reference, max_abs_diff};
use vidgen::families::cogvideox::pipeline::CogVideoXPipeline;
use vidgen::pipeline::{GenerateRequest, LoadOptions, Stage};

#[test]
fn video_to_video_matches_diffusers() {
    let refs = family_reference("cogvideox_v2v");
    let meta: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(family_fixture_dir("cogvideox_v2v").join("reference.json"))
            .unwrap(),
    )
    .unwrap();
    for name in ["2b", "5b"] {
        let run = &meta["runs"][name];
        let dir = family_fixture_dir(&format!("cogvideox/{}", run["variant"].as_str().unwrap()));
        let mut pipe =
            CogVideoXPipeline::load(&dir.join("pipeline"), LoadOptions::default()).unwrap();
        let steps = run["steps"].as_u64().unwrap() as usize;
        let strength = run["strength"].as_f64().unwrap();
        let request = GenerateRequest {
            prompt: meta["prompt"].as_str().unwrap().into(),
            negative_prompt: Some(meta["negative_prompt"].as_str().unwrap().into()),
            num_inference_steps: Some(steps),
            guidance_scale: run["guidance"].as_f64(),
            max_sequence_length: Some(16),
            height: Some(32),
            width: Some(48),
            latents: Some(refs[&format!("{name}.noise")].clone()),
            encode_noise: Some(refs[&format!("{name}.encode_noise")].clone()),
            video: Some(refs["input_frames"].clone()),
            strength: Some(strength),
            ..Default::default()
        };
        let mut events = Vec::new();
        let out = pipe
            .generate(&request, &mut |p| events.push((p.stage, p.done, p.total)))
            .unwrap();
        let ran = events.iter().filter(|e| e.0 == Stage::Denoise).count();
        assert_eq!(ran, (steps as f64 * strength) as usize, "{name}: steps run");
        let err = max_abs_diff(&out.frames, &refs[&format!("{name}.frames")]);
        println!("{name}: frames max abs error {err:e}");
        assert!(err <= 2e-3, "{name}: frames max abs error {err}");
    }
}
