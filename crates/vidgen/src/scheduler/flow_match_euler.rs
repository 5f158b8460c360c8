//! Flow-matching Euler sampler: diffusers' `FlowMatchEulerDiscreteScheduler`.
//!
//! A flow model sees `x_sigma = (1 - sigma) · x0 + sigma · noise` and predicts the velocity
//! `v = noise - x0`, the derivative of `x_sigma` in `sigma`. One Euler step moves the sample from
//! `sigma` to the next, lower level: `x_next = x + (sigma_next - sigma) · v`. The schedule spaces
//! the timesteps evenly between the training schedule's ends and bends the sigmas by the flow
//! shift (or by `mu`, with `use_dynamic_shifting`).

use candle_core::{DType, Tensor};
use serde::Deserialize;

use super::{
    bad_config, flow_shift, initial_step_index, linspace, stretch_to_terminal, unsupported_option,
    warn_ignored_keys, Scheduler, TimeShiftType,
};
use crate::{Error, Result};

/// `scheduler_config.json` of a `FlowMatchEulerDiscreteScheduler`; keys verbatim, defaults as in
/// diffusers 0.42's `__init__`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default)]
pub struct FlowMatchEulerDiscreteConfig {
    /// Timesteps of the training schedule; timestep = sigma · this.
    pub num_train_timesteps: usize,
    /// Static flow shift (`shift · s / (1 + (shift - 1) · s)`); unused with dynamic shifting.
    pub shift: f64,
    /// Shift by a resolution-dependent `mu` given at inference instead of by `shift`.
    pub use_dynamic_shifting: bool,
    /// `mu` at `base_image_seq_len` tokens (for [`Self::calculate_shift`]).
    pub base_shift: Option<f64>,
    /// `mu` at `max_image_seq_len` tokens (for [`Self::calculate_shift`]).
    pub max_shift: Option<f64>,
    pub base_image_seq_len: usize,
    pub max_image_seq_len: usize,
    /// Mochi: step over `1 - sigma` (noise to data reversed), ending at sigma 1.
    pub invert_sigmas: bool,
    /// LTX-Video: stretch the schedule to end at this sigma (0 or null: off).
    pub shift_terminal: Option<f64>,
    /// Respace the sigmas as Karras et al. (rho = 7) between the shifted ends.
    pub use_karras_sigmas: bool,
    /// Respace the sigmas log-linearly between the shifted ends.
    pub use_exponential_sigmas: bool,
    /// Beta-distribution spacing (not supported: an error).
    pub use_beta_sigmas: bool,
    pub time_shift_type: TimeShiftType,
    /// Re-noise at every step (not supported: an error; vidgen's noise is explicit).
    pub stochastic_sampling: bool,
    /// Keys this struct does not know (`_class_name`, `_diffusers_version`, …).
    #[serde(flatten)]
    pub extra: serde_json::Map<String, serde_json::Value>,
}

impl Default for FlowMatchEulerDiscreteConfig {
    fn default() -> Self {
        Self {
            num_train_timesteps: 1000,
            shift: 1.0,
            use_dynamic_shifting: false,
            base_shift: Some(0.5),
            max_shift: Some(1.15),
            base_image_seq_len: 256,
            max_image_seq_len: 4096,
            invert_sigmas: false,
            shift_terminal: None,
            use_karras_sigmas: false,
            use_exponential_sigmas: false,
            use_beta_sigmas: false,
            time_shift_type: TimeShiftType::Exponential,
            stochastic_sampling: false,
            extra: Default::default(),
        }
    }
}

impl FlowMatchEulerDiscreteConfig {
    /// The `mu` that diffusers' pipelines (Flux, LTX, …) compute for `image_seq_len` latent
    /// tokens: linear from `base_shift` at `base_image_seq_len` to `max_shift` at
    /// `max_image_seq_len`. `None` when either shift is null.
    pub fn calculate_shift(&self, image_seq_len: usize) -> Option<f64> {
        let (base, max) = (self.base_shift?, self.max_shift?);
        let m = (max - base) / (self.max_image_seq_len as f64 - self.base_image_seq_len as f64);
        let b = base - m * self.base_image_seq_len as f64;
        Some(image_seq_len as f64 * m + b)
    }
}

/// Euler steps over a flow-matching schedule (see the module doc).
#[derive(Debug, Clone)]
pub struct FlowMatchEulerDiscreteScheduler {
    config: FlowMatchEulerDiscreteConfig,
    /// The shift `set_timesteps` applies: the config's, or [`Scheduler::set_shift`]'s.
    shift: f64,
    mu: Option<f64>,
    /// Ends of the training schedule (f32 values), which inference spaces its timesteps between.
    sigma_max: f64,
    sigma_min: f64,
    timesteps: Vec<f64>,
    sigmas: Vec<f64>,
    step_index: Option<usize>,
}

