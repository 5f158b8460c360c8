//! AdamW with decoupled weight decay, the warmup + cosine learning-rate schedule, global
//! gradient-norm clipping and an EMA of the weights. Written out (rather than candle-nn's
//! `AdamW`) because a checkpoint must hold the moments to resume exactly.

use std::collections::HashMap;

use candle_core::{backprop::GradStore, DType, Result, Tensor, Var};

use super::config::OptimConfig;

/// Learning rate at `step` (0-based) of `total`: linear warmup to `lr`, then a cosine from
/// `lr` down to `lr · min_lr_ratio` at the last step.
pub fn learning_rate(cfg: &OptimConfig, step: usize, total: usize) -> f64 {
    if step < cfg.warmup {
        return cfg.lr * (step + 1) as f64 / cfg.warmup as f64;
    }
    let span = total.saturating_sub(cfg.warmup).max(1) as f64;
    let progress = ((step - cfg.warmup) as f64 / span).min(1.0);
    let cosine = 0.5 * (1.0 + (std::f64::consts::PI * progress).cos());
    cfg.lr * (cfg.min_lr_ratio + (1.0 - cfg.min_lr_ratio) * cosine)
}

/// The trained weights by name (sorted), with their AdamW moments and EMA.
pub struct AdamW {
    params: Vec<(String, Var)>,
    m: Vec<Tensor>,
    v: Vec<Tensor>,
    ema: Vec<Tensor>,
    /// Each weight's multiplier of the scheduled learning rate (1 unless [`AdamW::scale_lr`]).
    lr_scale: Vec<f64>,
    /// Optimizer steps taken.
    pub step: usize,
    cfg: OptimConfig,
}

/// What one optimizer step did.
#[derive(Clone, Copy, Debug)]
pub struct StepStats {
    pub lr: f64,
    /// Global gradient norm before clipping.
    pub grad_norm: f64,
}

/// Weight decay applies to matrices and kernels, not to norms, biases or AdaLN tables.
fn decays(name: &str, var: &Var) -> bool {
    var.rank() >= 2 && !name.contains("norm") && !name.ends_with("scale_shift_table")
}

impl AdamW {
    /// Starts from the current values of `params` (zero moments, EMA = weights).
    pub fn new(params: HashMap<String, Var>, cfg: OptimConfig) -> Result<Self> {
        let mut params: Vec<(String, Var)> = params.into_iter().collect();
        params.sort_by(|a, b| a.0.cmp(&b.0));
        let zeros = |p: &Var| p.as_detached_tensor().zeros_like();
        Ok(Self {
            m: params
                .iter()
                .map(|(_, p)| zeros(p))
                .collect::<Result<_>>()?,
            v: params
                .iter()
                .map(|(_, p)| zeros(p))
                .collect::<Result<_>>()?,
            ema: params
                .iter()
                .map(|(_, p)| p.as_detached_tensor().copy())
                .collect::<Result<_>>()?,
            lr_scale: vec![1.0; params.len()],
            params,
            step: 0,
            cfg,
        })
    }

    /// Multiplies the learning rate of the weights whose names start with `prefix` by `scale`
    /// (e.g. a text encoder trained from its initialisation beside a trained DiT).
    pub fn scale_lr(&mut self, prefix: &str, scale: f64) {
        for ((name, _), s) in self.params.iter().zip(&mut self.lr_scale) {
            if name.starts_with(prefix) {
                *s = scale;
            }
        }
    }

    /// Adds `grads` of the trainable weights into `sum` (gradient accumulation).
    pub fn accumulate(&self, sum: &mut Vec<Option<Tensor>>, grads: &GradStore) -> Result<()> {
        if sum.is_empty() {
            sum.resize(self.params.len(), None);
        }
        for ((_, p), acc) in self.params.iter().zip(sum.iter_mut()) {
            if let Some(g) = grads.get(p.as_tensor()) {
                *acc = Some(match acc.take() {
                    Some(a) => (a + g)?,
                    None => g.detach(),
                });
            }
        }
        Ok(())
    }

    /// One AdamW step on the accumulated gradients divided by `scale` (the number of
    /// micro-batches), after clipping their global norm; then updates the EMA.
    pub fn step(
        &mut self,
        grads: Vec<Option<Tensor>>,
        scale: f64,
        total_steps: usize,
    ) -> Result<StepStats> {
        let grads: Vec<Option<Tensor>> = grads
            .into_iter()
            .map(|g| g.map(|g| g / scale).transpose())
            .collect::<Result<_>>()?;
        let mut sq = 0f64;
        for g in grads.iter().flatten() {
            sq += g
                .sqr()?
                .sum_all()?
                .to_dtype(DType::F64)?
                .to_scalar::<f64>()?;
        }
        let grad_norm = sq.sqrt();
        if !grad_norm.is_finite() {
            candle_core::bail!("the gradient norm is {grad_norm}: training diverged")
        }
        let clip = if self.cfg.grad_clip > 0.0 && grad_norm > self.cfg.grad_clip {
            self.cfg.grad_clip / grad_norm
        } else {
            1.0
        };
        let lr = learning_rate(&self.cfg, self.step, total_steps);
        self.step += 1;
        let (b1, b2) = self.cfg.betas;
        let t = self.step as i32;
        let (c1, c2) = (1.0 - b1.powi(t), 1.0 - b2.powi(t));
        for (i, g) in grads.iter().enumerate() {
            let Some(g) = g else { continue };
            let g = (g * clip)?;
            let (name, p) = &self.params[i];
            let lr = lr * self.lr_scale[i];
            self.m[i] = ((&self.m[i] * b1)? + (&g * (1.0 - b1))?)?;
            self.v[i] = ((&self.v[i] * b2)? + (g.sqr()? * (1.0 - b2))?)?;
            let update = ((&self.m[i] / c1)? / ((&self.v[i] / c2)?.sqrt()? + self.cfg.eps)?)?;
            let w = p.as_detached_tensor();
            let w = if decays(name, p) {
                (&w * (1.0 - lr * self.cfg.weight_decay))?
            } else {
                w
            };
            p.set(&(w - (update * lr)?)?)?;
        }
        // EMA with the usual warmup of the decay, so early weights do not dominate
        let decay = self
            .cfg
            .ema_decay
            .min((1 + self.step) as f64 / (10 + self.step) as f64);
        for (e, (_, p)) in self.ema.iter_mut().zip(&self.params) {
            *e = ((&*e * decay)? + (p.as_detached_tensor() * (1.0 - decay))?)?;
        }
        Ok(StepStats { lr, grad_norm })
    }

