//! LTX-Video (Lightricks), diffusers' `LTXPipeline` family.

pub mod vae;
mod vae_blocks;
