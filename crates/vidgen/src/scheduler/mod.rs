//! Noise schedulers, one algorithm per file.
//!
//! A scheduler turns a step count into the timesteps the transformer is called at, and advances
//! the latents from one noise level to the next given the transformer's output there. The
//! pipeline writes the denoising loop out itself:
//!
//! ```text
//! scheduler.set_timesteps(steps)?;
//! latents = noise * scheduler.init_noise_sigma();
//! for &t in scheduler.timesteps() {
//!     let model_output = transformer(latents, t, text_states)?;   // + classifier-free guidance
//!     latents = scheduler.step(&model_output, t, &latents)?;
//! }
//! ```
//!
//! Which scheduler runs is the one `scheduler/scheduler_config.json` names (`_class_name`), with
//! its settings ([`from_config_file`]); an unsupported class or option is an error that says
//! what is supported, never a silent substitute.
//!
//! Over a discrete-time `ᾱ_t` schedule: UniPC (with betas), and CogVideoX's DDIM and
//! stochastic DPM-Solver++ ([`ddim_cogvideox`], [`dpm_cogvideox`]), whose timesteps are integer
//! training timesteps and whose model predicts `v` (or `ε`, or `x0`).
//!
//! Conventions shared by the flow-matching schedulers here: `sigma ∈ [0, 1]` is the noise level,
//! `x_sigma = (1 - sigma) · x0 + sigma · noise`, the timestep is `sigma · num_train_timesteps`,
//! and a flow model predicts the velocity `v = noise - x0`.

mod betas;
pub mod ddim_cogvideox;
pub mod dpm_cogvideox;
pub mod flow_match_euler;
pub mod unipc;

use std::path::{Path, PathBuf};

use candle_core::Tensor;
use serde::Deserialize;

use crate::{Error, Result};

pub use ddim_cogvideox::{CogVideoXDDIMScheduler, CogVideoXSchedulerConfig};
pub use dpm_cogvideox::CogVideoXDPMScheduler;
pub use flow_match_euler::{FlowMatchEulerDiscreteConfig, FlowMatchEulerDiscreteScheduler};
pub use unipc::{UniPCMultistepConfig, UniPCMultistepScheduler};

/// The scheduler classes vidgen runs, by their diffusers `_class_name`.
pub const SUPPORTED: &[&str] = &[
    UniPCMultistepScheduler::CLASS_NAME,
    FlowMatchEulerDiscreteScheduler::CLASS_NAME,
    CogVideoXDDIMScheduler::CLASS_NAME,
    CogVideoXDPMScheduler::CLASS_NAME,
];

/// A diffusion sampler as the pipeline's denoising loop uses it (see the module doc).
///
/// The call order is `set_timesteps`, then one `step` per entry of `timesteps()`, in order.
/// `set_timesteps` resets all stepping state, so one scheduler serves many generations.
pub trait Scheduler: Send {
    /// The diffusers class this scheduler reproduces, e.g. `"UniPCMultistepScheduler"`.
    fn class_name(&self) -> &'static str;

    /// Prepares `num_inference_steps` steps; errors on 0 (and, with `use_dynamic_shifting`,
    /// when no `mu` was given by [`Scheduler::set_mu`]).
    fn set_timesteps(&mut self, num_inference_steps: usize) -> Result<()>;

    /// The timesteps the model is called at, in order, valued exactly as the reference passes
    /// them to the transformer (UniPC: integers; FlowMatchEuler: `f32` values). Empty before
    /// `set_timesteps`. Its length can differ from the requested step count where the
    /// reference's does (UniPC `"trailing"` spacing at some counts).
    fn timesteps(&self) -> &[f64];

    /// The noise levels of the schedule, one more than `timesteps()` (the final one), as the
    /// reference holds them (`f32` values). For flow schedulers `sigma` is the weight of the
    /// noise; for UniPC over a betas schedule it is `sqrt((1 - ᾱ) / ᾱ)`.
    fn sigmas(&self) -> &[f64];

    /// Advances `sample` by one step given the model output at `timestep` (the next entry of
    /// `timesteps()`); returns the next sample. Tensors of any shape, both the same shape. See
    /// each scheduler for the dtype it computes and returns in.
    fn step(
        &mut self,
        model_output: &Tensor,
        timestep: f64,
        sample: &Tensor,
    ) -> candle_core::Result<Tensor>;

    /// Multiplier of the initial noise (1.0 for flow models and for UniPC).
    fn init_noise_sigma(&self) -> f64;

    /// `original` noised to the level of `timestep` (an entry of `timesteps()`), as diffusers'
    /// `add_noise` (flow-match Euler: `scale_noise`) does it: where video-to-video starts.
    /// Computed in f32, returned in `original`'s dtype.
    fn add_noise(
        &self,
        original: &Tensor,
        noise: &Tensor,
        timestep: f64,
    ) -> candle_core::Result<Tensor>;

