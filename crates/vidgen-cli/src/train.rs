//! `vidgen train`: runs a training config with a progress bar, checkpoints and samples.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use vidgen::train::{TrainConfig, Trainer};

#[derive(Args)]
pub struct TrainArgs {
    /// The run's configuration (TOML; see TRAINING.md). A copy is kept in its `out` folder.
    #[arg(long)]
    pub config: PathBuf,
    /// Continue the run from the latest checkpoint in its `out` folder (exactly: weights,
    /// optimizer moments, EMA and data order).
    #[arg(long)]
    pub resume: bool,
    /// Stop (with a checkpoint) after this many steps in this invocation; the schedule still
    /// spans the config's `steps`, so `--resume` continues where it stopped.
    #[arg(long)]
    pub max_steps: Option<usize>,
    /// Worker threads (default: all cores, or RAYON_NUM_THREADS).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Where the steps run: cpu, cuda[:N] (a build with `--features cuda`) or metal.
    #[arg(long, default_value = "cpu")]
    pub device: String,
}

pub fn run(args: TrainArgs) -> Result<()> {
    if let Some(n) = args.threads {
        // read by candle's kernels and rayon's pool, which start after this
        std::env::set_var("RAYON_NUM_THREADS", n.to_string());
    }
    let cfg = TrainConfig::from_file(&args.config)
        .with_context(|| format!("reading {}", args.config.display()))?;
    let device = crate::generate::parse_device(&args.device)?;
    let mut trainer = Trainer::on_device(cfg, args.resume, device).context("starting the run")?;
    let cfg = trainer.config().clone();
    let start = trainer.steps_done();
    let stop = args
        .max_steps
        .map_or(cfg.steps, |n| (start + n).min(cfg.steps));
    tracing::info!(
        "training the {:?} of {} for steps {}..{} of {}",
        cfg.part,
        cfg.model.display(),
        start + 1,
        stop,
        cfg.steps
    );
    let bar = ProgressBar::new(cfg.steps as u64).with_position(start as u64);
    bar.set_style(
        ProgressStyle::with_template("{prefix} [{bar:30}] {pos}/{len} {msg} {per_sec} eta {eta}")
            .expect("valid template")
            .progress_chars("=> "),
    );
    bar.set_prefix(format!("train {:?}", cfg.part).to_lowercase());
    bar.reset_eta();
    let clock = Instant::now();
    let mut recent = Vec::new();
    while trainer.steps_done() < stop {
        let report = trainer
            .step()
            .with_context(|| format!("step {}", trainer.steps_done() + 1))?;
        recent.push(report.loss);
        bar.set_position(report.step as u64);
        bar.set_message(format!("loss {:.4}", report.loss));
        if report.step % cfg.log_every == 0 {
            let mean = recent.iter().sum::<f64>() / recent.len() as f64;
            recent.clear();
            tracing::info!(
                step = report.step,
                loss = mean,
                lr = report.lr,
                grad_norm = report.grad_norm,
                "bucket {:?}",
                report.size
            );
        }
        let last = report.step == stop;
        if report.step % cfg.checkpoint_every == 0 || last {
            let dir = trainer.save_checkpoint().context("saving a checkpoint")?;
            trainer
                .write_loss_curve()
                .context("writing the loss curve")?;
            tracing::info!("checkpoint {}", dir.display());
        }
        let sample_now = cfg.sample_every > 0 && report.step % cfg.sample_every == 0;
        if sample_now || (last && report.step == cfg.steps) {
            if cfg.sample_every > 0 && report.step % cfg.checkpoint_every != 0 && !last {
                trainer.save_checkpoint().context("saving a checkpoint")?;
            }
            for path in trainer
                .write_samples()
                .context("writing validation samples")?
            {
                bar.println(format!("sample {}", path.display()));
            }
        }
    }
    bar.finish();
    let done = trainer.steps_done() - start;
    let secs = clock.elapsed().as_secs_f64();
    let tail = &trainer.history[trainer.history.len().saturating_sub(20)..];
    let final_loss = tail.iter().map(|p| p.1).sum::<f64>() / tail.len().max(1) as f64;
    eprintln!(
        "trained {done} steps in {secs:.0} s ({:.2} s/step); loss (mean of the last {}) {final_loss:.4}; \
         weights in {}/{}; run folder {}",
        secs / done.max(1) as f64,
        tail.len(),
        cfg.model.display(),
        cfg.part.component(),
        cfg.out.display()
    );
    Ok(())
}
