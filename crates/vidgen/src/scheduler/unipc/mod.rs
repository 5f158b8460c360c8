//! UniPC, the unified predictor-corrector multistep solver (Zhao et al. 2023,
//! arXiv:2302.04867), in its B(h) variants: diffusers' `UniPCMultistepScheduler`.
//!
//! Noise levels are written `x_t = α_t · x0 + σ_t · ε`, with log-SNR `λ_t = ln(α_t / σ_t)`:
//!
//! * flow sigmas (`use_flow_sigmas`, Wan): `α = 1 - s`, `σ = s`, and a flow model's velocity
//!   `v = ε - x0` gives `x0 = x - s · v`;
//! * a betas schedule: `s = sqrt((1 - ᾱ) / ᾱ)`, `α = 1 / sqrt(1 + s²)`, `σ = s · α`.
//!
//! With `predict_x0` (data prediction; Wan) each model output is first turned into an x0
//! prediction `m`. One step from `s0` to `t`, `h = λ_t - λ_s0`, is
//!
//! ```text
//! x_t = (σ_t / σ_s0) · x_s0  -  α_t · (e^-h - 1) · m_s0  -  α_t · B(h) · Σ_k ρ_k · D_k
//! ```
//!
//! where `D_k = (m_sk - m_s0) / r_k` are divided differences to the outputs of earlier steps
//! `s_k`, at `r_k = (λ_sk - λ_s0) / h`, and `B(h)` is `-h` (`bh1`) or `e^-h - 1` (`bh2`).
//! The weights `ρ` solve the order conditions
//! `Σ_k ρ_k · r_k^(i-1) = i! · hh · φ_(i+1)(hh) / B(h)`, `i = 1..p`, with `hh = -h` and the
//! exponential-integrator functions `φ_1(x) = (e^x - 1) / x`,
//! `φ_(k+1)(x) = (φ_k(x) - 1/k!) / x`. With noise prediction (`predict_x0 = false`) `m` is
//! the ε prediction, `hh = h`, and the step is
//! `x_t = (α_t / α_s0) · x_s0 - σ_t · (e^h - 1) · m_s0 - σ_t · B(h) · Σ_k ρ_k · D_k`.
//!
//! * The predictor (UniP-p) uses the `p - 1` earlier outputs and solves the first `p - 1`
//!   conditions; for `p = 2` diffusers takes `ρ = 0.5` instead (kept: it is the reference).
//! * The corrector (UniC-p), once the model has been evaluated at the predicted `x_t`, redoes the
//!   same step from `x_s0` with the new output as one more difference `D = m_t - m_s0` (`r = 1`)
//!   and solves all `p` conditions; for `p = 1` diffusers takes `ρ = 0.5`. The corrected sample
//!   is where the next predictor starts.
//!
//! Numerics: tensor math in the sample's dtype, as the reference; the scalar coefficients in
//! f64. diffusers computes them as 0-d f32 tensors, and with a small `h` (order 3 over 50
//! steps) its f32 `λ` leaves the order conditions' right-hand side only a few correct digits:
//! there diffusers itself drifts up to 3e-5 from the same computation with f64 coefficients,
//! which vidgen matches to 2e-6. Elsewhere vidgen and diffusers agree to 2e-6 (parity tests).

use candle_core::{DType, Tensor};

mod config;

pub use config::{
    BetaSchedule, FinalSigmasType, PredictionType, SolverType, TimestepSpacing,
    UniPCMultistepConfig,
};

use super::betas::{alphas_cumprod, spaced_timesteps, TrainSchedule};
use super::{
    bad_config, flow_shift, initial_step_index, linspace, stretch_to_terminal, unsupported_option,
    warn_ignored_keys, Scheduler,
};
use crate::{Error, Result};

/// UniPC multistep sampling (see the module doc).
#[derive(Debug, Clone)]
pub struct UniPCMultistepScheduler {
    config: UniPCMultistepConfig,
    /// `sqrt((1 - ᾱ_t) / ᾱ_t)` of the training schedule (f32 as the reference); empty with flow
    /// sigmas.
    train_sigmas: Vec<f32>,
    mu: Option<f64>,
    timesteps: Vec<f64>,
    sigmas: Vec<f64>,
    step_index: Option<usize>,
    /// Converted outputs (x0 or ε predictions) of the last `solver_order` steps, oldest first.
    model_outputs: Vec<Tensor>,
    /// How many outputs are there to build on (the warm-up of the multistep method).
    lower_order_nums: usize,
    /// The order of the last predictor step, which the next corrector uses.
    this_order: usize,
    /// The sample the last predictor started from, which the corrector redoes the step from.
    last_sample: Option<Tensor>,
}