    /// Overrides the config's `shift` / `flow_shift` (e.g. a pipeline's or user's flow shift);
    /// takes effect at the next `set_timesteps`. An error where the scheduler has no such
    /// setting in its current configuration.
    fn set_shift(&mut self, shift: f64) -> Result<()>;

    /// Sets `mu`, the amount of resolution-dependent shifting that `set_timesteps` applies when
    /// the config has `use_dynamic_shifting` (diffusers' `set_timesteps(mu=…)`). As in
    /// diffusers, it is not used when `use_dynamic_shifting` is false.
    fn set_mu(&mut self, mu: Option<f64>);
}

/// Reads a diffusers `scheduler_config.json` and builds the scheduler it names.
pub fn from_config_file(path: &Path) -> Result<Box<dyn Scheduler>> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let value: serde_json::Value = serde_json::from_str(&text).map_err(|e| Error::BadConfig {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    from_config_value(&value, path)
}

/// Builds the scheduler a parsed `scheduler_config.json` names (see [`from_config_file`]).
pub fn from_config_json(config: &serde_json::Value) -> Result<Box<dyn Scheduler>> {
    from_config_value(config, Path::new("scheduler_config.json"))
}

fn from_config_value(config: &serde_json::Value, path: &Path) -> Result<Box<dyn Scheduler>> {
    let class_name = config
        .get("_class_name")
        .and_then(|v| v.as_str())
        .ok_or_else(|| Error::BadConfig {
            path: path.to_path_buf(),
            reason: "no `_class_name` naming the scheduler class".into(),
        })?;
    let scheduler: Result<Box<dyn Scheduler>> = match class_name {
        UniPCMultistepScheduler::CLASS_NAME => {
            UniPCMultistepScheduler::new(parse_config(config, path)?).map(|s| Box::new(s) as _)
        }
        FlowMatchEulerDiscreteScheduler::CLASS_NAME => {
            FlowMatchEulerDiscreteScheduler::new(parse_config(config, path)?)
                .map(|s| Box::new(s) as _)
        }
        CogVideoXDDIMScheduler::CLASS_NAME => {
            CogVideoXDDIMScheduler::new(parse_config(config, path)?).map(|s| Box::new(s) as _)
        }
        CogVideoXDPMScheduler::CLASS_NAME => {
            CogVideoXDPMScheduler::new(parse_config(config, path)?).map(|s| Box::new(s) as _)
        }
        other => Err(Error::Unsupported {
            what: "scheduler",
            name: other.to_string(),
            supported: SUPPORTED.join(", "),
        }),
    };
    // The constructors only know the config, not the file it came from.
    scheduler.map_err(|e| match e {
        Error::BadConfig { reason, .. } => Error::BadConfig {
            path: path.to_path_buf(),
            reason,
        },
        e => e,
    })
}

/// Deserialises a config struct; keys the struct lacks are kept in its `extra` map (diffusers
/// ignores them too, with a warning).
fn parse_config<T: for<'de> Deserialize<'de>>(value: &serde_json::Value, path: &Path) -> Result<T> {
    T::deserialize(value).map_err(|e| Error::BadConfig {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })
}

/// Warns about config keys that the reference ignores too (it warns the same way).
fn warn_ignored_keys(class_name: &str, extra: &serde_json::Map<String, serde_json::Value>) {
    for key in extra.keys().filter(|k| !k.starts_with('_')) {
        tracing::warn!("{class_name}: config key `{key}` is not used (diffusers ignores it too)");
    }
}

/// A `BadConfig` error from a constructor; [`from_config_file`] fills in the real path.
fn bad_config(class_name: &str, reason: impl Into<String>) -> Error {
    Error::BadConfig {
        path: PathBuf::from(format!("<{class_name} config>")),
        reason: reason.into(),
    }
}

/// An `Unsupported` error for a config option vidgen does not implement.
fn unsupported_option(class_name: &str, name: impl Into<String>, supported: &str) -> Error {
    Error::Unsupported {
        what: "scheduler option",
        name: name.into(),
        supported: format!("{class_name}: {supported}"),
    }
}

/// How `mu` shifts the sigmas under `use_dynamic_shifting` (config key `time_shift_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TimeShiftType {
    /// `sigma' = e^mu / (e^mu + (1/sigma - 1))`
    Exponential,
    /// `sigma' = mu / (mu + (1/sigma - 1))`
    Linear,
}

impl TimeShiftType {
    /// Shifts one sigma by `mu` (the reference's `time_shift(mu, 1.0, sigma)`).
    fn shift(self, mu: f64, sigma: f64) -> f64 {
        match self {
            TimeShiftType::Exponential => mu.exp() / (mu.exp() + (1.0 / sigma - 1.0)),
            TimeShiftType::Linear => mu / (mu + (1.0 / sigma - 1.0)),
        }
    }
}

/// The static flow shift `shift · s / (1 + (shift - 1) · s)`: with `shift > 1` more of the
/// steps are spent at high noise.
fn flow_shift(shift: f64, sigma: f64) -> f64 {
    shift * sigma / (1.0 + (shift - 1.0) * sigma)
}