impl FlowMatchEulerDiscreteScheduler {
    pub const CLASS_NAME: &'static str = "FlowMatchEulerDiscreteScheduler";

    /// Checks the config; unsupported options are errors that say what is supported.
    pub fn new(config: FlowMatchEulerDiscreteConfig) -> Result<Self> {
        let name = Self::CLASS_NAME;
        warn_ignored_keys(name, &config.extra);
        if config.num_train_timesteps == 0 {
            return Err(bad_config(name, "num_train_timesteps must be at least 1"));
        }
        let respacings = [
            config.use_karras_sigmas,
            config.use_exponential_sigmas,
            config.use_beta_sigmas,
        ];
        if respacings.iter().filter(|&&on| on).count() > 1 {
            return Err(bad_config(
                name,
                "only one of use_karras_sigmas, use_exponential_sigmas, use_beta_sigmas \
                 can be true",
            ));
        }
        if config.use_beta_sigmas {
            return Err(unsupported_option(
                name,
                "use_beta_sigmas=true",
                "use_karras_sigmas, use_exponential_sigmas or neither",
            ));
        }
        if config.stochastic_sampling {
            return Err(unsupported_option(
                name,
                "stochastic_sampling=true",
                "deterministic Euler steps (stochastic_sampling=false)",
            ));
        }
        // The training schedule: sigma = t / N for t = N..1 in f32, shifted in f32 unless the
        // shift is dynamic. Only its ends matter at inference.
        let n = config.num_train_timesteps as f32;
        let (sigma_max, sigma_min) = if config.use_dynamic_shifting {
            (1.0f32, 1.0 / n)
        } else {
            let shift_f32 =
                |s: f32| (config.shift as f32 * s) / (1.0 + (config.shift - 1.0) as f32 * s);
            (shift_f32(1.0), shift_f32(1.0 / n))
        };
        Ok(Self {
            shift: config.shift,
            config,
            mu: None,
            sigma_max: sigma_max as f64,
            sigma_min: sigma_min as f64,
            timesteps: Vec::new(),
            sigmas: Vec::new(),
            step_index: None,
        })
    }

    pub fn config(&self) -> &FlowMatchEulerDiscreteConfig {
        &self.config
    }

    /// The shift the next `set_timesteps` applies.
    pub fn shift(&self) -> f64 {
        self.shift
    }

    /// The sigmas of `num_inference_steps` steps before the final one is appended (f64, before
    /// the reference's cast to f32).
    fn inference_sigmas(&self, num_inference_steps: usize) -> Result<Vec<f64>> {
        let train_steps = self.config.num_train_timesteps as f64;
        // 1. timesteps evenly spaced between the ends of the training schedule
        let timesteps = linspace(
            self.sigma_max * train_steps,
            self.sigma_min * train_steps,
            num_inference_steps,
        );
        self.shape_sigmas(timesteps.iter().map(|t| t / train_steps).collect())
    }

    /// Steps 2–4 of the reference's `set_timesteps` on unshifted `sigmas`: shift, stretch to
    /// the terminal sigma, respace.
    fn shape_sigmas(&self, mut sigmas: Vec<f64>) -> Result<Vec<f64>> {
        let num_inference_steps = sigmas.len();
        // 2. shift: by mu (resolution-dependent) or by the static shift
        if self.config.use_dynamic_shifting {
            let mu = self.mu.ok_or_else(|| {
                Error::InvalidRequest(format!(
                    "{} with use_dynamic_shifting=true needs mu (Scheduler::set_mu) before \
                     set_timesteps",
                    Self::CLASS_NAME
                ))
            })?;
            sigmas
                .iter_mut()
                .for_each(|s| *s = self.config.time_shift_type.shift(mu, *s));
        } else {
            sigmas
                .iter_mut()
                .for_each(|s| *s = flow_shift(self.shift, *s));
        }
        // 3. stretch to end at shift_terminal (the reference treats 0 as off)
        if let Some(terminal) = self.config.shift_terminal.filter(|&t| t != 0.0) {
            stretch_to_terminal(&mut sigmas, terminal);
        }
        // 4. respace between the shifted ends
        let (first, last) = (sigmas[0], sigmas[sigmas.len() - 1]);
        if self.config.use_karras_sigmas {
            let rho = 7.0;
            let (max_inv_rho, min_inv_rho) = (first.powf(1.0 / rho), last.powf(1.0 / rho));
            sigmas = linspace(0.0, 1.0, num_inference_steps)
                .into_iter()
                .map(|ramp| (max_inv_rho + ramp * (min_inv_rho - max_inv_rho)).powf(rho))
                .collect();
        } else if self.config.use_exponential_sigmas {
            sigmas = linspace(first.ln(), last.ln(), num_inference_steps)
                .into_iter()
                .map(f64::exp)
                .collect();
        }
        Ok(sigmas)
    }