impl UniPCMultistepScheduler {
    pub const CLASS_NAME: &'static str = "UniPCMultistepScheduler";

    /// Checks the config; unsupported options are errors that say what is supported.
    pub fn new(config: UniPCMultistepConfig) -> Result<Self> {
        let name = Self::CLASS_NAME;
        warn_ignored_keys(name, &config.extra);
        for (on, option) in [
            (config.use_karras_sigmas, "use_karras_sigmas=true"),
            (config.use_exponential_sigmas, "use_exponential_sigmas=true"),
            (config.use_beta_sigmas, "use_beta_sigmas=true"),
        ] {
            if on {
                let supported = "use_flow_sigmas=true or the betas schedule's own sigmas";
                return Err(unsupported_option(name, option, supported));
            }
        }
        if config.thresholding {
            return Err(unsupported_option(
                name,
                "thresholding=true",
                "thresholding=false",
            ));
        }
        if config.solver_p.as_ref().is_some_and(|p| !p.is_null()) {
            return Err(unsupported_option(
                name,
                "solver_p",
                "solver_p=null (UniP predictor)",
            ));
        }
        if config.solver_order == 0 {
            return Err(bad_config(name, "solver_order must be at least 1"));
        }
        if config.num_train_timesteps < 2 {
            return Err(bad_config(name, "num_train_timesteps must be at least 2"));
        }
        let flow = config.use_flow_sigmas;
        if config.prediction_type == PredictionType::FlowPrediction && !flow {
            return Err(unsupported_option(
                name,
                "prediction_type=flow_prediction with use_flow_sigmas=false",
                "flow_prediction with use_flow_sigmas=true; epsilon, sample or v_prediction",
            ));
        }
        if config.shift_terminal.is_some() && !flow {
            return Err(bad_config(
                name,
                "shift_terminal needs use_flow_sigmas=true",
            ));
        }
        if !config.predict_x0 && config.prediction_type == PredictionType::FlowPrediction {
            return Err(bad_config(name, "flow_prediction needs predict_x0=true"));
        }
        let zero = config.final_sigmas_type == FinalSigmasType::Zero;
        // Both would divide by zero (or infinity) in the last step; diffusers 0.42 returns
        // NaN / inf samples there.
        if !config.predict_x0 && zero {
            return Err(bad_config(
                name,
                "predict_x0=false with final_sigmas_type=\"zero\" gives NaN in the last step \
                 (as in diffusers); use predict_x0=true or final_sigmas_type=\"sigma_min\"",
            ));
        }
        if !config.lower_order_final && config.solver_order > 1 && (zero || flow) {
            return Err(bad_config(
                name,
                "lower_order_final=false with solver_order > 1 divides by zero in the last \
                 step when the final sigma is 0 or (flow sigmas) repeats the last one; diffusers \
                 returns NaN/inf there. Use lower_order_final=true",
            ));
        }
        let train_sigmas = if flow {
            Vec::new()
        } else {
            let schedule = TrainSchedule {
                num_train_timesteps: config.num_train_timesteps,
                beta_start: config.beta_start,
                beta_end: config.beta_end,
                beta_schedule: config.beta_schedule,
                trained_betas: config.trained_betas.as_deref(),
                rescale_betas_zero_snr: config.rescale_betas_zero_snr,
            };
            let alphas_cumprod = alphas_cumprod(&schedule).map_err(|e| bad_config(name, e))?;
            alphas_cumprod
                .iter()
                .map(|ac| ((1.0 - ac) / ac).sqrt())
                .collect()
        };
        Ok(Self {
            config,
            train_sigmas,
            mu: None,
            timesteps: Vec::new(),
            sigmas: Vec::new(),
            step_index: None,
            model_outputs: Vec::new(),
            lower_order_nums: 0,
            this_order: 0,
            last_sample: None,
        })
    }