/// Stretches a decreasing schedule so that it ends at `terminal` instead of its last value
/// (LTX-Video's `shift_terminal`): `1 - s` is scaled so that `1 - s_last = 1 - terminal`.
fn stretch_to_terminal(sigmas: &mut [f64], terminal: f64) {
    let Some(&last) = sigmas.last() else { return };
    let scale = (1.0 - last) / (1.0 - terminal);
    for s in sigmas.iter_mut() {
        *s = 1.0 - (1.0 - *s) / scale;
    }
}

/// `numpy.linspace(start, stop, num)` bit for bit: `start + i · step`, the last value `stop`.
pub(crate) fn linspace(start: f64, stop: f64, num: usize) -> Vec<f64> {
    if num == 1 {
        return vec![start];
    }
    let step = (stop - start) / (num - 1) as f64;
    let mut values: Vec<f64> = (0..num).map(|i| i as f64 * step + start).collect();
    if let Some(last) = values.last_mut() {
        *last = stop;
    }
    values
}

/// `a · original + b · noise` in f32, returned in `original`'s dtype.
fn mix(original: &Tensor, a: f32, noise: &Tensor, b: f32) -> candle_core::Result<Tensor> {
    let dtype = original.dtype();
    let x = original.to_dtype(candle_core::DType::F32)?;
    let n = noise.to_dtype(candle_core::DType::F32)?;
    (x.affine(a as f64, 0.0)? + n.affine(b as f64, 0.0)?)?.to_dtype(dtype)
}

/// The index of `timestep` in `timesteps` for [`Scheduler::add_noise`], as the reference's
/// `index_for_timestep` picks it.
fn noise_index(timesteps: &[f64], timestep: f64) -> candle_core::Result<usize> {
    initial_step_index(timesteps, timestep).ok_or_else(|| {
        candle_core::Error::Msg(format!(
            "add_noise: timestep {timestep} is not in the schedule (call set_timesteps first)"
        ))
    })
}

/// The step index the reference starts from, given the first timestep passed to `step`: the
/// position of `timestep` in the schedule, the second one when it occurs more than once (so an
/// image-to-image start never skips a sigma).
fn initial_step_index(timesteps: &[f64], timestep: f64) -> Option<usize> {
    let mut matches = timesteps.iter().enumerate().filter(|(_, &t)| t == timestep);
    let first = matches.next()?.0;
    Some(matches.next().map_or(first, |(i, _)| i))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn linspace_matches_numpy_endpoints_and_spacing() {
        assert_eq!(linspace(1.0, 5.0, 5), vec![1.0, 2.0, 3.0, 4.0, 5.0]);
        assert_eq!(linspace(3.0, 7.0, 1), vec![3.0]);
        // values printed by numpy 2.4: `i * step + start` rounds differently from
        // `start + (stop - start) * i / div` at these points
        let v = linspace(1.0, 1.0 / 1000.0, 51);
        assert_eq!(
            (v[15], v[27], v[30]),
            (0.7002999999999999, 0.46053999999999995, 0.40059999999999996)
        );
        assert_eq!(v[50], 0.001);
    }

    #[test]
    fn initial_index_takes_second_duplicate() {
        assert_eq!(initial_step_index(&[9.0, 5.0, 5.0, 1.0], 5.0), Some(2));
        assert_eq!(initial_step_index(&[9.0, 5.0, 1.0], 9.0), Some(0));
        assert_eq!(initial_step_index(&[9.0, 5.0, 1.0], 4.0), None);
    }

    #[test]
    fn unknown_class_is_unsupported_and_names_the_supported_ones() {
        let err = from_config_json(&serde_json::json!({"_class_name": "DDIMScheduler"}))
            .err()
            .expect("DDIMScheduler is not supported");
        let msg = err.to_string();
        assert!(matches!(err, Error::Unsupported { .. }), "{msg}");
        assert!(msg.contains("DDIMScheduler") && msg.contains("UniPCMultistepScheduler"));
        assert!(msg.contains("FlowMatchEulerDiscreteScheduler"), "{msg}");
    }

    #[test]
    fn missing_class_name_and_bad_values_are_bad_config_with_the_path() {
        let err = from_config_json(&serde_json::json!({"shift": 3.0})).err();
        assert!(matches!(err, Some(Error::BadConfig { .. })), "{err:?}");

        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("scheduler_config.json");
        let config = r#"{"_class_name": "UniPCMultistepScheduler", "solver_type": "bh3"}"#;
        std::fs::write(&path, config).unwrap();
        match from_config_file(&path) {
            Err(Error::BadConfig { path: p, reason }) => {
                assert_eq!(p, path);
                assert!(reason.contains("bh3"), "{reason}");
            }
            other => panic!("expected BadConfig, got {:?}", other.err()),
        }
        let missing = dir.path().join("missing.json");
        assert!(matches!(from_config_file(&missing), Err(Error::Io { .. })));
    }
}
