//! CogVideoX's DDIM sampler: diffusers' `CogVideoXDDIMScheduler`, and the schedule it shares
//! with `CogVideoXDPMScheduler` ([`super::dpm_cogvideox`]).
//!
//! The schedule is the discrete-time one of classic diffusion (`ᾱ_t` over N training
//! timesteps, `x_t = sqrt(ᾱ_t) · x0 + sqrt(1 - ᾱ_t) · ε`), changed twice for CogVideoX:
//!
//! 1. the SNR is shifted as in SD3, `ᾱ' = ᾱ / (s + (1 - s) · ᾱ)` with `s = snr_shift_scale`
//!    (the SNR `ᾱ / (1 - ᾱ)` is divided by `s` at every timestep);
//! 2. with `rescale_betas_zero_snr`, `sqrt(ᾱ')` is shifted to end at exactly 0 and scaled to
//!    keep its first value (arXiv:2305.08891, algorithm 1, applied to `ᾱ` directly: the
//!    last training timestep is pure noise, `ᾱ = 0`, unlike UniPC's `2^-24`).
//!
//! A DDIM step (η = 0, deterministic) predicts `x0` from the model output (`epsilon`,
//! `v_prediction` or `sample`), then keeps the implied noise direction:
//! `x_prev = a · x + b · x0` with `a = sqrt((1 - ᾱ_prev) / (1 - ᾱ_t))` and
//! `b = sqrt(ᾱ_prev) - sqrt(ᾱ_t) · a`. The previous timestep is `t - N / n` (integer division,
//! n inference steps), not the next entry of the schedule; below 0 its `ᾱ` is
//! `final_alpha_cumprod` (1 with `set_alpha_to_one`, else `ᾱ_0`).
//!
//! Precision, as in the reference: `ᾱ` is held in f64 when the betas come from an f64
//! linspace (`scaled_linear`, CogVideoX's) and in f32 otherwise; the per-step scalars are
//! computed in that dtype and rounded to f32 where they multiply the latents.
//! `clip_sample`, `clip_sample_range` and `sample_max_value` are read but, as in the
//! reference, never used: its step does not clip.

use candle_core::{DType, Tensor};
use serde::Deserialize;

use super::betas::{
    spaced_timesteps, squaredcos_cap_v2, torch_linspace_f32, torch_linspace_f64, BetaSchedule,
    TimestepSpacing,
};
use super::unipc::PredictionType;
use super::{bad_config, linspace, unsupported_option, warn_ignored_keys, Scheduler};
use crate::{Error, Result};

/// `scheduler_config.json` of a `CogVideoXDDIMScheduler` or `CogVideoXDPMScheduler` (the two
/// take the same keys with the same defaults); keys verbatim, defaults as in diffusers 0.42's
/// `__init__`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default)]
pub struct CogVideoXSchedulerConfig {
    /// Timesteps of the training schedule, `N`.
    pub num_train_timesteps: usize,
    pub beta_start: f64,
    pub beta_end: f64,
    pub beta_schedule: BetaSchedule,
    /// Betas given directly (`N` of them), instead of `beta_start` / `beta_end`.
    pub trained_betas: Option<Vec<f64>>,
    /// Not used, as in the reference (its step never clips).
    pub clip_sample: bool,
    /// Not used, as in the reference.
    pub clip_sample_range: f64,
    /// Not used, as in the reference.
    pub sample_max_value: f64,
    /// `ᾱ` before the first training timestep: 1 (true) or `ᾱ_0` (false).
    pub set_alpha_to_one: bool,
    /// Added to every timestep with `"leading"` spacing.
    pub steps_offset: i64,
    /// `epsilon`, `v_prediction` (CogVideoX's) or `sample`.
    pub prediction_type: PredictionType,
    pub timestep_spacing: TimestepSpacing,
    /// Rescale `ᾱ` so that the last training timestep has zero SNR.
    pub rescale_betas_zero_snr: bool,
    /// SD3's SNR shift `s` (1: none).
    pub snr_shift_scale: f64,
    /// Keys this struct does not know (`_class_name`, `_diffusers_version`, …).
    #[serde(flatten)]
    pub extra: serde_json::Map<String, serde_json::Value>,
}

