//! Building blocks shared by the model families: device-agnostic candle code.

pub mod attention;
pub mod bf16_gemm;
pub mod conv3d;
pub mod embed;
pub mod flash;
pub mod fused;
pub mod linear;
pub mod norm;
pub mod patch;
pub mod rope;
pub mod step_cache;
