//! LTX-Video (`LTXPipeline`, Lightricks): a DiT over packed latent tokens with fractional,
//! frame-rate-scaled RoPE, T5 text conditioning and a timestep-conditioned causal VAE.

pub mod config;
pub mod rope;
pub mod transformer;