    /// Casts the shaped sigmas to f32 as the reference does, derives the timesteps
    /// (`sigma · N` in f32) and appends the final sigma.
    fn finish_schedule(&mut self, sigmas: Vec<f64>) {
        let mut sigmas: Vec<f32> = sigmas.into_iter().map(|s| s as f32).collect();
        let train_steps = self.config.num_train_timesteps as f32;
        let final_sigma = if self.config.invert_sigmas {
            sigmas.iter_mut().for_each(|s| *s = 1.0 - *s);
            1.0
        } else {
            0.0
        };
        self.timesteps = sigmas.iter().map(|&s| (s * train_steps) as f64).collect();
        sigmas.push(final_sigma);
        self.sigmas = sigmas.into_iter().map(f64::from).collect();
        self.step_index = None;
    }

    /// The reference's `set_timesteps(sigmas=…)`: the schedule starts from the caller's
    /// unshifted `sigmas` (one per step, rounded to f32 as the reference does) instead of the
    /// even spacing of the training schedule, then is shifted, stretched and respaced as in
    /// [`Scheduler::set_timesteps`]. `LTXPipeline` passes `linspace(1, 1/n, n)`.
    pub fn set_sigmas(&mut self, sigmas: &[f64]) -> Result<()> {
        if sigmas.is_empty() {
            return Err(Error::InvalidRequest(
                "the number of inference steps must be at least 1".into(),
            ));
        }
        let base = sigmas.iter().map(|&s| s as f32 as f64).collect();
        let sigmas = self.shape_sigmas(base)?;
        self.finish_schedule(sigmas);
        Ok(())
    }
}