impl Default for CogVideoXSchedulerConfig {
    fn default() -> Self {
        Self {
            num_train_timesteps: 1000,
            beta_start: 0.00085,
            beta_end: 0.012,
            beta_schedule: BetaSchedule::ScaledLinear,
            trained_betas: None,
            clip_sample: true,
            clip_sample_range: 1.0,
            sample_max_value: 1.0,
            set_alpha_to_one: true,
            steps_offset: 0,
            prediction_type: PredictionType::Epsilon,
            timestep_spacing: TimestepSpacing::Leading,
            rescale_betas_zero_snr: false,
            snr_shift_scale: 3.0,
            extra: Default::default(),
        }
    }
}

/// The float type the reference holds `ᾱ` and the step's scalars in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Precision {
    F32,
    F64,
}

impl Precision {
    /// Rounds an f64 result to this precision (one correctly rounded f32 operation equals the
    /// f64 operation rounded once to f32, for + - × ÷ and sqrt).
    fn round(self, x: f64) -> f64 {
        match self {
            Precision::F32 => x as f32 as f64,
            Precision::F64 => x,
        }
    }
}

/// The training schedule and inference timesteps shared by the CogVideoX schedulers.
#[derive(Debug, Clone)]
pub(crate) struct CogVideoXSchedule {
    pub(crate) config: CogVideoXSchedulerConfig,
    precision: Precision,
    /// `ᾱ_t` for `t = 0..N`, each value representable in `precision`.
    alphas_cumprod: Vec<f64>,
    /// `ᾱ` of a negative previous timestep.
    final_alpha_cumprod: f64,
    num_inference_steps: usize,
    timesteps: Vec<f64>,
    sigmas: Vec<f64>,
}

impl CogVideoXSchedule {
    /// Checks the config and computes `ᾱ` (module doc, steps 1 and 2).
    pub(crate) fn new(config: CogVideoXSchedulerConfig, class_name: &str) -> Result<Self> {
        warn_ignored_keys(class_name, &config.extra);
        let n = config.num_train_timesteps;
        if n == 0 {
            return Err(bad_config(
                class_name,
                "num_train_timesteps must be at least 1",
            ));
        }
        if config.prediction_type == PredictionType::FlowPrediction {
            return Err(unsupported_option(
                class_name,
                "prediction_type=flow_prediction",
                "epsilon, v_prediction, sample",
            ));
        }
        let (betas, precision): (Vec<f64>, _) = match (&config.trained_betas, config.beta_schedule)
        {
            (Some(betas), _) if betas.len() != n => {
                return Err(bad_config(
                    class_name,
                    format!(
                        "trained_betas has {} entries, num_train_timesteps is {n}",
                        betas.len()
                    ),
                ))
            }
            (Some(betas), _) => (
                betas.iter().map(|&b| b as f32 as f64).collect(),
                Precision::F32,
            ),
            (None, BetaSchedule::Linear) => (
                torch_linspace_f32(config.beta_start as f32, config.beta_end as f32, n)
                    .into_iter()
                    .map(f64::from)
                    .collect(),
                Precision::F32,
            ),
            // The reference squares an f64 linspace: the only f64 schedule.
            (None, BetaSchedule::ScaledLinear) => (
                torch_linspace_f64(config.beta_start.sqrt(), config.beta_end.sqrt(), n)
                    .into_iter()
                    .map(|b| b * b)
                    .collect(),
                Precision::F64,
            ),
            (None, BetaSchedule::SquaredcosCapV2) => (
                squaredcos_cap_v2(n).into_iter().map(f64::from).collect(),
                Precision::F32,
            ),
        };
        let r = |x: f64| precision.round(x);

        // ᾱ = cumprod(1 - β); PyTorch accumulates an f32 cumprod in f64, rounding each entry.
        let mut product = 1.0f64;
        let mut alphas_cumprod: Vec<f64> = betas
            .iter()
            .map(|&beta| {
                product *= r(1.0 - beta);
                r(product)
            })
            .collect();

        // 1. SNR shift: ᾱ / (s + (1 - s) ᾱ), the Python scalars first cast to the dtype.
        let s = r(config.snr_shift_scale);
        let one_minus_s = r(1.0 - config.snr_shift_scale);
        for a in alphas_cumprod.iter_mut() {
            *a = r(*a / r(s + r(one_minus_s * *a)));
        }
        // 2. zero terminal SNR, on sqrt(ᾱ)
        if config.rescale_betas_zero_snr {
            let mut sqrt_ab: Vec<f64> = alphas_cumprod.iter().map(|a| r(a.sqrt())).collect();
            let (first, last) = (sqrt_ab[0], sqrt_ab[n - 1]);
            let gain = r(first / r(first - last));
            sqrt_ab.iter_mut().for_each(|a| *a = r(r(*a - last) * gain));
            alphas_cumprod = sqrt_ab.iter().map(|a| r(a * a)).collect();
        }
        let final_alpha_cumprod = if config.set_alpha_to_one {
            1.0
        } else {
            alphas_cumprod[0]
        };
        Ok(Self {
            config,
            precision,
            alphas_cumprod,
            final_alpha_cumprod,
            num_inference_steps: 0,
            timesteps: Vec::new(),
            sigmas: Vec::new(),
        })
    }