    pub fn config(&self) -> &UniPCMultistepConfig {
        &self.config
    }

    /// `(α, σ)` of the schedule's sigma at `index` (see the module doc).
    fn alpha_sigma(&self, index: usize) -> (f64, f64) {
        let sigma = self.sigmas[index];
        if self.config.use_flow_sigmas {
            (1.0 - sigma, sigma)
        } else {
            let alpha = 1.0 / (sigma * sigma + 1.0).sqrt();
            (alpha, sigma * alpha)
        }
    }

    /// Log-SNR `λ = ln α - ln σ` of the schedule's sigma at `index`.
    fn lambda(&self, index: usize) -> f64 {
        let (alpha, sigma) = self.alpha_sigma(index);
        alpha.ln() - sigma.ln()
    }

    /// Turns the model output at step `index` into what the solver works with: the x0
    /// prediction (`predict_x0`) or the ε prediction.
    fn convert_model_output(
        &self,
        model_output: &Tensor,
        sample: &Tensor,
        index: usize,
    ) -> candle_core::Result<Tensor> {
        let (alpha_t, sigma_t) = self.alpha_sigma(index);
        use PredictionType::*;
        match (self.config.predict_x0, self.config.prediction_type) {
            (true, Epsilon) => divide(&(sample - scale(model_output, sigma_t)?)?, alpha_t),
            (true, Sample) | (false, Epsilon) => Ok(model_output.clone()),
            (true, VPrediction) => scale(sample, alpha_t)? - scale(model_output, sigma_t)?,
            (true, FlowPrediction) => sample - scale(model_output, sigma_t)?,
            (false, Sample) => divide(&(sample - scale(model_output, alpha_t)?)?, sigma_t),
            (false, VPrediction) => scale(model_output, alpha_t)? + scale(sample, sigma_t)?,
            (false, FlowPrediction) => unreachable!("rejected by UniPCMultistepScheduler::new"),
        }
    }

    /// One B(h) update from the sigma at `s0` to the one at `t` (see the module doc), starting
    /// at `x`, with `m0` the converted output at `s0`. `history[k]` is the converted output at
    /// index `s0 - 1 - k`; `model_t`, when given, is the corrector's new output at `t`.
    fn bh_update(
        &self,
        x: &Tensor,
        (s0, t): (usize, usize),
        m0: &Tensor,
        history: &[&Tensor],
        model_t: Option<&Tensor>,
    ) -> candle_core::Result<Tensor> {
        let (alpha_t, sigma_t) = self.alpha_sigma(t);
        let (alpha_s0, sigma_s0) = self.alpha_sigma(s0);
        let lambda_s0 = self.lambda(s0);
        let h = self.lambda(t) - lambda_s0;

        // divided differences to earlier outputs, at r_k = (λ_sk - λ_s0) / h
        let mut rks = Vec::with_capacity(history.len() + 1);
        let mut d1s = Vec::with_capacity(history.len() + 1);
        for (k, mk) in history.iter().enumerate() {
            let rk = (self.lambda(s0 - 1 - k) - lambda_s0) / h;
            d1s.push(divide(&(*mk - m0)?, rk)?);
            rks.push(rk);
        }
        rks.push(1.0);
        let order = rks.len();

        let hh = if self.config.predict_x0 { -h } else { h };
        let h_phi_1 = hh.exp_m1(); // hh · φ_1(hh)
        let b_h = match self.config.solver_type {
            SolverType::Bh1 => hh,
            SolverType::Bh2 => hh.exp_m1(),
        };
        // order conditions: R[i][k] = r_k^i, b[i] = (i+1)! · hh · φ_(i+2)(hh) / B(h)
        let mut r = Vec::with_capacity(order);
        let mut b = Vec::with_capacity(order);
        let mut h_phi_k = h_phi_1 / hh - 1.0; // hh · φ_2(hh)
        let mut factorial = 1.0;
        for i in 1..=order {
            r.push(
                rks.iter()
                    .map(|rk| rk.powi(i as i32 - 1))
                    .collect::<Vec<_>>(),
            );
            b.push(h_phi_k * factorial / b_h);
            factorial *= (i + 1) as f64;
            h_phi_k = h_phi_k / hh - 1.0 / factorial;
        }

        // Σ ρ_k D_k over the earlier outputs, plus ρ_t (m_t - m0) for the corrector
        let (rhos, d_t) = match model_t {
            None => {
                let rhos = match order {
                    1 => vec![],
                    2 => vec![0.5], // the reference's shortcut for UniP-2
                    _ => solve(&truncate(&r, order - 1), &b[..order - 1]),
                };
                (rhos, None)
            }
            Some(model_t) => {
                let rhos = match order {
                    1 => vec![0.5], // the reference's shortcut for UniC-1
                    _ => solve(&r, &b),
                };
                (rhos, Some((model_t - m0)?))
            }
        };
        let mut terms: Vec<Tensor> = Vec::with_capacity(order);
        for (rho, d1) in rhos.iter().zip(&d1s) {
            terms.push(scale(d1, *rho)?);
        }
        if let Some(d_t) = d_t {
            terms.push(scale(&d_t, rhos[order - 1])?);
        }
        let residual = match terms.split_first() {
            Some((first, rest)) => Some(rest.iter().try_fold(first.clone(), |acc, t| acc + t)?),
            None => None,
        };

        let (x_coef, m0_coef, res_coef) = if self.config.predict_x0 {
            (sigma_t / sigma_s0, alpha_t * h_phi_1, alpha_t * b_h)
        } else {
            (alpha_t / alpha_s0, sigma_t * h_phi_1, sigma_t * b_h)
        };
        let x_t = (scale(x, x_coef)? - scale(m0, m0_coef)?)?;
        match residual {
            // Without a residual the reference subtracts `coef · 0`, which is NaN when the
            // final sigma is 0 with bh1 (B(h) = -inf); the exact value is x_t as it stands.
            None => Ok(x_t),
            Some(residual) => x_t - scale(&residual, res_coef)?,
        }
    }
}

