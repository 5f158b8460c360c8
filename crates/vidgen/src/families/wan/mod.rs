//! Wan2.1 (and vidgen's own models, which share its architecture).

pub mod config;
pub mod init;
pub mod pipeline;
pub mod presets;
pub mod transformer;
pub mod vae;
mod vae_blocks;
mod vae_ops;
mod vae_resample;
pub(crate) mod vae_tiling;