    pub(crate) fn timesteps(&self) -> &[f64] {
        &self.timesteps
    }

    pub(crate) fn sigmas(&self) -> &[f64] {
        &self.sigmas
    }

    /// `ᾱ` of every training timestep (f64; f32 values unless the schedule is f64).
    /// `√ᾱ_t · original + √(1 − ᾱ_t) · noise` (DDPM's `add_noise`, in f32).
    pub(crate) fn add_noise(
        &self,
        original: &Tensor,
        noise: &Tensor,
        timestep: f64,
    ) -> candle_core::Result<Tensor> {
        let ab = usize::try_from(timestep as i64)
            .ok()
            .and_then(|t| self.alphas_cumprod.get(t))
            .ok_or_else(|| {
                candle_core::Error::Msg(format!("add_noise: no training timestep {timestep}"))
            })?;
        let ab = *ab as f32;
        super::mix(original, ab.sqrt(), noise, (1.0 - ab).sqrt())
    }

    pub(crate) fn alphas_cumprod(&self) -> &[f64] {
        &self.alphas_cumprod
    }

    /// The integer timesteps of `n` steps, descending, as the reference places them.
    pub(crate) fn set_timesteps(&mut self, n: usize, class_name: &str) -> Result<()> {
        let train = self.config.num_train_timesteps;
        if n == 0 || n > train {
            return Err(Error::InvalidRequest(format!(
                "{class_name}: the number of inference steps must be 1 to \
                 num_train_timesteps ({train}), got {n}"
            )));
        }
        let timesteps: Vec<i64> = match self.config.timestep_spacing {
            TimestepSpacing::Linspace => linspace(0.0, (train - 1) as f64, n)
                .into_iter()
                .rev()
                .map(|t| t.round_ties_even() as i64)
                .collect(),
            TimestepSpacing::Leading => {
                let ratio = (train / n) as i64;
                (0..n as i64)
                    .rev()
                    .map(|i| i * ratio + self.config.steps_offset)
                    .collect()
            }
            // numpy's float `arange` can give n + 1 timesteps, the last -1; the reference
            // runs them all (and reads ᾱ[-1] as the last entry, Python indexing).
            TimestepSpacing::Trailing => spaced_timesteps(TimestepSpacing::Trailing, train, 0, n),
        };
        self.num_inference_steps = n;
        self.timesteps = timesteps.iter().map(|&t| t as f64).collect();
        self.sigmas = timesteps
            .iter()
            .map(|&t| self.alpha_at(t).unwrap_or(f64::NAN))
            .chain([self.final_alpha_cumprod])
            .map(|a| ((1.0 - a) / a).sqrt())
            .collect();
        Ok(())
    }

