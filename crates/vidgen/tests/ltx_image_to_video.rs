//! LTX-Video image-to-video against diffusers 0.42.1's `LTXImageToVideoPipeline` on the tiny
//! LTX fixture (`tools/fixtures/ltx_i2v.py`): the first latent frame is the image's (sampled
//! posterior, normalised), its tokens get timestep 0 and are never stepped; guidance with a
//! negative prompt, a timestep-conditioned decode. The posterior draw and the noise are the
//! reference's, passed in.

mod common;

use common::{family_fixture_dir, family_reference, max_abs_diff};
use vidgen::families::ltx::pipeline::{pack_latents, LtxPipeline};
use vidgen::pipeline::{GenerateRequest, LoadOptions};

#[test]
fn image_to_video_matches_diffusers() {
    let refs = family_reference("ltx_i2v");
    let meta: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(family_fixture_dir("ltx_i2v").join("reference.json")).unwrap(),
    )
    .unwrap();
    let call = &meta["call"];
    let mut pipe = LtxPipeline::load(
        &family_fixture_dir("ltx").join("pipeline"),
        LoadOptions::default(),
    )
    .unwrap();
    let request = GenerateRequest {
        prompt: meta["prompt"].as_str().unwrap().into(),
        negative_prompt: Some(meta["negative_prompt"].as_str().unwrap().into()),
        num_frames: Some(9),
        height: Some(32),
        width: Some(64),
        num_inference_steps: call["num_inference_steps"].as_u64().map(|n| n as usize),
        guidance_scale: call["guidance_scale"].as_f64(),
        fps: Some(24),
        max_sequence_length: Some(16),
        decode_timestep: call["decode_timestep"].as_f64(),
        decode_noise_scale: call["decode_noise_scale"].as_f64(),
        latents: Some(pack_latents(&refs["noise"]).unwrap()),
        encode_noise: Some(refs["encode_noise"].clone()),
        image: Some(refs["image"].clone()),
        ..Default::default()
    };
    let out = pipe.generate(&request, &mut |_| {}).unwrap();
    let err = max_abs_diff(&out.frames, &refs["frames"]);
    println!("image-to-video: frames max abs error {err:e}");
    assert!(err <= 2e-3, "frames max abs error {err}");

    // the first frame follows the image; without the image it does not
    let first = |frames: &candle_core::Tensor| frames.get(0).unwrap();
    let with_image = max_abs_diff(&first(&out.frames), &refs["image"]);
    let text_only = pipe
        .generate(
            &GenerateRequest {
                image: None,
                encode_noise: None,
                ..request.clone()
            },
            &mut |_| {},
        )
        .unwrap();
    let without = max_abs_diff(&first(&text_only.frames), &refs["image"]);
    println!("first frame vs image: {with_image} with it, {without} without");
    // (random weights: the decoder does not reproduce the image, but the request changes it)
    assert!(with_image != without);

    // a video is not something LTX-Video takes
    let video = candle_core::Tensor::zeros(
        (9, 32, 64, 3),
        candle_core::DType::F32,
        &candle_core::Device::Cpu,
    )
    .unwrap();
    let msg = pipe
        .resolve(&GenerateRequest {
            image: None,
            video: Some(video),
            ..request
        })
        .unwrap_err()
        .to_string();
    assert!(
        msg.contains("video-to-video") && msg.contains("image-to-video"),
        "{msg}"
    );
}
