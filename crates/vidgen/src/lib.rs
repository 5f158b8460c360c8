//! vidgen: Sora-style text-to-video generation.
//!
//! Modules are listed in the order data flows through them:
//!
//! ```text
//! prompt ──text::tokenizer──► text::umt5 ──► text states (B, L, D_txt)
//!                                                   │ cross-attention
//! seed ──noise──► latents (B, C, T, H, W)           ▼
//!        └──► pipeline: denoise loop ── families::wan::transformer (DiT over spacetime patches)
//!                       + classifier-free guidance, stepped by a `scheduler`
//!        latents ──► families::wan::vae (3D causal VAE decoder) ──► frames (F, H, W, 3)
//! ```
//!
//! `checkpoint` reads diffusers-layout model folders; `nn` holds the shared building blocks.

pub mod error;

pub mod checkpoint;
pub mod nn;

pub mod text;

pub mod noise;
pub mod scheduler;

pub mod families;

pub mod pipeline;

pub mod info;

pub use error::{Error, Result};
