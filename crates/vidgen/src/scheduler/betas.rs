//! The discrete-time training schedule of classic diffusion (betas → `ᾱ_t`) and the ways
//! inference timesteps are placed on it, computed as diffusers computes them (f32 where it
//! uses f32 tensors), so that timesteps and sigmas come out bit for bit.

use serde::Deserialize;

use super::linspace;

/// The betas of the training schedule (config key `beta_schedule`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BetaSchedule {
    Linear,
    /// Linear in `sqrt(beta)` (latent diffusion).
    ScaledLinear,
    /// The Glide cosine schedule.
    #[serde(rename = "squaredcos_cap_v2")]
    SquaredcosCapV2,
}

/// How the inference timesteps are placed (config key `timestep_spacing`); see table 2 of
/// arXiv:2305.08891.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TimestepSpacing {
    Linspace,
    Leading,
    Trailing,
}

/// The training schedule's settings, as in a scheduler config.
pub(crate) struct TrainSchedule<'a> {
    pub num_train_timesteps: usize,
    pub beta_start: f64,
    pub beta_end: f64,
    pub beta_schedule: BetaSchedule,
    pub trained_betas: Option<&'a [f64]>,
    pub rescale_betas_zero_snr: bool,
}

/// `ᾱ_t = Π_(s ≤ t) (1 - β_s)` for every training timestep, in f32 as the reference holds it
/// (its cumulative product runs in f64 and rounds each entry).
pub(crate) fn alphas_cumprod(schedule: &TrainSchedule) -> Result<Vec<f32>, String> {
    let n = schedule.num_train_timesteps;
    let mut betas: Vec<f32> = match (schedule.trained_betas, schedule.beta_schedule) {
        (Some(betas), _) if betas.len() != n => {
            return Err(format!(
                "trained_betas has {} entries, num_train_timesteps is {n}",
                betas.len()
            ))
        }
        (Some(betas), _) => betas.iter().map(|&b| b as f32).collect(),
        (None, BetaSchedule::Linear) => {
            torch_linspace_f32(schedule.beta_start as f32, schedule.beta_end as f32, n)
        }
        (None, BetaSchedule::ScaledLinear) => torch_linspace_f32(
            schedule.beta_start.sqrt() as f32,
            schedule.beta_end.sqrt() as f32,
            n,
        )
        .into_iter()
        .map(|b| b * b)
        .collect(),
        (None, BetaSchedule::SquaredcosCapV2) => squaredcos_cap_v2(n),
    };
    if schedule.rescale_betas_zero_snr {
        betas = rescale_zero_terminal_snr(&betas);
    }
    let mut product = 1.0f64;
    let mut alphas_cumprod: Vec<f32> = betas
        .iter()
        .map(|&beta| {
            product *= (1.0 - beta) as f64;
            product as f32
        })
        .collect();
    if schedule.rescale_betas_zero_snr {
        // not exactly 0, so that the first sigma is finite (the smallest f16 subnormal)
        if let Some(last) = alphas_cumprod.last_mut() {
            *last = 2f32.powi(-24);
        }
    }
    Ok(alphas_cumprod)
}

/// `torch.linspace(start, end, n, dtype=float64)` on the CPU bit for bit: as
/// [`torch_linspace_f32`], in f64.
pub(crate) fn torch_linspace_f64(start: f64, end: f64, n: usize) -> Vec<f64> {
    if n == 1 {
        return vec![start];
    }
    let step = (end - start) / (n - 1) as f64;
    (0..n)
        .map(|i| {
            if i < n / 2 {
                step.mul_add(i as f64, start)
            } else {
                (-step).mul_add((n - 1 - i) as f64, end)
            }
        })
        .collect()
}

/// `torch.linspace(start, end, n, dtype=float32)` on the CPU bit for bit: an f32 step, each
/// value one fused multiply-add from the nearer end.
pub(crate) fn torch_linspace_f32(start: f32, end: f32, n: usize) -> Vec<f32> {
    if n == 1 {
        return vec![start];
    }
    let step = (end - start) / (n - 1) as f32;
    (0..n)
        .map(|i| {
            if i < n / 2 {
                step.mul_add(i as f32, start)
            } else {
                (-step).mul_add((n - 1 - i) as f32, end)
            }
        })
        .collect()
}

/// The Glide cosine schedule: `β_i = min(1 - ᾱ((i+1)/n) / ᾱ(i/n), 0.999)` with
/// `ᾱ(t) = cos²((t + 0.008) / 1.008 · π/2)`.
pub(crate) fn squaredcos_cap_v2(n: usize) -> Vec<f32> {
    let alpha_bar = |t: f64| {
        ((t + 0.008) / 1.008 * std::f64::consts::PI / 2.0)
            .cos()
            .powi(2)
    };
    (0..n)
        .map(|i| {
            let (t1, t2) = (i as f64 / n as f64, (i + 1) as f64 / n as f64);
            (1.0 - alpha_bar(t2) / alpha_bar(t1)).min(0.999) as f32
        })
        .collect()
}