    /// `ᾱ_t`, with Python's indexing (`-1` is the last entry); `None` out of range.
    fn alpha_at(&self, t: i64) -> Option<f64> {
        let n = self.alphas_cumprod.len() as i64;
        let index = if t < 0 { t + n } else { t };
        (0..n)
            .contains(&index)
            .then(|| self.alphas_cumprod[index as usize])
    }

    /// `(ᾱ_t, ᾱ_prev, prev)` of a step at `timestep`, `prev = t - N / n`.
    pub(crate) fn step_alphas(
        &self,
        timestep: f64,
        class_name: &str,
    ) -> candle_core::Result<(f64, f64, i64)> {
        if self.num_inference_steps == 0 {
            candle_core::bail!("{class_name}: call set_timesteps before step");
        }
        let t = self.timestep_index(timestep, class_name)?;
        let prev = t - (self.config.num_train_timesteps / self.num_inference_steps) as i64;
        let alpha_prev = match prev {
            p if p >= 0 => self.alpha_at(p).expect("0 <= prev < t < N"),
            _ => self.final_alpha_cumprod,
        };
        Ok((self.alpha_of(t), alpha_prev, prev))
    }

    /// `ᾱ` of a checked timestep.
    pub(crate) fn alpha_of(&self, t: i64) -> f64 {
        self.alpha_at(t)
            .expect("timestep checked by timestep_index")
    }

    /// An integer timestep of the training schedule (negative ones index from its end).
    pub(crate) fn timestep_index(
        &self,
        timestep: f64,
        class_name: &str,
    ) -> candle_core::Result<i64> {
        let t = timestep as i64;
        if t as f64 != timestep || self.alpha_at(t).is_none() {
            candle_core::bail!(
                "{class_name}: timestep {timestep} is not an integer in \
                 [-{n}, {n})",
                n = self.config.num_train_timesteps
            );
        }
        Ok(t)
    }

    /// Rounds a scalar of the step to the schedule's precision.
    pub(crate) fn round(&self, x: f64) -> f64 {
        self.precision.round(x)
    }

    /// The predicted `x0` (f32, or f64 when an input is f64) from the model output at a
    /// timestep whose `ᾱ` is `alpha_prod_t`; both inputs are converted to that dtype first.
    pub(crate) fn pred_original_sample(
        &self,
        model_output: &Tensor,
        sample: &Tensor,
        alpha_prod_t: f64,
    ) -> candle_core::Result<(Tensor, Tensor)> {
        let dtype = compute_dtype(model_output, sample);
        let (model_output, sample) = (model_output.to_dtype(dtype)?, sample.to_dtype(dtype)?);
        let beta_prod_t = self.round(1.0 - alpha_prod_t);
        let sqrt_alpha = self.round(alpha_prod_t.sqrt());
        let sqrt_beta = self.round(beta_prod_t.sqrt());
        let x0 = match self.config.prediction_type {
            // (x - sqrt(1 - ᾱ) ε) / sqrt(ᾱ): a true division, as PyTorch's CPU kernel does
            PredictionType::Epsilon => {
                let divisor = Tensor::new(sqrt_alpha, sample.device())?.to_dtype(dtype)?;
                (&sample - model_output.affine(sqrt_beta, 0.0)?)?.broadcast_div(&divisor)?
            }
            PredictionType::Sample => model_output,
            // sqrt(ᾱ) x - sqrt(1 - ᾱ) v
            PredictionType::VPrediction => {
                (sample.affine(sqrt_alpha, 0.0)? - model_output.affine(sqrt_beta, 0.0)?)?
            }
            PredictionType::FlowPrediction => unreachable!("rejected by new"),
        };
        Ok((x0, sample))
    }
}

/// f64 when either input is f64, else f32 (the reference's promotion with f32 model outputs).
pub(crate) fn compute_dtype(model_output: &Tensor, sample: &Tensor) -> DType {
    if model_output.dtype() == DType::F64 || sample.dtype() == DType::F64 {
        DType::F64
    } else {
        DType::F32
    }
}

/// Deterministic DDIM steps over CogVideoX's schedule (see the module doc).
#[derive(Debug, Clone)]
pub struct CogVideoXDDIMScheduler {
    schedule: CogVideoXSchedule,
}

