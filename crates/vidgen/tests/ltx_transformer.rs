//! Parity of `LtxVideoTransformer3D` with diffusers 0.42.1 on the tiny fixture made by
//! `tools/fixtures/ltx.py`: per-sample and per-token timesteps, with and without the text mask,
//! the pipeline's frame-rate-scaled RoPE positions.

mod common;

use std::collections::HashMap;

use candle_core::{DType, Device, Tensor};
use common::{family_fixture_dir, family_reference, max_abs_diff};
use vidgen::checkpoint::{read_json, Weights};
use vidgen::families::ltx::config::LtxVideoTransformer3DConfig;
use vidgen::families::ltx::rope::rope_interpolation_scale;
use vidgen::families::ltx::transformer::{LtxTransformerInputs, LtxVideoTransformer3D};

/// The fixture's latent grid `(T, H, W)` and frame rate (`reference.json`'s transformer_call).
const GRID: (usize, usize, usize) = (3, 4, 6);
const FRAME_RATE: f64 = 24.0;

fn load(dtype: DType) -> (LtxVideoTransformer3D, Weights) {
    let dir = family_fixture_dir("ltx").join("pipeline/transformer");
    let cfg: LtxVideoTransformer3DConfig = read_json(&dir.join("config.json")).unwrap();
    let weights = Weights::open(&dir, dtype, &Device::Cpu).unwrap();
    let model = LtxVideoTransformer3D::new(&cfg, weights.var_builder()).unwrap();
    (model, weights)
}

/// The scale as the pipeline computes it from the VAE (temporal 4, spatial 16) and frame rate;
/// checked against the value diffusers recorded.
fn scale(reference: &HashMap<String, Tensor>) -> [f64; 3] {
    let scale = rope_interpolation_scale(4, 16, FRAME_RATE);
    let recorded = reference["transformer.rope_interpolation_scale"]
        .to_vec1::<f64>()
        .unwrap();
    assert_eq!(recorded, scale.to_vec());
    scale
}

fn run(
    model: &LtxVideoTransformer3D,
    reference: &HashMap<String, Tensor>,
    timestep: &str,
    masked: bool,
) -> Tensor {
    model
        .forward(&LtxTransformerInputs {
            hidden_states: &reference["transformer.hidden_states"],
            encoder_hidden_states: &reference["transformer.encoder_hidden_states"],
            timestep: &reference[timestep],
            encoder_attention_mask: masked
                .then(|| &reference["transformer.encoder_attention_mask"]),
            latent_grid: GRID,
            rope_interpolation_scale: Some(scale(reference)),
        })
        .unwrap()
}

#[test]
fn transformer_matches_diffusers() {
    let reference = family_reference("ltx");
    let (model, weights) = load(DType::F32);
    assert_eq!(
        weights.unused(),
        Vec::<String>::new(),
        "checkpoint tensors the port ignores"
    );
    for (timestep, masked, want) in [
        ("transformer.timestep", true, "transformer.output"),
        (
            "transformer.timestep_per_token",
            true,
            "transformer.output_per_token",
        ),
        ("transformer.timestep", false, "transformer.output_no_mask"),
    ] {
        let out = run(&model, &reference, timestep, masked);
        let err = max_abs_diff(&out, &reference[want]);
        println!("{want}: max abs error {err:e}");
        assert!(err <= 1e-4, "{want}: max abs error {err}");
    }
    // The mask matters: the masked and unmasked references differ.
    let gap = max_abs_diff(
        &reference["transformer.output"],
        &reference["transformer.output_no_mask"],
    );
    assert!(gap > 1e-3, "mask changes the output by only {gap}");
}

#[test]
fn bf16_weights_stay_close_to_f32() {
    let reference = family_reference("ltx");
    let (model, _weights) = load(DType::BF16);
    let out = run(&model, &reference, "transformer.timestep", true);
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
fn bad_shapes_are_rejected_with_the_expected_shape() {
    let (model, _weights) = load(DType::F32);
    let dev = Device::Cpu;
    let tokens = Tensor::zeros((1, 72, 8), DType::F32, &dev).unwrap();
    let text = Tensor::zeros((1, 4, 32), DType::F32, &dev).unwrap();
    let t = Tensor::zeros(1, DType::F32, &dev).unwrap();
    let inputs = LtxTransformerInputs {
        hidden_states: &tokens,
        encoder_hidden_states: &text,
        timestep: &t,
        encoder_attention_mask: None,
        latent_grid: (3, 4, 5), // 60 tokens, not 72
        rope_interpolation_scale: None,
    };
    let err = model.forward(&inputs).unwrap_err().to_string();
    assert!(
        err.contains("expected packed latents (B, T·H·W, 8)"),
        "{err}"
    );

    let wide = Tensor::zeros((1, 72, 16), DType::F32, &dev).unwrap();
    let err = model
        .forward(&LtxTransformerInputs {
            hidden_states: &wide,
            latent_grid: (3, 4, 6),
            ..inputs
        })
        .unwrap_err()
        .to_string();
    assert!(err.contains("(B, 72, 8)"), "{err}");

    let mask = Tensor::ones((1, 5), DType::F32, &dev).unwrap();
    let err = model
        .forward(&LtxTransformerInputs {
            latent_grid: (3, 4, 6),
            encoder_attention_mask: Some(&mask),
            ..inputs
        })
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("expected encoder_attention_mask (1, 4)"),
        "{err}"
    );

    let t2 = Tensor::zeros((1, 5), DType::F32, &dev).unwrap();
    let err = model
        .forward(&LtxTransformerInputs {
            latent_grid: (3, 4, 6),
            timestep: &t2,
            ..inputs
        })
        .unwrap_err()
        .to_string();
    assert!(err.contains("expected timestep (1,) or (1, 72)"), "{err}");
}