/// `c · t` as PyTorch computes a 0-d scalar tensor times `t` (the reference's
/// `alpha_t * h_phi_1 * m0`): the scalar rounded to `t`'s dtype, the product in `t`'s dtype.
fn scale(t: &Tensor, c: f64) -> candle_core::Result<Tensor> {
    t.affine(c, 0.0)
}

/// `t / c` as PyTorch computes it for a 0-d f32 tensor `c`: a true division (not a
/// multiplication by `1 / c`), in f32 for reduced precision dtypes.
fn divide(t: &Tensor, c: f64) -> candle_core::Result<Tensor> {
    let c = match t.dtype() {
        DType::F64 => Tensor::new(c, t.device())?,
        _ => Tensor::new(c as f32, t.device())?,
    };
    t.to_dtype(c.dtype())?
        .broadcast_div(&c)?
        .to_dtype(t.dtype())
}

/// The top-left `n × n` block of `r`.
fn truncate(r: &[Vec<f64>], n: usize) -> Vec<Vec<f64>> {
    r[..n].iter().map(|row| row[..n].to_vec()).collect()
}

/// Solves `a · x = b` by Gaussian elimination with partial pivoting (`a` is at most
/// `solver_order × solver_order`).
fn solve(a: &[Vec<f64>], b: &[f64]) -> Vec<f64> {
    let n = b.len();
    let mut m: Vec<Vec<f64>> = a
        .iter()
        .zip(b)
        .map(|(row, &bi)| [&row[..], &[bi]].concat())
        .collect();
    for col in 0..n {
        let pivot = (col..n)
            .max_by(|&i, &j| m[i][col].abs().total_cmp(&m[j][col].abs()))
            .unwrap_or(col);
        m.swap(col, pivot);
        let (upper, lower) = m.split_at_mut(col + 1);
        let pivot_row = &upper[col];
        for row in lower {
            let f = row[col] / pivot_row[col];
            for (x, p) in row.iter_mut().zip(pivot_row).skip(col) {
                *x -= f * p;
            }
        }
    }
    let mut x = vec![0.0; n];
    for row in (0..n).rev() {
        let tail: f64 = (row + 1..n).map(|k| m[row][k] * x[k]).sum();
        x[row] = (m[row][n] - tail) / m[row][row];
    }
    x
}