impl CogVideoXDDIMScheduler {
    pub const CLASS_NAME: &'static str = "CogVideoXDDIMScheduler";

    /// Checks the config and computes the training schedule.
    pub fn new(config: CogVideoXSchedulerConfig) -> Result<Self> {
        Ok(Self {
            schedule: CogVideoXSchedule::new(config, Self::CLASS_NAME)?,
        })
    }

    pub fn config(&self) -> &CogVideoXSchedulerConfig {
        &self.schedule.config
    }

    /// `ᾱ_t` of every training timestep, as the reference holds them.
    pub fn alphas_cumprod(&self) -> &[f64] {
        self.schedule.alphas_cumprod()
    }

    /// One step that also returns the predicted `x0`: `(prev_sample, pred_original_sample)`,
    /// as the reference's `step(..., return_dict=False)`.
    pub fn step_with_x0(
        &self,
        model_output: &Tensor,
        timestep: f64,
        sample: &Tensor,
    ) -> candle_core::Result<(Tensor, Tensor)> {
        let s = &self.schedule;
        let (alpha_t, alpha_prev, _) = s.step_alphas(timestep, Self::CLASS_NAME)?;
        let (x0, sample) = s.pred_original_sample(model_output, sample, alpha_t)?;
        let a = s.round(
            s.round(s.round(1.0 - alpha_prev) / s.round(1.0 - alpha_t))
                .sqrt(),
        );
        let b = s.round(s.round(alpha_prev.sqrt()) - s.round(s.round(alpha_t.sqrt()) * a));
        let prev_sample = (sample.affine(a, 0.0)? + x0.affine(b, 0.0)?)?;
        Ok((prev_sample, x0))
    }
}

