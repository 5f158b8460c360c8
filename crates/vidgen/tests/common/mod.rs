//! Shared by the parity tests: where the fixtures are, and how far apart two tensors are.

use std::collections::HashMap;
use std::path::PathBuf;

use candle_core::{Device, Tensor};

/// `tests/fixtures/wan` of the repository (made by `tools/fixtures/wan.py`).
pub fn fixture_dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/wan")
}

/// The reference tensors diffusers computed for the fixture.
#[allow(dead_code)]
pub fn reference() -> HashMap<String, Tensor> {
    candle_core::safetensors::load(fixture_dir().join("reference.safetensors"), &Device::Cpu)
        .expect("tests/fixtures/wan/reference.safetensors")
}

/// Largest absolute difference between two tensors of the same shape, as f32.
pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims(), "shapes differ");
    let diff = (a.to_dtype(candle_core::DType::F32).unwrap()
        - b.to_dtype(candle_core::DType::F32).unwrap())
    .unwrap();
    diff.abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

/// `tests/fixtures/<family>` of the repository (made by `tools/fixtures/<family>.py`).
#[allow(dead_code)]
pub fn family_fixture_dir(family: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(format!("../../tests/fixtures/{family}"))
}

/// The reference tensors diffusers computed for the fixture of `family`.
#[allow(dead_code)]
pub fn family_reference(family: &str) -> HashMap<String, Tensor> {
    let path = family_fixture_dir(family).join("reference.safetensors");
    candle_core::safetensors::load(&path, &Device::Cpu)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}