impl Scheduler for FlowMatchEulerDiscreteScheduler {
    fn class_name(&self) -> &'static str {
        Self::CLASS_NAME
    }

    fn set_timesteps(&mut self, num_inference_steps: usize) -> Result<()> {
        if num_inference_steps == 0 {
            return Err(Error::InvalidRequest(
                "the number of inference steps must be at least 1".into(),
            ));
        }
        let sigmas = self.inference_sigmas(num_inference_steps)?;
        self.finish_schedule(sigmas);
        Ok(())
    }

    fn timesteps(&self) -> &[f64] {
        &self.timesteps
    }

    fn sigmas(&self) -> &[f64] {
        &self.sigmas
    }

    /// `x_next = x + (sigma_next - sigma) · v`, computed like the reference: the sample is
    /// upcast to f32, `dt · v` is computed in the model output's dtype, and the result is
    /// returned in the model output's dtype.
    fn step(
        &mut self,
        model_output: &Tensor,
        timestep: f64,
        sample: &Tensor,
    ) -> candle_core::Result<Tensor> {
        if self.timesteps.is_empty() {
            candle_core::bail!("{}: call set_timesteps before step", Self::CLASS_NAME);
        }
        let index = match self.step_index {
            Some(index) => index,
            None => initial_step_index(&self.timesteps, timestep).ok_or_else(|| {
                candle_core::Error::Msg(format!(
                    "{}: timestep {timestep} is not in the schedule {:?}",
                    Self::CLASS_NAME,
                    self.timesteps
                ))
            })?,
        };
        if index + 1 >= self.sigmas.len() {
            candle_core::bail!(
                "{}: step called after the last of {} timesteps",
                Self::CLASS_NAME,
                self.timesteps.len()
            );
        }
        // The reference subtracts the two f32 sigmas in f32.
        let dt = self.sigmas[index + 1] as f32 - self.sigmas[index] as f32;

        let out_dtype = model_output.dtype();
        // `dt · v` in the output's dtype, with `dt` first rounded to it: what PyTorch does for
        // a 0-d f32 tensor times a bf16 / f16 one (measured: bit for bit in bf16).
        let update = model_output.affine(dt as f64, 0.0)?;
        let sample = sample.to_dtype(DType::F32)?;
        let prev_sample = if out_dtype == DType::F64 {
            (sample.to_dtype(DType::F64)? + update)?
        } else {
            (sample + update.to_dtype(DType::F32)?)?
        };
        self.step_index = Some(index + 1);
        prev_sample.to_dtype(out_dtype)
    }

    fn init_noise_sigma(&self) -> f64 {
        1.0
    }

    /// diffusers' `scale_noise`: `σ · noise + (1 − σ) · original`.
    fn add_noise(
        &self,
        original: &Tensor,
        noise: &Tensor,
        timestep: f64,
    ) -> candle_core::Result<Tensor> {
        let index = super::noise_index(self.timesteps(), timestep)?;
        let sigma = self.sigmas()[index] as f32;
        super::mix(original, 1.0 - sigma, noise, sigma)
    }

    fn set_shift(&mut self, shift: f64) -> Result<()> {
        if self.config.use_dynamic_shifting {
            return Err(Error::InvalidRequest(format!(
                "{} has use_dynamic_shifting=true: its shift comes from mu (set_mu), not shift",
                Self::CLASS_NAME
            )));
        }
        self.shift = shift;
        Ok(())
    }

    fn set_mu(&mut self, mu: Option<f64>) {
        self.mu = mu;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn scheduler(config: serde_json::Value) -> Result<FlowMatchEulerDiscreteScheduler> {
        FlowMatchEulerDiscreteScheduler::new(serde_json::from_value(config).unwrap())
    }

    #[test]
    fn zero_steps_and_missing_mu_are_errors() {
        let mut s = scheduler(serde_json::json!({})).unwrap();
        assert!(matches!(s.set_timesteps(0), Err(Error::InvalidRequest(_))));
        let mut s = scheduler(serde_json::json!({"use_dynamic_shifting": true})).unwrap();
        let err = s.set_timesteps(4).unwrap_err().to_string();
        assert!(err.contains("mu"), "{err}");
        assert!(s.set_shift(3.0).is_err());
        s.set_mu(Some(0.5));
        s.set_timesteps(4).unwrap();
        assert_eq!(s.timesteps().len(), 4);
    }

    #[test]
    fn unsupported_options_are_named() {
        for (key, value) in [("use_beta_sigmas", true), ("stochastic_sampling", true)] {
            let err = scheduler(serde_json::json!({ key: value })).unwrap_err();
            assert!(matches!(err, Error::Unsupported { .. }), "{err}");
            assert!(err.to_string().contains(key), "{err}");
        }
        let both = serde_json::json!({"use_karras_sigmas": true, "use_exponential_sigmas": true});
        assert!(matches!(scheduler(both), Err(Error::BadConfig { .. })));
        let bad_type = serde_json::json!({"time_shift_type": "cubic"});
        assert!(serde_json::from_value::<FlowMatchEulerDiscreteConfig>(bad_type).is_err());
    }

    #[test]
    fn euler_step_is_sample_plus_dt_times_velocity() -> candle_core::Result<()> {
        let mut s = scheduler(serde_json::json!({"shift": 3.0})).unwrap();
        s.set_timesteps(4).unwrap();
        // shift 3 of 1.0 is 1.0: the first step starts from pure noise
        assert_eq!(
            (s.sigmas()[0], s.timesteps()[0], s.sigmas()[4]),
            (1.0, 1000.0, 0.0)
        );
        let sample = Tensor::new(&[1.0f32, -2.0], &Device::Cpu)?;
        let velocity = Tensor::new(&[0.5f32, 4.0], &Device::Cpu)?;
        let t0 = s.timesteps()[0];
        let next = s.step(&velocity, t0, &sample)?.to_vec1::<f32>()?;
        let dt = (s.sigmas()[1] - s.sigmas()[0]) as f32;
        assert_eq!(next, vec![1.0 + dt * 0.5, -2.0 + dt * 4.0]);
        // after the last step there is nothing left to step
        for &t in &s.timesteps()[1..].to_vec() {
            s.step(&velocity, t, &sample)?;
        }
        assert!(s.step(&velocity, 0.0, &sample).is_err());
        Ok(())
    }

    #[test]
    fn caller_sigmas_replace_the_even_spacing_then_are_shifted() {
        let mut s = scheduler(serde_json::json!({"shift": 1.0})).unwrap();
        s.set_sigmas(&[1.0, 0.5, 0.25]).unwrap();
        assert_eq!(s.sigmas(), &[1.0, 0.5, 0.25, 0.0]);
        assert_eq!(s.timesteps(), &[1000.0, 500.0, 250.0]);
        // shift 3: 3s / (1 + 2s)
        let mut s = scheduler(serde_json::json!({"shift": 3.0})).unwrap();
        s.set_sigmas(&[1.0, 0.5]).unwrap();
        assert_eq!(s.sigmas()[1], 0.75);
        assert!(matches!(s.set_sigmas(&[]), Err(Error::InvalidRequest(_))));
    }

    #[test]
    fn calculate_shift_interpolates_between_base_and_max() {
        let config = FlowMatchEulerDiscreteConfig::default();
        assert!((config.calculate_shift(256).unwrap() - 0.5).abs() < 1e-12);
        assert!((config.calculate_shift(4096).unwrap() - 1.15).abs() < 1e-12);
        let none = FlowMatchEulerDiscreteConfig {
            base_shift: None,
            ..Default::default()
        };
        assert_eq!(none.calculate_shift(1024), None);
    }
}