impl Scheduler for CogVideoXDDIMScheduler {
    fn class_name(&self) -> &'static str {
        Self::CLASS_NAME
    }

    fn set_timesteps(&mut self, num_inference_steps: usize) -> Result<()> {
        self.schedule
            .set_timesteps(num_inference_steps, Self::CLASS_NAME)
    }

    /// Integer training timesteps.
    fn timesteps(&self) -> &[f64] {
        self.schedule.timesteps()
    }

    /// `sqrt((1 - ᾱ) / ᾱ)` at each timestep, then at the final `ᾱ` (0 with
    /// `set_alpha_to_one`); infinite where `ᾱ = 0` (zero terminal SNR). The reference keeps no
    /// sigmas: these are for display.
    fn sigmas(&self) -> &[f64] {
        self.schedule.sigmas()
    }

    /// `x_prev = a · x + b · x0` (module doc), computed in f32 (f64 when an input is f64)
    /// and returned in that dtype, as the reference's type promotion gives with an f32 model
    /// output; the pipeline casts it back to the latents' dtype.
    fn step(
        &mut self,
        model_output: &Tensor,
        timestep: f64,
        sample: &Tensor,
    ) -> candle_core::Result<Tensor> {
        Ok(self.step_with_x0(model_output, timestep, sample)?.0)
    }

    fn init_noise_sigma(&self) -> f64 {
        1.0
    }

    /// `√ᾱ_t · original + √(1 − ᾱ_t) · noise` at the training timestep `timestep`.
    fn add_noise(
        &self,
        original: &Tensor,
        noise: &Tensor,
        timestep: f64,
    ) -> candle_core::Result<Tensor> {
        self.schedule.add_noise(original, noise, timestep)
    }

    fn set_shift(&mut self, _shift: f64) -> Result<()> {
        Err(Error::InvalidRequest(format!(
            "{} has no flow shift (its SNR shift is the config's snr_shift_scale)",
            Self::CLASS_NAME
        )))
    }

    /// Not used: the schedule has no dynamic shifting.
    fn set_mu(&mut self, _mu: Option<f64>) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scheduler(config: serde_json::Value) -> Result<CogVideoXDDIMScheduler> {
        CogVideoXDDIMScheduler::new(serde_json::from_value(config).unwrap())
    }

    #[test]
    fn spacings_and_prev_timestep() {
        let mut s = scheduler(serde_json::json!({"timestep_spacing": "trailing"})).unwrap();
        s.set_timesteps(4).unwrap();
        assert_eq!(s.timesteps(), [999.0, 749.0, 499.0, 249.0]);
        let mut s = scheduler(serde_json::json!({"steps_offset": 1})).unwrap();
        s.set_timesteps(4).unwrap();
        assert_eq!(s.timesteps(), [751.0, 501.0, 251.0, 1.0]);
        let mut s = scheduler(serde_json::json!({"timestep_spacing": "linspace"})).unwrap();
        s.set_timesteps(4).unwrap();
        assert_eq!(s.timesteps(), [999.0, 666.0, 333.0, 0.0]);
        let (_, alpha_prev, prev) = s.schedule.step_alphas(333.0, "test").unwrap();
        assert_eq!((prev, alpha_prev), (83, s.alphas_cumprod()[83]));
        let (_, alpha_prev, prev) = s.schedule.step_alphas(0.0, "test").unwrap();
        assert_eq!((prev, alpha_prev), (-250, 1.0));
        assert!(s.set_timesteps(0).is_err() && s.set_timesteps(1001).is_err());
    }

    #[test]
    fn zero_snr_ends_at_pure_noise_and_keeps_the_first_alpha() {
        let plain = scheduler(serde_json::json!({})).unwrap();
        let zero = scheduler(serde_json::json!({"rescale_betas_zero_snr": true})).unwrap();
        assert_eq!(zero.alphas_cumprod()[999], 0.0);
        assert!((zero.alphas_cumprod()[0] - plain.alphas_cumprod()[0]).abs() < 1e-12);
        // SNR shift 3: the SNR of ᾱ' is a third of the unshifted one
        let unshifted = scheduler(serde_json::json!({"snr_shift_scale": 1.0})).unwrap();
        let snr = |a: f64| a / (1.0 - a);
        let (a, b) = (plain.alphas_cumprod()[500], unshifted.alphas_cumprod()[500]);
        assert!((snr(a) * 3.0 / snr(b) - 1.0).abs() < 1e-9);
    }

    #[test]
    fn v_prediction_of_the_exact_velocity_recovers_x0() {
        let device = candle_core::Device::Cpu;
        let config = serde_json::json!({"prediction_type": "v_prediction"});
        let mut s = scheduler(config).unwrap();
        s.set_timesteps(10).unwrap();
        let t = s.timesteps()[3];
        let alpha = s.alphas_cumprod()[t as usize];
        let x0 = Tensor::new(&[0.5f32, -1.0, 2.0], &device).unwrap();
        let eps = Tensor::new(&[1.0f32, 0.25, -0.5], &device).unwrap();
        let (sa, sb) = (alpha.sqrt(), (1.0 - alpha).sqrt());
        let x_t = (x0.affine(sa, 0.0).unwrap() + eps.affine(sb, 0.0).unwrap()).unwrap();
        let v = (eps.affine(sa, 0.0).unwrap() - x0.affine(sb, 0.0).unwrap()).unwrap();
        let (_, pred) = s.step_with_x0(&v, t, &x_t).unwrap();
        let err: f32 = (pred - x0)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar()
            .unwrap();
        assert!(err < 1e-5, "{err}");
    }

    #[test]
    fn bad_configs_and_timesteps_are_errors() {
        assert!(scheduler(serde_json::json!({"prediction_type": "flow_prediction"})).is_err());
        assert!(scheduler(serde_json::json!({"trained_betas": [0.1, 0.2]})).is_err());
        let mut s = scheduler(serde_json::json!({})).unwrap();
        let x = Tensor::zeros(3, DType::F32, &candle_core::Device::Cpu).unwrap();
        assert!(s.step(&x, 999.0, &x).is_err(), "before set_timesteps");
        s.set_timesteps(10).unwrap();
        assert!(s.step(&x, 1000.0, &x).is_err());
        assert!(s.step(&x, 10.5, &x).is_err());
        assert!(s.set_shift(3.0).is_err());
    }
}
