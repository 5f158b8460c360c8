//! `scheduler_config.json` of diffusers' `UniPCMultistepScheduler`, as a serde struct.

use serde::Deserialize;

pub use crate::scheduler::betas::{BetaSchedule, TimestepSpacing};
use crate::scheduler::TimeShiftType;

/// What the model predicts (config key `prediction_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PredictionType {
    /// The noise `ε`.
    Epsilon,
    /// The clean sample `x0`.
    Sample,
    /// `v = α · ε - σ · x0` (Imagen Video, section 2.4).
    VPrediction,
    /// The flow velocity `ε - x0` (with `use_flow_sigmas`).
    FlowPrediction,
}

/// Which B(h) the update uses (config key `solver_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum SolverType {
    /// `B(h) = hh` (recommended by the authors for unconditional sampling with < 10 steps).
    #[serde(rename = "bh1")]
    Bh1,
    /// `B(h) = e^hh - 1`. diffusers registers the DPM-Solver names `midpoint`, `heun` and
    /// `logrho` as `bh2`; so does vidgen.
    #[serde(rename = "bh2", alias = "midpoint", alias = "heun", alias = "logrho")]
    Bh2,
}

/// The noise level after the last step (config key `final_sigmas_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FinalSigmasType {
    /// Clean: sigma 0.
    Zero,
    /// Betas schedule: the sigma of training timestep 0. Flow sigmas: the last inference sigma
    /// again, so the last step leaves the sample as it is (the reference's behaviour).
    SigmaMin,
}

/// `scheduler_config.json` of a `UniPCMultistepScheduler`; keys verbatim, defaults as in
/// diffusers 0.42's `__init__`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(default)]
pub struct UniPCMultistepConfig {
    pub num_train_timesteps: usize,
    pub beta_start: f64,
    pub beta_end: f64,
    pub beta_schedule: BetaSchedule,
    /// Betas given directly (one per training timestep), instead of `beta_schedule`.
    pub trained_betas: Option<Vec<f64>>,
    /// UniPC order p (the corrector makes it p + 1); the authors suggest 2 for guided
    /// sampling, 3 for unconditional.
    pub solver_order: usize,
    pub prediction_type: PredictionType,
    /// Dynamic thresholding of x0 (not supported: an error).
    pub thresholding: bool,
    pub dynamic_thresholding_ratio: f64,
    pub sample_max_value: f64,
    /// Solve in data (x0) prediction rather than noise prediction.
    pub predict_x0: bool,
    pub solver_type: SolverType,
    /// First-order steps at the end (needed when the final sigma is 0).
    pub lower_order_final: bool,
    /// Step indices after which the corrector is skipped (step `i` skips it when `i - 1` is
    /// listed).
    pub disable_corrector: Vec<usize>,
    /// Another scheduler as predictor (not supported: must be null).
    pub solver_p: Option<serde_json::Value>,
    pub use_karras_sigmas: bool,
    pub use_exponential_sigmas: bool,
    pub use_beta_sigmas: bool,
    /// Rectified-flow noise levels `α = 1 - s, σ = s` instead of the betas schedule.
    pub use_flow_sigmas: bool,
    /// The static flow shift (`shift · s / (1 + (shift - 1) · s)`): 3.0 for Wan 480p, 5.0 720p.
    pub flow_shift: f64,
    pub timestep_spacing: TimestepSpacing,
    /// Added to the timesteps with `"leading"` spacing.
    pub steps_offset: i64,
    pub final_sigmas_type: FinalSigmasType,
    /// Rescale the betas to zero terminal SNR (arXiv:2305.08891).
    pub rescale_betas_zero_snr: bool,
    /// Flow sigmas shifted by a resolution-dependent `mu` instead of `flow_shift`.
    pub use_dynamic_shifting: bool,
    pub time_shift_type: TimeShiftType,
    /// Only used by the Karras / exponential / beta respacings, which vidgen does not support.
    pub sigma_min: Option<f64>,
    pub sigma_max: Option<f64>,
    /// Stretch the flow schedule to end at this sigma (0 or null: off).
    pub shift_terminal: Option<f64>,
    /// Keys this struct does not know (`_class_name`, `_diffusers_version`, …).
    #[serde(flatten)]
    pub extra: serde_json::Map<String, serde_json::Value>,
}

impl Default for UniPCMultistepConfig {
    fn default() -> Self {
        Self {
            num_train_timesteps: 1000,
            beta_start: 0.0001,
            beta_end: 0.02,
            beta_schedule: BetaSchedule::Linear,
            trained_betas: None,
            solver_order: 2,
            prediction_type: PredictionType::Epsilon,
            thresholding: false,
            dynamic_thresholding_ratio: 0.995,
            sample_max_value: 1.0,
            predict_x0: true,
            solver_type: SolverType::Bh2,
            lower_order_final: true,
            disable_corrector: Vec::new(),
            solver_p: None,
            use_karras_sigmas: false,
            use_exponential_sigmas: false,
            use_beta_sigmas: false,
            use_flow_sigmas: false,
            flow_shift: 1.0,
            timestep_spacing: TimestepSpacing::Linspace,
            steps_offset: 0,
            final_sigmas_type: FinalSigmasType::Zero,
            rescale_betas_zero_snr: false,
            use_dynamic_shifting: false,
            time_shift_type: TimeShiftType::Exponential,
            sigma_min: None,
            sigma_max: None,
            shift_terminal: None,
            extra: Default::default(),
        }
    }
}
