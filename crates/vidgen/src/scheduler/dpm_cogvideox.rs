//! CogVideoX's stochastic DPM-Solver++(2M) sampler: diffusers' `CogVideoXDPMScheduler`
//! (CogVideoX-5B's), over the same schedule as [`super::ddim_cogvideox`].
//!
//! In log-SNR `λ = ln sqrt(ᾱ / (1 - ᾱ))`, a step from `t` to `prev = t - N / n` with
//! `h = λ_prev - λ_t` is the SDE variant of DPM-Solver++:
//!
//! ```text
//! x_prev = sqrt((1 - ᾱ_prev) / (1 - ᾱ_t)) · e^(-h) · x
//!        - expm1(-2h) · sqrt(ᾱ_prev) · D
//!        + sqrt(1 - ᾱ_prev) · sqrt(1 - e^(-2h)) · z,          z ~ N(0, I)
//! ```
//!
//! where `D` is the predicted `x0` on the first step (and on the last, whose `ᾱ_prev` is the
//! final one), and otherwise the second-order blend `(1 + 1/2r) · x0 - (1/2r) · x0_old` of
//! this step's and the previous step's predictions, with `r = h_last / h` and `h_last` the
//! log-SNR gap from the previous timestep. The noise term is always on (the reference ignores
//! `eta`); it vanishes only on the last step when `set_alpha_to_one` (`ᾱ_prev = 1`).
//!
//! What differs from the reference: its `step` takes `old_pred_original_sample`, the previous
//! timestep and a `torch.Generator`, and on multistep steps draws two noise tensors and uses
//! the second. Here the scheduler keeps the previous prediction and timestep itself (reset by
//! `set_timesteps`), and the noise `z` is either given per step
//! ([`CogVideoXDPMScheduler::step_with_noise`], which reproduces the reference exactly given
//! the noise it used) or drawn from vidgen's own seeded generator ([`crate::noise::NoiseRng`],
//! seed from [`CogVideoXDPMScheduler::set_noise_seed`], 0 by default) by [`Scheduler::step`]:
//! the same seed gives the same video, but not the video PyTorch's generator would give.

use candle_core::Tensor;

use super::ddim_cogvideox::{compute_dtype, CogVideoXSchedule, CogVideoXSchedulerConfig};
use super::Scheduler;
use crate::noise::NoiseRng;
use crate::{Error, Result};

/// Stochastic second-order multistep steps over CogVideoX's schedule (see the module doc).
#[derive(Debug, Clone)]
pub struct CogVideoXDPMScheduler {
    schedule: CogVideoXSchedule,
    /// The timestep of the previous step (the reference's `timestep_back`).
    last_timestep: Option<i64>,
    /// The predicted `x0` of the previous step (`old_pred_original_sample`).
    old_pred_original_sample: Option<Tensor>,
    rng: NoiseRng,
}

impl CogVideoXDPMScheduler {
    pub const CLASS_NAME: &'static str = "CogVideoXDPMScheduler";

    /// Checks the config and computes the training schedule; the noise seed is 0.
    pub fn new(config: CogVideoXSchedulerConfig) -> Result<Self> {
        Ok(Self {
            schedule: CogVideoXSchedule::new(config, Self::CLASS_NAME)?,
            last_timestep: None,
            old_pred_original_sample: None,
            rng: NoiseRng::new(0),
        })
    }

    pub fn config(&self) -> &CogVideoXSchedulerConfig {
        &self.schedule.config
    }

    /// `ᾱ_t` of every training timestep, as the reference holds them.
    pub fn alphas_cumprod(&self) -> &[f64] {
        self.schedule.alphas_cumprod()
    }

    /// Restarts the noise that [`Scheduler::step`] draws from `seed`.
    pub fn set_noise_seed(&mut self, seed: u64) {
        self.rng = NoiseRng::new(seed);
    }

    /// The predicted `x0` of the last step (what the reference returns second).
    pub fn pred_original_sample(&self) -> Option<&Tensor> {
        self.old_pred_original_sample.as_ref()
    }

