//! Parity of vidgen's schedulers with diffusers 0.42.1 (the version is in the manifest).
//!
//! Fixtures: `tests/fixtures/schedulers/`, made by `tools/fixtures/schedulers.py`. Each case is a
//! scheduler_config.json, a step count, a start sample and a sequence of random model outputs.
//! Required:
//!
//! * timesteps exactly equal (they are what the transformer sees);
//! * sigmas exactly equal for flow schedules; within 1e-6 relative (a few f32 ulps) over a
//!   betas schedule: PyTorch's vectorised f32 `sqrt` on the CPU is not correctly rounded, so
//!   `sqrt((1 - ᾱ) / ᾱ)` (and the zero-SNR rescaling's `sqrt(ᾱ)`) is off by an ulp at some
//!   training timesteps;
//! * every sample along the way within 1e-5 (relative to the sample's size over a betas
//!   schedule, whose x0 predictions from random ε outputs reach hundreds). Where diffusers' own
//!   f32 UniPC coefficients drift from f64 ones (order 3 over many steps), the fixture also
//!   holds diffusers run with f64 coefficients: vidgen must match that to 1e-5, and stock
//!   diffusers to 1e-5 plus the recorded drift.

use std::collections::HashMap;
use std::path::PathBuf;

use candle_core::{DType, Device, Tensor};
use serde_json::Value;
use vidgen::scheduler::{
    from_config_json, FlowMatchEulerDiscreteConfig, Scheduler, UniPCMultistepConfig,
};

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/schedulers")
}

