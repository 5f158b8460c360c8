//! CogVideoX (THUDM / ZhipuAI), diffusers' `CogVideoXPipeline`.

pub mod vae;
mod vae_blocks;
