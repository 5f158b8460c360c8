//! CogVideoX 1.0 (THUDM/CogVideoX-2b, -5b): T5 text states, a joint-attention DiT over
//! `[text; video]` tokens, latents `(B, T, C, H, W)` with frames before channels.

pub mod config;
pub mod embeddings;
pub mod pipeline;
pub mod transformer;
pub mod vae;
mod vae_blocks;
pub mod vae_tiling;