fn manifest() -> Value {
    let text = std::fs::read_to_string(fixtures().join("manifest.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn load(file: &str) -> HashMap<String, Tensor> {
    candle_core::safetensors::load(fixtures().join(file), &Device::Cpu).unwrap()
}

fn values(t: &Tensor) -> Vec<f64> {
    t.to_dtype(DType::F64).unwrap().to_vec1().unwrap()
}

fn build(entry: &Value) -> Box<dyn Scheduler> {
    let mut scheduler = from_config_json(&entry["config"]).unwrap();
    if let Some(shift) = entry["shift"].as_f64() {
        scheduler.set_shift(shift).unwrap();
    }
    scheduler.set_mu(entry["mu"].as_f64());
    scheduler
}

/// Flow schedules (FlowMatchEuler, UniPC with flow sigmas) versus a betas schedule.
fn is_flow(config: &Value) -> bool {
    config["use_flow_sigmas"] == Value::Bool(true)
        || config["_class_name"] == "FlowMatchEulerDiscreteScheduler"
}

fn assert_sigmas_match(name: &str, flow: bool, ours: &[f64], reference: &[f64]) {
    if flow {
        assert_eq!(ours, reference, "{name}: sigmas");
        return;
    }
    assert_eq!(ours.len(), reference.len(), "{name}: sigmas");
    for (a, b) in ours.iter().zip(reference) {
        assert!((a - b).abs() <= 1e-6 * b.abs(), "{name}: sigma {a} vs {b}");
    }
}

fn max_abs_diff(a: &Tensor, b: &Tensor) -> f64 {
    let (a, b) = (
        a.to_dtype(DType::F64).unwrap(),
        b.to_dtype(DType::F64).unwrap(),
    );
    max_abs(&(a - b).unwrap())
}

fn max_abs(a: &Tensor) -> f64 {
    let a = a.to_dtype(DType::F64).unwrap().abs().unwrap();
    a.flatten_all()
        .unwrap()
        .max(0)
        .unwrap()
        .to_scalar()
        .unwrap()
}

/// Runs every recorded case: the schedule, then each step's sample.
#[test]
fn scheduler_steps_match_diffusers() {
    let manifest = manifest();
    let cases = manifest["cases"].as_array().unwrap();
    assert!(cases.len() >= 30, "manifest has {} cases", cases.len());
    let (mut worst_flow, mut worst_betas) = (0f64, 0f64);
    for entry in cases {
        let name = entry["name"].as_str().unwrap();
        let tensors = load(entry["file"].as_str().unwrap());
        let mut scheduler = build(entry);
        let steps = entry["num_inference_steps"].as_u64().unwrap() as usize;
        scheduler.set_timesteps(steps).unwrap();

        let timesteps = scheduler.timesteps().to_vec();
        assert_eq!(
            timesteps,
            values(&tensors["timesteps"]),
            "{name}: timesteps"
        );
        let flow = is_flow(&entry["config"]);
        assert_sigmas_match(name, flow, scheduler.sigmas(), &values(&tensors["sigmas"]));

        let bf16 = entry["dtype"] == "bfloat16";
        let model_outputs = &tensors["model_outputs"];
        let stock = &tensors["samples"];
        let f64_coefficients = tensors.get("samples_f64_coefficients");
        let drift = entry["reference_f32_noise"].as_f64().unwrap_or(0.0);
        let mut sample = tensors["sample0"].clone();
        for (i, &t) in timesteps.iter().enumerate() {
            sample = scheduler
                .step(&model_outputs.get(i).unwrap(), t, &sample)
                .unwrap();
            let reference = stock.get(i).unwrap();
            assert_eq!(sample.dtype(), reference.dtype(), "{name}: dtype");
            let tolerance = match (bf16, flow) {
                (true, _) => 0.0, // the reference's roundings, reproduced: bit for bit
                (false, true) => 1e-5,
                (false, false) => 1e-5 * max_abs(&reference).max(1.0),
            };
            let err = match f64_coefficients {
                Some(samples) => {
                    let err = max_abs_diff(&sample, &samples.get(i).unwrap());
                    let stock_err = max_abs_diff(&sample, &reference);
                    assert!(
                        stock_err <= tolerance + drift,
                        "{name}: step {i}: {stock_err:e} from stock diffusers"
                    );
                    err
                }
                None => max_abs_diff(&sample, &reference),
            };
            assert!(
                err <= tolerance,
                "{name}: step {i}: max abs error {err:e} > {tolerance:e}"
            );
            let worst = if flow {
                &mut worst_flow
            } else {
                &mut worst_betas
            };
            *worst = worst.max(err / tolerance.max(1e-5) * 1e-5);
        }
        // one step more than the schedule has is a caller error
        let last = *timesteps.last().unwrap();
        let extra = scheduler.step(&model_outputs.get(0).unwrap(), last, &sample);
        assert!(extra.is_err(), "{name}: a step past the end must fail");
    }
    println!("worst sample error: flow {worst_flow:e}, betas (relative) {worst_betas:e}");
}

/// Timesteps and sigmas over many step counts.
#[test]
fn scheduler_schedules_match_diffusers_over_step_counts() {
    let manifest = manifest();
    let tensors = load("grid.safetensors");
    let grid = manifest["grid"].as_object().unwrap();
    assert!(grid.len() >= 8);
    for (name, entry) in grid {
        let mut scheduler = build(entry);
        let flow = is_flow(&entry["config"]);
        let timesteps = values(&tensors[&format!("{name}/timesteps")]);
        let sigmas = values(&tensors[&format!("{name}/sigmas")]);
        let (mut t0, mut s0) = (0, 0);
        let steps = entry["steps"].as_array().unwrap();
        let lengths = entry["lengths"].as_array().unwrap();
        for (n, len) in steps.iter().zip(lengths) {
            let (n, len) = (n.as_u64().unwrap() as usize, len.as_u64().unwrap() as usize);
            scheduler.set_timesteps(n).unwrap();
            let label = format!("{name} n={n}");
            assert_eq!(scheduler.timesteps(), &timesteps[t0..t0 + len], "{label}");
            assert_sigmas_match(&label, flow, scheduler.sigmas(), &sigmas[s0..s0 + len + 1]);
            (t0, s0) = (t0 + len, s0 + len + 1);
        }
        assert_eq!(
            (t0, s0),
            (timesteps.len(), sigmas.len()),
            "{name}: all compared"
        );
    }
}

/// The serde defaults equal the reference's: a config with only `_class_name` parses to what
/// the full default config diffusers writes parses to.
#[test]
fn scheduler_config_defaults_match_diffusers() {
    let manifest = manifest();
    let defaults = &manifest["defaults"];
    let full = &defaults["UniPCMultistepScheduler"];
    let mut from_full: UniPCMultistepConfig = serde_json::from_value(full.clone()).unwrap();
    from_full.extra.clear();
    let from_empty: UniPCMultistepConfig = serde_json::from_value(serde_json::json!({})).unwrap();
    assert_eq!(from_full, from_empty);
    assert_eq!(from_empty, UniPCMultistepConfig::default());

    let full = &defaults["FlowMatchEulerDiscreteScheduler"];
    let mut from_full: FlowMatchEulerDiscreteConfig = serde_json::from_value(full.clone()).unwrap();
    from_full.extra.clear();
    assert_eq!(from_full, FlowMatchEulerDiscreteConfig::default());

    // and the full files are accepted as they are
    for class in ["UniPCMultistepScheduler", "FlowMatchEulerDiscreteScheduler"] {
        let scheduler = from_config_json(&defaults[class]).unwrap();
        assert_eq!(scheduler.class_name(), class);
    }
}

/// CogVideoX's DDIM and DPM schedulers against `tests/fixtures/cogvideox_schedulers/` (made by
/// `tools/fixtures/cogvideox_schedulers.py`): timesteps exactly, `ᾱ` within an f32 ulp, and
/// every step's sample and predicted `x0` within 1e-5 (relative to the tensor's size where it
/// exceeds 1). The DPM scheduler is given the noise the reference drew at each step.
mod cogvideox {
    use super::*;
    use vidgen::scheduler::{
        CogVideoXDDIMScheduler, CogVideoXDPMScheduler, CogVideoXSchedulerConfig,
    };

    fn dir() -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/cogvideox_schedulers")
    }

    fn manifest() -> Value {
        let text = std::fs::read_to_string(dir().join("manifest.json")).unwrap();
        serde_json::from_str(&text).unwrap()
    }

    fn check(name: &str, what: &str, ours: &Tensor, reference: &Tensor) -> f64 {
        let tolerance = 1e-5 * max_abs(reference).max(1.0);
        let err = max_abs_diff(ours, reference);
        assert!(err <= tolerance, "{name}: {what}: max abs error {err:e}");
        err / tolerance * 1e-5
    }

    #[test]
    fn cogvideox_schedulers_match_diffusers() {
        let manifest = manifest();
        let cases = manifest["cases"].as_object().unwrap();
        assert!(cases.len() >= 10);
        let mut worst = 0f64;
        for (name, entry) in cases {
            let tensors = candle_core::safetensors::load(
                dir().join(format!("{name}.safetensors")),
                &Device::Cpu,
            )
            .unwrap();
            let config = &entry["config"];
            let steps = entry["steps"].as_u64().unwrap() as usize;
            let mut boxed = from_config_json(config).unwrap();
            assert_eq!(boxed.class_name(), config["_class_name"]);
            boxed.set_timesteps(steps).unwrap();
            let timesteps = boxed.timesteps().to_vec();
            assert_eq!(
                timesteps,
                values(&tensors["timesteps"]),
                "{name}: timesteps"
            );

            let parsed: CogVideoXSchedulerConfig = serde_json::from_value(config.clone()).unwrap();
            let outputs = &tensors["model_outputs"];
            let (prev_ref, x0_ref) = (&tensors["prev_samples"], &tensors["pred_original_samples"]);
            let mut sample = tensors["sample"].clone();
            let alphas: Vec<f64>;
            if config["_class_name"] == CogVideoXDDIMScheduler::CLASS_NAME {
                let mut ddim = CogVideoXDDIMScheduler::new(parsed).unwrap();
                ddim.set_timesteps(steps).unwrap();
                alphas = ddim.alphas_cumprod().to_vec();
                for (i, &t) in timesteps.iter().enumerate() {
                    let output = outputs.get(i).unwrap();
                    let (prev, x0) = ddim.step_with_x0(&output, t, &sample).unwrap();
                    let via_trait = boxed.step(&output, t, &sample).unwrap();
                    assert_eq!(max_abs_diff(&via_trait, &prev), 0.0, "{name}: trait step");
                    worst = worst.max(check(
                        name,
                        &format!("x0 {i}"),
                        &x0,
                        &x0_ref.get(i).unwrap(),
                    ));
                    worst = worst.max(check(
                        name,
                        &format!("step {i}"),
                        &prev,
                        &prev_ref.get(i).unwrap(),
                    ));
                    sample = prev;
                }
            } else {
                let mut dpm = CogVideoXDPMScheduler::new(parsed).unwrap();
                dpm.set_timesteps(steps).unwrap();
                alphas = dpm.alphas_cumprod().to_vec();
                let noises = &tensors["noises"];
                for (i, &t) in timesteps.iter().enumerate() {
                    let output = outputs.get(i).unwrap();
                    let noise = noises.get(i).unwrap();
                    let prev = dpm.step_with_noise(&output, t, &sample, &noise).unwrap();
                    let x0 = dpm.pred_original_sample().unwrap();
                    worst = worst.max(check(name, &format!("x0 {i}"), x0, &x0_ref.get(i).unwrap()));
                    worst = worst.max(check(
                        name,
                        &format!("step {i}"),
                        &prev,
                        &prev_ref.get(i).unwrap(),
                    ));
                    sample = prev;
                }
            }
            let reference = values(&tensors["alphas_cumprod"]);
            assert_eq!(alphas.len(), reference.len());
            // PyTorch's vectorised sqrt and the rescale's cancellation near ᾱ = 0 leave the
            // last digits free: a few ulps of ᾱ_0 (the largest value) in the schedule's dtype.
            let f64_schedule = entry["alphas_cumprod_dtype"] == "torch.float64";
            let ulp = if f64_schedule {
                f64::EPSILON
            } else {
                f32::EPSILON as f64
            };
            let err = alphas
                .iter()
                .zip(&reference)
                .map(|(a, b)| (a - b).abs())
                .fold(0.0, f64::max);
            eprintln!("{name}: ᾱ max abs error {err:e}");
            assert!(
                err <= 4.0 * ulp * reference[0],
                "{name}: ᾱ max abs error {err:e}"
            );
        }
        println!("worst sample error (relative): {worst:e}");
    }

    /// An empty config parses to the defaults diffusers writes for both classes.
    #[test]
    fn cogvideox_config_defaults_match_diffusers() {
        let manifest = manifest();
        for class in [
            CogVideoXDDIMScheduler::CLASS_NAME,
            CogVideoXDPMScheduler::CLASS_NAME,
        ] {
            let full = &manifest["defaults"][class];
            let mut from_full: CogVideoXSchedulerConfig =
                serde_json::from_value(full.clone()).unwrap();
            from_full.extra.clear();
            assert_eq!(from_full, CogVideoXSchedulerConfig::default(), "{class}");
            assert_eq!(from_config_json(full).unwrap().class_name(), class);
        }
    }
}
