//! Training vidgen's own models (`vidgen train`): the VAE (reconstruction + KL) and the DiT
//! (rectified-flow velocity loss) of a Wan-architecture model folder, on the procedural world
//! or a folder of captioned videos, bucketed by size.
//!
//! ```text
//! clips ──(bucket: frames, height, width)──► VAE run:  encode → sample z → decode, |x - x̂| + KL
//!                                        └─► DiT run:  frozen VAE → x₀; σ ~ logit-normal;
//!                                                      x_σ = (1-σ)x₀ + σε; DiT(x_σ, 1000σ, text) ≈ ε - x₀
//! ```
//!
//! `config` is the TOML run file, `data` the clip sources and the per-step batch plan, `optim`
//! AdamW + schedule + EMA, `run` the loop with checkpoints and export, `plot` the loss curve.

pub mod config;
pub mod data;
pub mod optim;
pub mod plot;
pub mod run;
mod samples;

pub use config::{Part, TrainConfig};
pub use run::{StepReport, Trainer};
