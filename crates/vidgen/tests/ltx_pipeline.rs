//! The whole LTX-Video pipeline (T5 → denoise with guidance over the dynamically shifted
//! schedule → timestep-conditioned VAE) against diffusers 0.42.1 `LTXPipeline` on the tiny
//! random model of `tools/fixtures/ltx.py` (`tests/fixtures/ltx/`), through the library API.

mod common;

use common::{family_fixture_dir, family_reference, max_abs_diff};
use vidgen::families::ltx::pipeline::{pack_latents, LtxPipeline};
use vidgen::pipeline::{GenerateRequest, LoadOptions, Stage};
use vidgen::Error;

fn pipeline() -> LtxPipeline {
    LtxPipeline::load(
        &family_fixture_dir("ltx").join("pipeline"),
        LoadOptions::default(),
    )
    .unwrap()
}

/// The fixture's call: 9 frames at 32x64 (latent grid 3x2x4), 24 fps, 3 steps, guidance 3,
/// 16 text tokens, decode timestep 0.05 with noise scale 0, from its packed noise.
fn fixture_request() -> GenerateRequest {
    let refs = family_reference("ltx");
    GenerateRequest {
        prompt: "A red ball bounces slowly over a blue box".into(),
        negative_prompt: Some("blurry, static".into()),
        num_frames: Some(9),
        height: Some(32),
        width: Some(64),
        fps: Some(24),
        num_inference_steps: Some(3),
        guidance_scale: Some(3.0),
        max_sequence_length: Some(16),
        decode_timestep: Some(0.05),
        decode_noise_scale: Some(0.0),
        latents: Some(refs["pipeline.latents"].clone()),
        ..Default::default()
    }
}

fn values(t: &candle_core::Tensor) -> Vec<f64> {
    t.to_dtype(candle_core::DType::F64)
        .unwrap()
        .to_vec1::<f64>()
        .unwrap()
}

#[test]
fn schedule_matches_diffusers_timesteps_and_sigmas() {
    let refs = family_reference("ltx");
    let pipe = pipeline();
    let settings = pipe.resolve(&fixture_request()).unwrap();
    let scheduler = pipe.scheduler(&settings).unwrap();
    use vidgen::scheduler::Scheduler;
    let (want_t, want_s) = (
        values(&refs["pipeline.timesteps"]),
        values(&refs["pipeline.sigmas"]),
    );
    assert_eq!(scheduler.timesteps().len(), want_t.len());
    assert_eq!(scheduler.sigmas().len(), want_s.len());
    for (got, want) in scheduler.timesteps().iter().zip(&want_t) {
        assert!(
            (got - want).abs() <= 1e-3,
            "timesteps {:?} vs {want_t:?}",
            scheduler.timesteps()
        );
    }
    for (got, want) in scheduler.sigmas().iter().zip(&want_s) {
        assert!(
            (got - want).abs() <= 1e-6,
            "sigmas {:?} vs {want_s:?}",
            scheduler.sigmas()
        );
    }
}

#[test]
fn denoise_matches_diffusers_final_latents() {
    let refs = family_reference("ltx");
    let mut pipe = pipeline();
    let mut steps = 0;
    let (settings, latents, _, _) = pipe
        .denoise(&fixture_request(), &mut |p| {
            assert_eq!(p.stage, Stage::Denoise);
            steps = p.done;
        })
        .unwrap();
    assert_eq!(steps, 3);
    assert_eq!(pipe.latent_grid(&settings), (3, 2, 4));
    let err = max_abs_diff(&latents, &refs["pipeline.final_latents"]);
    println!("LTX final latents max abs error {err:e}");
    assert!(err <= 1e-4, "final latents max abs error {err}");
}

#[test]
fn generate_matches_diffusers_frames() {
    let refs = family_reference("ltx");
    let mut pipe = pipeline();
    let mut events = Vec::new();
    let out = pipe
        .generate(&fixture_request(), &mut |p| {
            events.push((p.stage, p.done, p.total))
        })
        .unwrap();
    assert_eq!(out.frames.dims(), [9, 32, 64, 3]);
    // Generated::latents are unpacked (1, C, T, H, W); packing them gives the reference's.
    assert_eq!(out.latents.dims(), [1, 8, 3, 2, 4]);
    let latent_err = max_abs_diff(
        &pack_latents(&out.latents).unwrap(),
        &refs["pipeline.final_latents"],
    );
    let frame_err = max_abs_diff(&out.frames, &refs["pipeline.frames"]);
    println!("LTX final latents max abs error {latent_err:e}, frames {frame_err:e}");
    assert!(
        latent_err <= 1e-4,
        "final latents max abs error {latent_err}"
    );
    assert!(frame_err <= 2e-3, "frames max abs error {frame_err}");
    assert_eq!(events.last().unwrap(), &(Stage::Decode, 3, 3));
    assert_eq!(out.settings.fps, 24);
}