impl Scheduler for UniPCMultistepScheduler {
    fn class_name(&self) -> &'static str {
        Self::CLASS_NAME
    }

    fn set_timesteps(&mut self, num_inference_steps: usize) -> Result<()> {
        if num_inference_steps == 0 {
            return Err(Error::InvalidRequest(
                "the number of inference steps must be at least 1".into(),
            ));
        }
        let (timesteps, sigmas) = if self.config.use_flow_sigmas {
            self.flow_schedule(num_inference_steps)?
        } else {
            if self.config.use_dynamic_shifting && self.mu.is_none() {
                return Err(missing_mu());
            }
            self.betas_schedule(num_inference_steps)
        };
        self.timesteps = timesteps;
        self.sigmas = sigmas.into_iter().map(f64::from).collect();
        self.step_index = None;
        self.model_outputs.clear();
        self.lower_order_nums = 0;
        self.this_order = 0;
        self.last_sample = None;
        Ok(())
    }

    fn timesteps(&self) -> &[f64] {
        &self.timesteps
    }

    fn sigmas(&self) -> &[f64] {
        &self.sigmas
    }

    /// Corrects `sample` with the new model output (UniC, unless disabled at this step), then
    /// predicts the next sample (UniP). The model output is cast to the sample's dtype; the
    /// result has the sample's dtype.
    fn step(
        &mut self,
        model_output: &Tensor,
        timestep: f64,
        sample: &Tensor,
    ) -> candle_core::Result<Tensor> {
        if self.timesteps.is_empty() {
            candle_core::bail!("{}: call set_timesteps before step", Self::CLASS_NAME);
        }
        // the reference falls back to the last step for a timestep it does not know
        let index = self.step_index.unwrap_or_else(|| {
            initial_step_index(&self.timesteps, timestep).unwrap_or(self.timesteps.len() - 1)
        });
        if index >= self.timesteps.len() {
            candle_core::bail!(
                "{}: step called after the last of {} timesteps",
                Self::CLASS_NAME,
                self.timesteps.len()
            );
        }
        let model_output = model_output.to_dtype(sample.dtype())?;
        let converted = self.convert_model_output(&model_output, sample, index)?;

        // 1. corrector: redo the last step from `last_sample` with this output included
        let sample = match &self.last_sample {
            Some(last_sample)
                if index > 0 && !self.config.disable_corrector.contains(&(index - 1)) =>
            {
                let n = self.model_outputs.len();
                let m0 = &self.model_outputs[n - 1];
                let history: Vec<&Tensor> = (1..self.this_order)
                    .map(|k| &self.model_outputs[n - 1 - k])
                    .collect();
                self.bh_update(
                    last_sample,
                    (index - 1, index),
                    m0,
                    &history,
                    Some(&converted),
                )?
            }
            _ => sample.clone(),
        };

        // 2. remember this output; at most `solver_order` are kept
        self.model_outputs.push(converted);
        if self.model_outputs.len() > self.config.solver_order {
            self.model_outputs.remove(0);
        }

        // 3. predictor, of the highest order the history allows (lower near the end)
        let order = if self.config.lower_order_final {
            self.config.solver_order.min(self.timesteps.len() - index)
        } else {
            self.config.solver_order
        };
        self.this_order = order.min(self.lower_order_nums + 1);
        let n = self.model_outputs.len();
        let m0 = &self.model_outputs[n - 1];
        let history: Vec<&Tensor> = (1..self.this_order)
            .map(|k| &self.model_outputs[n - 1 - k])
            .collect();
        let prev_sample = self.bh_update(&sample, (index, index + 1), m0, &history, None)?;

        self.last_sample = Some(sample);
        self.lower_order_nums = (self.lower_order_nums + 1).min(self.config.solver_order);
        self.step_index = Some(index + 1);
        Ok(prev_sample)
    }

    fn init_noise_sigma(&self) -> f64 {
        1.0
    }

    fn add_noise(
        &self,
        original: &Tensor,
        noise: &Tensor,
        timestep: f64,
    ) -> candle_core::Result<Tensor> {
        let (alpha, sigma) = self.alpha_sigma(super::noise_index(&self.timesteps, timestep)?);
        super::mix(original, alpha as f32, noise, sigma as f32)
    }

    fn set_shift(&mut self, shift: f64) -> Result<()> {
        if !self.config.use_flow_sigmas || self.config.use_dynamic_shifting {
            return Err(Error::InvalidRequest(format!(
                "{}: flow_shift applies only with use_flow_sigmas=true and \
                 use_dynamic_shifting=false",
                Self::CLASS_NAME
            )));
        }
        self.config.flow_shift = shift;
        Ok(())
    }

    fn set_mu(&mut self, mu: Option<f64>) {
        self.mu = mu;
    }
}

