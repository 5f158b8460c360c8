//! vidgen: Sora-style text-to-video generation.
//!
//! Modules are listed in the order data flows through them:
//!
//! ```text
//! prompt ──text::tokenizer──► text::t5 (T5 / UMT5) ──► text states (B, L, D_txt)
//!                                                         │ cross- or joint attention
//! seed ──noise──► latents (B, C, T, H, W)                 ▼
//!        └──► pipeline: denoise loop ── families::*::transformer (DiT over spacetime patches)
//!                       + classifier-free guidance, stepped by a `scheduler`
//!        latents ──► families::*::vae (3D causal VAE decoder) ──► frames (F, H, W, 3)
//! ```
//!
//! `checkpoint` reads diffusers-layout model folders; `nn` holds the shared building blocks;
//! `families` has one folder per model family (`wan` — also vidgen's own models — `ltx`,
//! `cogvideox`), each with its pipeline; `pipeline::load` opens a folder as the right one.
//!
//! Around the pipeline, for vidgen's own models: `data` draws the procedural physics world
//! they learn from (seed → truth → frames (F, H, W, 3) + caption), `train` fits a model
//! folder's VAE or DiT to it (or to a folder of captioned videos), and `eval` scores any
//! video against the truth its prompt came from (colour, shape, direction, trajectory,
//! object permanence, consistency).

pub mod error;

pub mod checkpoint;
pub mod memory;
pub mod nn;

pub mod text;

pub mod noise;
pub mod scheduler;

pub mod families;

pub mod pipeline;

pub mod info;

pub mod data;
pub mod eval;
pub mod train;

pub use error::{Error, Result};