#[test]
fn defaults_are_the_reference_call_defaults() {
    let d = pipeline().defaults().clone();
    assert_eq!(
        (d.num_frames, d.height, d.width, d.fps),
        (161, 512, 704, 25)
    );
    assert_eq!(
        (
            d.num_inference_steps,
            d.guidance_scale,
            d.max_sequence_length
        ),
        (50, 3.0, 128)
    );
}

#[test]
fn bad_sizes_and_latents_are_errors_that_say_what_is_accepted() {
    let pipe = pipeline();
    let cases = [
        (
            GenerateRequest {
                num_frames: Some(10),
                ..fixture_request()
            },
            "frames must be of the form 4k+1",
        ),
        (
            GenerateRequest {
                height: Some(40),
                ..fixture_request()
            },
            "multiples of 16",
        ),
        (
            GenerateRequest {
                width: Some(96),
                ..fixture_request()
            },
            "latents must be packed (1, T·H·W, C) = [1, 36, 8]",
        ),
        (
            GenerateRequest {
                fps: Some(0),
                ..fixture_request()
            },
            "fps must be at least 1",
        ),
    ];
    for (request, expected) in cases {
        match pipe.resolve(&request) {
            Err(Error::InvalidRequest(msg)) => assert!(msg.contains(expected), "{msg}"),
            other => panic!("expected InvalidRequest containing {expected:?}, got {other:?}"),
        }
    }
}

#[test]
fn the_dispatcher_opens_ltx_folders() {
    let pipe = vidgen::pipeline::load(
        &family_fixture_dir("ltx").join("pipeline"),
        LoadOptions::default(),
    )
    .unwrap();
    assert_eq!(pipe.defaults().num_frames, 161);
}

#[test]
fn guidance_of_one_ignores_the_negative_prompt() {
    let mut pipe = pipeline();
    let base = GenerateRequest {
        guidance_scale: Some(1.0),
        num_inference_steps: Some(2),
        ..fixture_request()
    };
    let (_, a, _, _) = pipe.denoise(&base, &mut |_| {}).unwrap();
    let other = GenerateRequest {
        negative_prompt: Some("something else entirely".into()),
        ..base
    };
    let (_, b, _, _) = pipe.denoise(&other, &mut |_| {}).unwrap();
    assert_eq!(max_abs_diff(&a, &b), 0.0);
}

#[test]
fn decode_noise_is_seeded_and_off_at_scale_zero() {
    let refs = family_reference("ltx");
    let mut pipe = pipeline();
    let settings = pipe.resolve(&fixture_request()).unwrap();
    let latents = &refs["pipeline.final_latents"];
    let mut decode = |seed: u64, scale: f64| {
        let s = vidgen::pipeline::Settings {
            seed,
            ..settings.clone()
        };
        pipe.decode(latents, &s, Some(0.05), Some(scale), &mut |_| {})
            .unwrap()
    };
    let clean = decode(1, 0.0);
    assert!(max_abs_diff(&clean, &refs["pipeline.frames"]) <= 2e-3);
    assert_eq!(max_abs_diff(&clean, &decode(2, 0.0)), 0.0);
    let noisy = decode(1, 0.5);
    assert_eq!(max_abs_diff(&noisy, &decode(1, 0.5)), 0.0);
    assert!(max_abs_diff(&noisy, &clean) > 1e-3);
    assert!(max_abs_diff(&noisy, &decode(2, 0.5)) > 0.0);
}

#[test]
fn bf16_stays_close_to_the_f32_reference() {
    let refs = family_reference("ltx");
    let mut pipe = LtxPipeline::load(
        &family_fixture_dir("ltx").join("pipeline"),
        LoadOptions {
            dtype: candle_core::DType::BF16,
            ..LoadOptions::default()
        },
    )
    .unwrap();
    let out = pipe.generate(&fixture_request(), &mut |_| {}).unwrap();
    let err = max_abs_diff(&out.frames, &refs["pipeline.frames"]);
    println!("LTX bf16 frames max abs error {err:e}");
    assert!(err <= 0.1, "bf16 frames max abs error {err}");
}