impl UniPCMultistepScheduler {
    /// Timesteps and sigmas (f32, with the final one) of the flow schedule: `n` sigmas evenly
    /// spaced from 1 towards `1 / N`, shifted, integer timesteps `trunc(sigma · N)`.
    fn flow_schedule(&self, num_inference_steps: usize) -> Result<(Vec<f64>, Vec<f32>)> {
        let train_steps = self.config.num_train_timesteps as f64;
        let mut sigmas = linspace(1.0, 1.0 / train_steps, num_inference_steps + 1);
        sigmas.pop();
        if self.config.use_dynamic_shifting {
            let mu = self.mu.ok_or_else(missing_mu)?;
            let shift_type = self.config.time_shift_type;
            sigmas
                .iter_mut()
                .for_each(|s| *s = shift_type.shift(mu, *s));
        } else {
            sigmas
                .iter_mut()
                .for_each(|s| *s = flow_shift(self.config.flow_shift, *s));
        }
        if let Some(terminal) = self.config.shift_terminal.filter(|&t| t != 0.0) {
            stretch_to_terminal(&mut sigmas, terminal);
        }
        // α = 1 - σ must not be 0: λ would be -inf in the first updates
        if (sigmas[0] - 1.0).abs() < 1e-6 {
            sigmas[0] -= 1e-6;
        }
        let timesteps = sigmas.iter().map(|s| (s * train_steps).trunc()).collect();
        let last = match self.config.final_sigmas_type {
            FinalSigmasType::Zero => 0.0,
            FinalSigmasType::SigmaMin => sigmas[sigmas.len() - 1],
        };
        sigmas.push(last);
        Ok((timesteps, sigmas.into_iter().map(|s| s as f32).collect()))
    }

    /// Timesteps and sigmas (f32, with the final one) over the betas schedule: the spaced
    /// integer timesteps and the training sigmas there.
    fn betas_schedule(&self, num_inference_steps: usize) -> (Vec<f64>, Vec<f32>) {
        let config = &self.config;
        let timesteps = spaced_timesteps(
            config.timestep_spacing,
            config.num_train_timesteps,
            config.steps_offset,
            num_inference_steps,
        );
        // numpy.interp at integer points, clamped to the ends like it
        let last = self.train_sigmas.len() as i64 - 1;
        let mut sigmas: Vec<f32> = timesteps
            .iter()
            .map(|&t| self.train_sigmas[t.clamp(0, last) as usize])
            .collect();
        sigmas.push(match config.final_sigmas_type {
            FinalSigmasType::Zero => 0.0,
            FinalSigmasType::SigmaMin => self.train_sigmas[0],
        });
        (timesteps.into_iter().map(|t| t as f64).collect(), sigmas)
    }
}

