//! Shared by the CLI tests: comparing frames.

use std::path::Path;

use candle_core::{Device, Tensor};

/// Largest absolute difference between two f32 tensors of the same shape.
pub fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
    assert_eq!(a.dims(), b.dims(), "shapes differ");
    (a - b)
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap()
}

/// Largest difference between the frames `--save-frames` wrote to `path` and `want`.
pub fn saved_frames_error(path: &Path, want: &Tensor) -> f32 {
    let got = candle_core::safetensors::load(path, &Device::Cpu).unwrap()["frames"].clone();
    max_abs_diff(&got, want)
}