    /// One step with the given noise `z` (the sample's shape): the reference's
    /// `step(model_output, old_pred_original_sample, timestep, timestep_back, sample)` where
    /// `z` is the noise tensor it multiplied (its last `randn_tensor` draw of the step).
    /// Computed in f32 (f64 when an input is f64) and returned in that dtype.
    pub fn step_with_noise(
        &mut self,
        model_output: &Tensor,
        timestep: f64,
        sample: &Tensor,
        noise: &Tensor,
    ) -> candle_core::Result<Tensor> {
        let s = &self.schedule;
        let r = |x: f64| s.round(x);
        let (alpha_t, alpha_prev, prev) = s.step_alphas(timestep, Self::CLASS_NAME)?;
        let t = s.timestep_index(timestep, Self::CLASS_NAME)?;
        if noise.dims() != sample.dims() {
            candle_core::bail!(
                "{}: noise {:?} must have the sample's shape {:?}",
                Self::CLASS_NAME,
                noise.shape(),
                sample.shape()
            );
        }
        let (x0, sample) = s.pred_original_sample(model_output, sample, alpha_t)?;
        let noise = noise.to_dtype(compute_dtype(model_output, &sample))?;

        // log-SNR λ = ln sqrt(ᾱ / (1 - ᾱ)) and the gaps (the reference's `get_variables`)
        let lambda = |a: f64| r(r(r(a / r(1.0 - a)).sqrt()).ln());
        let (lambda_t, lambda_prev) = (lambda(alpha_t), lambda(alpha_prev));
        let h = r(lambda_prev - lambda_t);
        let mult_sample = r(r(r(r(1.0 - alpha_prev) / r(1.0 - alpha_t)).sqrt()) * r((-h).exp()));
        let mult_x0 = r(r(r(-2.0 * h).exp_m1()) * r(alpha_prev.sqrt()));
        let mult_noise = r(r(r(1.0 - alpha_prev).sqrt()) * r(r(1.0 - r(r(-2.0 * h).exp())).sqrt()));

        let back = self.last_timestep.filter(|_| prev >= 0);
        let denoised = match (back, &self.old_pred_original_sample) {
            (Some(back), Some(old_x0)) => {
                // second order: extrapolate x0 from this step's and the last step's
                let h_last = r(lambda_t - lambda(s.alpha_of(back)));
                let ratio = r(h_last / h);
                let inv_2r = r(1.0 / r(2.0 * ratio));
                let (mult_new, mult_old) = (r(1.0 + inv_2r), inv_2r);
                (x0.affine(mult_new, 0.0)? - old_x0.affine(mult_old, 0.0)?)?
            }
            // first step, or last (prev < 0): first order
            _ => x0.clone(),
        };
        let prev_sample = ((sample.affine(mult_sample, 0.0)? - denoised.affine(mult_x0, 0.0)?)?
            + noise.affine(mult_noise, 0.0)?)?;
        self.last_timestep = Some(t);
        self.old_pred_original_sample = Some(x0);
        Ok(prev_sample)
    }
}

impl Scheduler for CogVideoXDPMScheduler {
    fn class_name(&self) -> &'static str {
        Self::CLASS_NAME
    }

    /// Also forgets the previous step's prediction (not the noise generator's position).
    fn set_timesteps(&mut self, num_inference_steps: usize) -> Result<()> {
        self.schedule
            .set_timesteps(num_inference_steps, Self::CLASS_NAME)?;
        self.last_timestep = None;
        self.old_pred_original_sample = None;
        Ok(())
    }

    /// Integer training timesteps.
    fn timesteps(&self) -> &[f64] {
        self.schedule.timesteps()
    }

    /// `sqrt((1 - ᾱ) / ᾱ)` at each timestep and at the final `ᾱ`, as for the DDIM variant
    /// (for display; the reference keeps none).
    fn sigmas(&self) -> &[f64] {
        self.schedule.sigmas()
    }

    /// [`Self::step_with_noise`] with noise drawn from vidgen's generator (module doc).
    fn step(
        &mut self,
        model_output: &Tensor,
        timestep: f64,
        sample: &Tensor,
    ) -> candle_core::Result<Tensor> {
        let normals = self.rng.normals(sample.elem_count());
        let noise = Tensor::from_vec(normals, sample.shape(), &candle_core::Device::Cpu)?
            .to_device(sample.device())?;
        self.step_with_noise(model_output, timestep, sample, &noise)
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
    use candle_core::{DType, Device};

    fn scheduler() -> CogVideoXDPMScheduler {
        let config = serde_json::json!({
            "prediction_type": "v_prediction",
            "rescale_betas_zero_snr": true,
            "timestep_spacing": "trailing",
            "snr_shift_scale": 1.0,
        });
        CogVideoXDPMScheduler::new(serde_json::from_value(config).unwrap()).unwrap()
    }

    /// The same seed gives the same trajectory; `set_timesteps` forgets the old prediction.
    #[test]
    fn seeded_steps_repeat_and_last_step_is_noise_free() {
        let device = Device::Cpu;
        let sample = crate::noise::randn(1, (2, 3), &device).unwrap();
        let outputs: Vec<Tensor> = (0..4)
            .map(|i| crate::noise::randn(10 + i, (2, 3), &device).unwrap())
            .collect();
        let run = |seed: u64| {
            let mut s = scheduler();
            s.set_noise_seed(seed);
            s.set_timesteps(4).unwrap();
            let mut x = sample.clone();
            for (&t, v) in s.timesteps().to_vec().iter().zip(&outputs) {
                x = s.step(v, t, &x).unwrap();
            }
            x.flatten_all().unwrap().to_vec1::<f32>().unwrap()
        };
        assert_eq!(run(7), run(7));
        assert_ne!(run(7), run(8));

        // the last step (ᾱ_prev = 1) ignores the noise
        let mut s = scheduler();
        s.set_timesteps(4).unwrap();
        let zeros = Tensor::zeros((2, 3), DType::F32, &device).unwrap();
        let a = s
            .step_with_noise(&outputs[0], 249.0, &sample, &zeros)
            .unwrap();
        s.set_timesteps(4).unwrap();
        let b = s
            .step_with_noise(&outputs[0], 249.0, &sample, &outputs[1])
            .unwrap();
        let diff: f32 = (a - b)
            .unwrap()
            .abs()
            .unwrap()
            .max_all()
            .unwrap()
            .to_scalar()
            .unwrap();
        assert_eq!(diff, 0.0);
    }

    #[test]
    fn noise_of_the_wrong_shape_is_an_error() {
        let mut s = scheduler();
        s.set_timesteps(4).unwrap();
        let x = Tensor::zeros((2, 3), DType::F32, &Device::Cpu).unwrap();
        let z = Tensor::zeros(6, DType::F32, &Device::Cpu).unwrap();
        assert!(s.step_with_noise(&x, 999.0, &x, &z).is_err());
    }
}