    /// The weights to export: the EMA when `ema_decay > 0`, else the raw weights.
    pub fn export_weights(&self) -> HashMap<String, Tensor> {
        self.params
            .iter()
            .zip(&self.ema)
            .map(|((name, p), e)| {
                let t = if self.cfg.ema_decay > 0.0 {
                    e.clone()
                } else {
                    p.as_detached_tensor()
                };
                (name.clone(), t)
            })
            .collect()
    }

    /// Everything a checkpoint holds: `weight.NAME`, `ema.NAME`, `adam_m.NAME`, `adam_v.NAME`.
    /// The weights are copied: a `Var` is updated in place, and a snapshot must not follow it.
    pub fn state(&self) -> Result<HashMap<String, Tensor>> {
        let mut out = HashMap::new();
        for (i, (name, p)) in self.params.iter().enumerate() {
            out.insert(format!("weight.{name}"), p.as_detached_tensor().copy()?);
            out.insert(format!("ema.{name}"), self.ema[i].clone());
            out.insert(format!("adam_m.{name}"), self.m[i].clone());
            out.insert(format!("adam_v.{name}"), self.v[i].clone());
        }
        Ok(out)
    }

    /// Restores a [`Self::state`] taken after `step` optimizer steps.
    pub fn load_state(&mut self, state: &HashMap<String, Tensor>, step: usize) -> Result<()> {
        let get = |key: String| {
            state
                .get(&key)
                .cloned()
                .ok_or_else(|| candle_core::Error::Msg(format!("checkpoint lacks {key}")))
        };
        for (i, (name, p)) in self.params.iter().enumerate() {
            let w = get(format!("weight.{name}"))?;
            if w.dims() != p.dims() {
                candle_core::bail!(
                    "checkpoint {name} has shape {:?}, the model {:?}",
                    w.dims(),
                    p.dims()
                )
            }
            p.set(&w)?;
            self.ema[i] = get(format!("ema.{name}"))?;
            self.m[i] = get(format!("adam_m.{name}"))?;
            self.v[i] = get(format!("adam_v.{name}"))?;
        }
        self.step = step;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn cfg() -> OptimConfig {
        OptimConfig {
            lr: 0.1,
            warmup: 2,
            min_lr_ratio: 0.1,
            ema_decay: 0.5,
            weight_decay: 0.0,
            ..OptimConfig::default()
        }
    }

    #[test]
    fn schedule_warms_up_then_decays_to_the_floor() {
        let c = cfg();
        assert!((learning_rate(&c, 0, 10) - 0.05).abs() < 1e-12);
        assert!((learning_rate(&c, 1, 10) - 0.1).abs() < 1e-12);
        assert!((learning_rate(&c, 2, 10) - 0.1).abs() < 1e-12);
        assert!((learning_rate(&c, 10, 10) - 0.01).abs() < 1e-12);
        assert!(learning_rate(&c, 6, 10) < 0.1 && learning_rate(&c, 6, 10) > 0.01);
    }

    #[test]
    fn minimises_a_quadratic_and_clips() -> Result<()> {
        let dev = Device::Cpu;
        let x = Var::from_tensor(&Tensor::new(&[3f32, -2.0], &dev)?)?;
        let mut params = HashMap::new();
        params.insert("x".to_string(), x.clone());
        let mut opt = AdamW::new(params, OptimConfig { warmup: 0, ..cfg() })?;
        for _ in 0..200 {
            let loss = x.as_tensor().sqr()?.sum_all()?;
            let mut acc = Vec::new();
            opt.accumulate(&mut acc, &loss.backward()?)?;
            let stats = opt.step(acc, 1.0, 200)?;
            assert!(stats.grad_norm.is_finite());
        }
        let v = x.as_tensor().to_vec1::<f32>()?;
        assert!(v[0].abs() < 0.05 && v[1].abs() < 0.05, "{v:?}");
        // state round trip
        let state = opt.state()?;
        assert_eq!(state.len(), 4);
        x.set(&Tensor::new(&[9f32, 9.0], &dev)?)?;
        opt.load_state(&state, 200)?;
        assert_eq!(x.as_tensor().to_vec1::<f32>()?, v);
        Ok(())
    }
}
