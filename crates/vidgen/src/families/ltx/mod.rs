//! LTX-Video (`LTXPipeline`, Lightricks): a DiT over packed latent tokens with fractional,
//! frame-rate-scaled RoPE, T5 text conditioning and a timestep-conditioned causal VAE.

pub mod config;
pub mod pipeline;
pub mod rope;
pub mod transformer;
pub mod vae;
mod vae_blocks;
mod vae_config;
mod vae_tiling;
