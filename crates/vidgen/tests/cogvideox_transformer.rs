//! Parity of `CogVideoXTransformer3D` with diffusers 0.42.1 on the two tiny fixtures made by
//! `tools/fixtures/cogvideox.py`: `2b` (3D sin-cos table) and `5b` (3D RoPE with a crop box).

mod common;

use std::collections::HashMap;
use std::path::PathBuf;

use candle_core::{DType, Device, Tensor};
use common::max_abs_diff;
use vidgen::checkpoint::{read_json, Weights};
use vidgen::families::cogvideox::config::CogVideoXTransformerConfig;
use vidgen::families::cogvideox::transformer::CogVideoXTransformer3D;

fn fixture(variant: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures/cogvideox")
        .join(variant)
}

fn reference(variant: &str) -> HashMap<String, Tensor> {
    let path = fixture(variant).join("reference.safetensors");
    candle_core::safetensors::load(&path, &Device::Cpu).expect("cogvideox reference.safetensors")
}

fn load(variant: &str, dtype: DType) -> CogVideoXTransformer3D {
    let dir = fixture(variant).join("pipeline/transformer");
    let cfg: CogVideoXTransformerConfig = read_json(&dir.join("config.json")).unwrap();
    let weights = Weights::open(&dir, dtype, &Device::Cpu).unwrap();
    let model = CogVideoXTransformer3D::new(&cfg, weights.var_builder()).unwrap();
    assert_eq!(
        weights.unused(),
        Vec::<String>::new(),
        "checkpoint tensors the port ignores"
    );
    model
}

fn check_transformer(variant: &str) {
    let reference = reference(variant);
    let model = load(variant, DType::F32);
    let out = model
        .forward(
            &reference["transformer.hidden_states"],
            &reference["transformer.encoder_hidden_states"],
            &reference["transformer.timestep"],
        )
        .unwrap();
    let want = &reference["transformer.output"];
    assert_eq!(out.dims(), want.dims());
    let err = max_abs_diff(&out, want);
    println!("{variant} transformer max abs error {err:e}");
    assert!(err <= 1e-4, "{variant}: max abs error {err}");
}

#[test]
fn transformer_2b_sincos_matches_diffusers() {
    check_transformer("2b");
}

#[test]
fn transformer_5b_rope_matches_diffusers() {
    check_transformer("5b");
}

/// The RoPE tables equal the pipeline's `_prepare_rotary_positional_embeddings` (whose crop box
/// relies on Python's round-half-to-even), for the transformer call and the pipeline's latents.
#[test]
fn rope_tables_match_the_pipeline() {
    let reference = reference("5b");
    let model = load("5b", DType::F32);
    for (prefix, latent) in [
        ("transformer", "transformer.hidden_states"),
        ("pipeline", "pipeline.latents"),
    ] {
        let (_, t, _, h, w) = reference[latent].dims5().unwrap();
        let (cos, sin) = model
            .rotary_tables((t, h, w), &Device::Cpu)
            .unwrap()
            .expect("5b is a RoPE model");
        // The reference repeats each pair's value twice: (N, d) -> keep every other column.
        for (got, name) in [(cos, "rope_cos"), (sin, "rope_sin")] {
            let want = &reference[&format!("{prefix}.{name}")];
            let (n, d) = want.dims2().unwrap();
            let halved = want
                .reshape((n, d / 2, 2))
                .unwrap()
                .narrow(2, 0, 1)
                .unwrap();
            let err = max_abs_diff(&got, &halved.squeeze(2).unwrap());
            assert!(err <= 1e-6, "{prefix}.{name}: max abs error {err}");
        }
    }
    assert!(load("2b", DType::F32)
        .rotary_tables((3, 4, 6), &Device::Cpu)
        .unwrap()
        .is_none());
}

/// Every step of the pipeline's CFG batch ([uncond, cond]) through the model: step `i` sees the
/// latents the scheduler left after step `i - 1` (the initial noise for step 0; DDIM's
/// `init_noise_sigma` is 1) and the scheduler's timestep.
#[test]
fn pipeline_noise_predictions_match_at_every_step() {
    for variant in ["2b", "5b"] {
        let reference = reference(variant);
        let model = load(variant, DType::F32);
        let text = Tensor::cat(
            &[
                &reference["text.negative_prompt_embeds"],
                &reference["text.prompt_embeds"],
            ],
            0,
        )
        .unwrap();
        let timesteps = reference["pipeline.timesteps"]
            .to_dtype(DType::F32)
            .unwrap();
        for step in 0..timesteps.dim(0).unwrap() {
            let latents = if step == 0 {
                reference["pipeline.latents"].clone()
            } else {
                reference["pipeline.step_latents"].get(step - 1).unwrap()
            };
            let batch = Tensor::cat(&[&latents, &latents], 0).unwrap();
            let t = timesteps.get(step).unwrap();
            let timestep = Tensor::stack(&[&t, &t], 0).unwrap();
            let out = model.forward(&batch, &text, &timestep).unwrap();
            let want = reference["pipeline.noise_pred"].get(step).unwrap();
            let err = max_abs_diff(&out, &want);
            println!("{variant} pipeline step {step} noise_pred max abs error {err:e}");
            assert!(err <= 1e-4, "{variant} step {step}: max abs error {err}");
        }
    }
}

#[test]
fn bf16_weights_stay_close_to_f32() {
    let reference = reference("5b");
    let model = load("5b", DType::BF16);
    let out = model
        .forward(
            &reference["transformer.hidden_states"],
            &reference["transformer.encoder_hidden_states"],
            &reference["transformer.timestep"],
        )
        .unwrap();
    assert_eq!(out.dtype(), DType::BF16);
    let want = &reference["transformer.output"];
    let err = max_abs_diff(&out, want);
    let scale = want
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    println!("bf16 transformer max abs error {err:e} (output scale {scale})");
    assert!(err <= 0.05 * scale.max(1.0), "bf16 error {err} too large");
}

#[test]
fn bad_shapes_are_rejected_with_the_expected_layout() {
    let model = load("5b", DType::F32);
    let dev = Device::Cpu;
    let t = Tensor::zeros(1, DType::F32, &dev).unwrap();
    let text = Tensor::zeros((1, 16, 32), DType::F32, &dev).unwrap();
    // Channels before frames (the Wan layout) is the classic mistake.
    let x = Tensor::zeros((1, 8, 3, 4, 6), DType::F32, &dev).unwrap();
    let err = model.forward(&x, &text, &t).unwrap_err().to_string();
    assert!(
        err.contains("expected latents (B, T, 8, H, W) (frames before channels)"),
        "{err}"
    );
    // Odd latent width with patch 2.
    let x = Tensor::zeros((1, 3, 8, 4, 5), DType::F32, &dev).unwrap();
    assert!(model.forward(&x, &text, &t).is_err());
    // Wrong text width.
    let x = Tensor::zeros((1, 3, 8, 4, 6), DType::F32, &dev).unwrap();
    let bad_text = Tensor::zeros((1, 16, 24), DType::F32, &dev).unwrap();
    let err = model.forward(&x, &bad_text, &t).unwrap_err().to_string();
    assert!(err.contains("expected text states (1, L, 32)"), "{err}");

    // The 2b sin-cos table reserves exactly max_text_seq_length text rows.
    let model = load("2b", DType::F32);
    let short_text = Tensor::zeros((1, 10, 32), DType::F32, &dev).unwrap();
    let err = model.forward(&x, &short_text, &t).unwrap_err().to_string();
    assert!(err.contains("max_sequence_length = 16"), "{err}");
}