fn missing_mu() -> Error {
    Error::InvalidRequest(format!(
        "{} with use_dynamic_shifting=true needs mu (Scheduler::set_mu) before set_timesteps",
        UniPCMultistepScheduler::CLASS_NAME
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn scheduler(config: serde_json::Value) -> Result<UniPCMultistepScheduler> {
        UniPCMultistepScheduler::new(serde_json::from_value(config).unwrap())
    }

    fn wan(extra: serde_json::Value) -> serde_json::Value {
        let mut config = serde_json::json!({
            "prediction_type": "flow_prediction", "use_flow_sigmas": true, "flow_shift": 3.0,
        });
        config
            .as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        config
    }

    #[test]
    fn solve_recovers_a_known_solution() {
        // rows are powers of r = (-1, -2, 1), as in an order-3 corrector
        let r = vec![
            vec![1.0, 1.0, 1.0],
            vec![-1.0, -2.0, 1.0],
            vec![1.0, 4.0, 1.0],
        ];
        let x = [0.25, -0.5, 2.0];
        let b: Vec<f64> = r
            .iter()
            .map(|row| (0..3).map(|k| row[k] * x[k]).sum())
            .collect();
        for (got, want) in solve(&r, &b).iter().zip(x) {
            assert!((got - want).abs() < 1e-12, "{got} vs {want}");
        }
    }

    #[test]
    fn unsupported_options_are_errors_that_name_them() {
        for (key, value) in [
            ("use_karras_sigmas", serde_json::json!(true)),
            ("use_exponential_sigmas", serde_json::json!(true)),
            ("thresholding", serde_json::json!(true)),
            (
                "solver_p",
                serde_json::json!({"_class_name": "DPMSolverMultistepScheduler"}),
            ),
        ] {
            let err = scheduler(wan(serde_json::json!({ key: value }))).unwrap_err();
            assert!(matches!(err, Error::Unsupported { .. }), "{key}: {err}");
            assert!(err.to_string().contains(key), "{err}");
        }
        let flow_without_flow_sigmas = serde_json::json!({"prediction_type": "flow_prediction"});
        assert!(matches!(
            scheduler(flow_without_flow_sigmas),
            Err(Error::Unsupported { .. })
        ));
    }

    #[test]
    fn configs_that_give_nan_in_diffusers_are_rejected() {
        let no_lof = wan(serde_json::json!({"lower_order_final": false}));
        assert!(matches!(scheduler(no_lof), Err(Error::BadConfig { .. })));
        let noise_zero = serde_json::json!({"predict_x0": false});
        assert!(matches!(
            scheduler(noise_zero),
            Err(Error::BadConfig { .. })
        ));
        // the same with a final sigma that is not 0 (betas schedule) is fine
        let no_lof_min =
            serde_json::json!({"lower_order_final": false, "final_sigmas_type": "sigma_min"});
        assert!(scheduler(no_lof_min).is_ok());
        let order_0 = wan(serde_json::json!({"solver_order": 0}));
        assert!(matches!(scheduler(order_0), Err(Error::BadConfig { .. })));
    }

    #[test]
    fn steps_shift_and_mu_are_checked() {
        let mut s = scheduler(wan(serde_json::json!({}))).unwrap();
        assert!(matches!(s.set_timesteps(0), Err(Error::InvalidRequest(_))));
        let sample = Tensor::zeros(3, DType::F32, &Device::Cpu).unwrap();
        assert!(
            s.step(&sample, 999.0, &sample).is_err(),
            "step before set_timesteps"
        );
        s.set_shift(5.0).unwrap();
        s.set_timesteps(2).unwrap();
        // the second of 2 steps: sigma 0.5005, shifted by 5: 2.5025 / 3.002 = 0.8336…
        assert_eq!(s.timesteps(), &[999.0, 833.0]);

        let mut classic = scheduler(serde_json::json!({})).unwrap();
        assert!(
            classic.set_shift(5.0).is_err(),
            "no flow shift without flow sigmas"
        );
        let mut dynamic =
            scheduler(wan(serde_json::json!({"use_dynamic_shifting": true}))).unwrap();
        assert!(dynamic
            .set_timesteps(10)
            .unwrap_err()
            .to_string()
            .contains("mu"));
        dynamic.set_mu(Some(0.8));
        dynamic.set_timesteps(10).unwrap();
    }

    #[test]
    fn final_sigma_zero_step_returns_the_x0_prediction_with_bh1() -> candle_core::Result<()> {
        // diffusers returns NaN here (-inf · 0); the exact last step lands on x0 = x - σ · v
        let mut s = scheduler(wan(serde_json::json!({"solver_type": "bh1"}))).unwrap();
        s.set_timesteps(1).unwrap();
        let sample = Tensor::new(&[1.0f32, -0.5], &Device::Cpu)?;
        let velocity = Tensor::new(&[2.0f32, 0.25], &Device::Cpu)?;
        let sigma = s.sigmas()[0] as f32;
        let next = s
            .step(&velocity, s.timesteps()[0], &sample)?
            .to_vec1::<f32>()?;
        assert_eq!(next, vec![1.0 - sigma * 2.0, -0.5 - sigma * 0.25]);
        Ok(())
    }
}
