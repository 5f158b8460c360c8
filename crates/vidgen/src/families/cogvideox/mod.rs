//! CogVideoX (THUDM / ZhipuAI), diffusers' `CogVideoXPipeline`.

pub mod vae;
mod vae_blocks;
pub mod vae_tiling;
