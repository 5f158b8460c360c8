//! LTX-Video (Lightricks), diffusers' `LTXPipeline` family.

pub mod vae;
mod vae_blocks;
mod vae_config;
mod vae_tiling;
