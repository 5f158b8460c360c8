//! The fast mode (first-block cache) against diffusers 0.42.1's `apply_first_block_cache` on
//! the tiny Wan, LTX-Video and CogVideoX pipelines (`tools/fixtures/step_cache.py`): the same
//! steps skipped, the same final latents.

mod common;

use candle_core::Tensor;
use common::{family_fixture_dir, family_reference, max_abs_diff};
use vidgen::families::cogvideox::pipeline::CogVideoXPipeline;
use vidgen::families::ltx::pipeline::LtxPipeline;
use vidgen::families::wan::pipeline::WanPipeline;
use vidgen::pipeline::{GenerateRequest, LoadOptions};

const STEPS: usize = 12;

/// The fixture's record of one family: thresholds with the steps diffusers computed in full.
fn runs(family: &str) -> Vec<(f64, usize)> {
    let path = family_fixture_dir("step_cache").join("reference.json");
    let meta: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
    let mut runs: Vec<(f64, usize)> = meta["runs"][family]["thresholds"]
        .as_object()
        .unwrap()
        .iter()
        .map(|(t, run)| {
            let computed = run["computed_steps"].as_u64().unwrap() as usize;
            (t.parse().unwrap(), computed)
        })
        .collect();
    runs.sort_by(|a, b| a.0.total_cmp(&b.0));
    runs
}

/// diffusers' final latents for `family` at `threshold` (0: no cache).
fn reference(family: &str, threshold: f64) -> Tensor {
    let refs = family_reference("step_cache");
    refs[&format!("{family}.{threshold:?}.final_latents")].clone()
}

/// Runs every threshold of the fixture through `denoise` (final latents and skipped steps)
/// and checks them against diffusers.
fn check(family: &str, mut denoise: impl FnMut(Option<f64>) -> (Tensor, usize)) {
    let runs = runs(family);
    assert!(runs.len() >= 3, "{family}: fixture has no cached runs");
    let uncached = reference(family, 0.0);
    let mut saw_partial = false;
    for (threshold, computed) in runs {
        let cache = (threshold > 0.0).then_some(threshold);
        let (latents, skipped) = denoise(cache);
        let expected = reference(family, threshold);
        let err = max_abs_diff(&latents, &expected);
        println!("{family} threshold {threshold}: skipped {skipped}, max abs error {err:e}");
        assert_eq!(
            STEPS - skipped,
            computed,
            "{family} {threshold}: steps run in full"
        );
        assert!(
            err <= 1e-4,
            "{family} {threshold}: final latents max abs error {err}"
        );
        if skipped > 0 {
            // skipping changes the result by far more than the tolerance
            let change = max_abs_diff(&expected, &uncached);
            assert!(
                change > 1e-3,
                "{family} {threshold}: skipping changed only {change}"
            );
            saw_partial |= computed > 1;
        }
    }
    assert!(
        saw_partial,
        "{family}: no threshold skipped only some steps"
    );
}

#[test]
fn wan_skips_the_steps_diffusers_skips() {
    let wan_refs = family_reference("wan");
    let dir = family_fixture_dir("wan").join("pipeline");
    let mut pipe = WanPipeline::load(&dir, LoadOptions::default()).unwrap();
    check("wan", |step_cache| {
        let request = GenerateRequest {
            prompt: "A red ball bounces".into(),
            num_inference_steps: Some(STEPS),
            guidance_scale: Some(1.0),
            max_sequence_length: Some(24),
            latents: Some(wan_refs["pipeline.unipc.latents"].clone()),
            step_cache,
            ..Default::default()
        };
        let out = pipe.generate(&request, &mut |_| {}).unwrap();
        assert_eq!(out.settings.step_cache, step_cache);
        (out.latents, out.skipped_steps)
    });
}

#[test]
fn ltx_skips_the_steps_diffusers_skips() {
    let ltx_refs = family_reference("ltx");
    let dir = family_fixture_dir("ltx").join("pipeline");
    let mut pipe = LtxPipeline::load(&dir, LoadOptions::default()).unwrap();
    check("ltx", |step_cache| {
        let request = GenerateRequest {
            prompt: "A red ball bounces slowly over a blue box".into(),
            negative_prompt: Some("blurry, static".into()),
            num_frames: Some(9),
            height: Some(32),
            width: Some(64),
            fps: Some(24),
            num_inference_steps: Some(STEPS),
            guidance_scale: Some(3.0),
            max_sequence_length: Some(16),
            latents: Some(ltx_refs["pipeline.latents"].clone()),
            step_cache,
            ..Default::default()
        };
        let (_, latents, _, skipped) = pipe.denoise(&request, &mut |_| {}).unwrap();
        (latents, skipped)
    });
}

#[test]
fn cogvideox_skips_the_steps_diffusers_skips() {
    let cog_refs = family_reference("cogvideox/2b");
    let dir = family_fixture_dir("cogvideox/2b").join("pipeline");
    let mut pipe = CogVideoXPipeline::load(&dir, LoadOptions::default()).unwrap();
    check("cogvideox_2b", |step_cache| {
        let request = GenerateRequest {
            prompt: "A red ball and a blue box bounce slowly".into(),
            negative_prompt: Some("blurry, static".into()),
            num_inference_steps: Some(STEPS),
            guidance_scale: Some(6.0),
            max_sequence_length: Some(16),
            latents: Some(cog_refs["pipeline.latents"].clone()),
            step_cache,
            ..Default::default()
        };
        let out = pipe.generate(&request, &mut |_| {}).unwrap();
        (out.latents, out.skipped_steps)
    });
}

#[test]
fn a_bad_threshold_is_refused_before_any_work() {
    let dir = family_fixture_dir("wan").join("pipeline");
    let pipe = WanPipeline::load(&dir, LoadOptions::default()).unwrap();
    for bad in [0.0, -0.1, f64::NAN, f64::INFINITY] {
        let request = GenerateRequest {
            prompt: "a ball".into(),
            step_cache: Some(bad),
            ..Default::default()
        };
        let err = pipe.resolve(&request).unwrap_err().to_string();
        assert!(err.contains("step cache threshold"), "{err}");
    }
}