/// Rescales the betas so that the last timestep has zero SNR (arXiv:2305.08891, algorithm 1):
/// `sqrt(ᾱ)` is shifted to end at 0 and scaled to keep its first value.
fn rescale_zero_terminal_snr(betas: &[f32]) -> Vec<f32> {
    let mut product = 1.0f64;
    let mut sqrt_ab: Vec<f32> = betas
        .iter()
        .map(|&beta| {
            product *= (1.0 - beta) as f64;
            (product as f32).sqrt()
        })
        .collect();
    let (first, last) = (sqrt_ab[0], sqrt_ab[sqrt_ab.len() - 1]);
    let gain = first / (first - last);
    sqrt_ab.iter_mut().for_each(|a| *a = (*a - last) * gain);
    let ab: Vec<f32> = sqrt_ab.iter().map(|a| a * a).collect();
    // undo the cumulative product: α_0 = ᾱ_0, α_t = ᾱ_t / ᾱ_(t-1)
    (0..ab.len())
        .map(|t| 1.0 - if t == 0 { ab[0] } else { ab[t] / ab[t - 1] })
        .collect()
}

/// The training timesteps (integers, descending) that `n` inference steps visit, as diffusers'
/// UniPC / DPM-Solver place them. `"trailing"` can give `n + 1` of them (numpy's `arange`
/// with a float step); the reference runs that many.
pub(crate) fn spaced_timesteps(
    spacing: TimestepSpacing,
    num_train_timesteps: usize,
    steps_offset: i64,
    n: usize,
) -> Vec<i64> {
    let train = num_train_timesteps as f64;
    match spacing {
        TimestepSpacing::Linspace => {
            let mut t: Vec<i64> = linspace(0.0, train - 1.0, n + 1)
                .into_iter()
                .map(|t| t.round_ties_even() as i64)
                .collect();
            t.reverse();
            t.pop();
            t
        }
        TimestepSpacing::Leading => {
            let ratio = (num_train_timesteps / (n + 1)) as i64;
            (1..=n as i64)
                .rev()
                .map(|i| i * ratio + steps_offset)
                .collect()
        }
        TimestepSpacing::Trailing => {
            // numpy.arange(N, 0, -N/n): length ceil(N / (N/n)), values N + i·((N - N/n) - N)
            let ratio = train / n as f64;
            let len = ((0.0 - train) / -ratio).ceil() as usize;
            let delta = (train - ratio) - train;
            (0..len)
                .map(|i| (train + i as f64 * delta).round_ties_even() as i64 - 1)
                .collect()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn torch_linspace_hits_both_ends_exactly() {
        let v = torch_linspace_f32(0.0001, 0.02, 1000);
        assert_eq!((v[0], v[999], v.len()), (0.0001, 0.02, 1000));
        assert!(v.windows(2).all(|w| w[1] > w[0]));
    }

    #[test]
    fn zero_snr_rescale_ends_at_alpha_bar_zero() {
        let schedule = TrainSchedule {
            num_train_timesteps: 1000,
            beta_start: 0.00085,
            beta_end: 0.012,
            beta_schedule: BetaSchedule::ScaledLinear,
            trained_betas: None,
            rescale_betas_zero_snr: true,
        };
        let ac = alphas_cumprod(&schedule).unwrap();
        let plain = alphas_cumprod(&TrainSchedule {
            rescale_betas_zero_snr: false,
            ..schedule
        })
        .unwrap();
        assert_eq!(ac[999], 2f32.powi(-24));
        assert!(
            (ac[0] - plain[0]).abs() < 1e-6,
            "first ᾱ kept: {} {}",
            ac[0],
            plain[0]
        );
    }

    #[test]
    fn spacings_match_the_reference_examples() {
        use TimestepSpacing::*;
        assert_eq!(
            spaced_timesteps(Linspace, 1000, 0, 4),
            vec![999, 749, 500, 250]
        );
        assert_eq!(
            spaced_timesteps(Leading, 1000, 1, 4),
            vec![801, 601, 401, 201]
        );
        assert_eq!(
            spaced_timesteps(Trailing, 1000, 0, 4),
            vec![999, 749, 499, 249]
        );
        // numpy's float arange gives 62 values for 61 steps; the last one is -1
        let t = spaced_timesteps(Trailing, 1000, 0, 61);
        assert_eq!((t.len(), t[61]), (62, -1));
    }
}
