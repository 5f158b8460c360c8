//! Parity of `WanTransformer3D` with diffusers 0.42.1 on the tiny fixture made by
//! `tools/fixtures/wan.py`.

mod common;

use candle_core::{DType, Device, Tensor};
use common::{fixture_dir, max_abs_diff};
use vidgen::checkpoint::{read_json, Weights};
use vidgen::families::wan::config::WanTransformerConfig;
use vidgen::families::wan::transformer::WanTransformer3D;

#[test]
fn transformer_matches_diffusers() {
    let dir = fixture_dir();
    let reference = common::reference();
    let cfg: WanTransformerConfig =
        read_json(&dir.join("pipeline/transformer/config.json")).unwrap();
    let weights =
        Weights::open(&dir.join("pipeline/transformer"), DType::F32, &Device::Cpu).unwrap();
    let model = WanTransformer3D::new(&cfg, weights.var_builder()).unwrap();
    assert_eq!(
        weights.unused(),
        Vec::<String>::new(),
        "checkpoint tensors the port ignores"
    );

    let out = model
        .forward(
            &reference["transformer.hidden_states"],
            &reference["transformer.timestep"],
            &reference["transformer.encoder_hidden_states"],
        )
        .unwrap();
    let want = &reference["transformer.output"];
    assert_eq!(out.dims(), want.dims());
    let err = max_abs_diff(&out, want);
    println!("transformer max abs error {err:e}");
    assert!(err <= 1e-4, "max abs error {err}");
}

#[test]
fn bf16_weights_stay_close_to_f32() {
    let dir = fixture_dir();
    let reference = common::reference();
    let cfg: WanTransformerConfig =
        read_json(&dir.join("pipeline/transformer/config.json")).unwrap();
    let weights =
        Weights::open(&dir.join("pipeline/transformer"), DType::BF16, &Device::Cpu).unwrap();
    let model = WanTransformer3D::new(&cfg, weights.var_builder()).unwrap();
    let out = model
        .forward(
            &reference["transformer.hidden_states"],
            &reference["transformer.timestep"],
            &reference["transformer.encoder_hidden_states"],
        )
        .unwrap();
    assert_eq!(out.dtype(), DType::BF16);
    let want = &reference["transformer.output"];
    let err = max_abs_diff(&out.to_dtype(DType::F32).unwrap(), want);
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
fn wrong_latent_channels_are_rejected_with_the_expected_shape() {
    let dir = fixture_dir();
    let cfg: WanTransformerConfig =
        read_json(&dir.join("pipeline/transformer/config.json")).unwrap();
    let weights =
        Weights::open(&dir.join("pipeline/transformer"), DType::F32, &Device::Cpu).unwrap();
    let model = WanTransformer3D::new(&cfg, weights.var_builder()).unwrap();
    let x = Tensor::zeros((1, 3, 1, 4, 4), DType::F32, &Device::Cpu).unwrap();
    let t = Tensor::zeros(1, DType::F32, &Device::Cpu).unwrap();
    let text = Tensor::zeros((1, 4, 32), DType::F32, &Device::Cpu).unwrap();
    let err = model.forward(&x, &t, &text).unwrap_err().to_string();
    assert!(err.contains("expected latents (B, 8, T, H, W)"), "{err}");
}
