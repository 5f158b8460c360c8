//! Workers: threads that claim jobs from the store and run them on a fork of the one loaded
//! model, and the reaper that requeues jobs whose worker died.

use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use vidgen::pipeline::{CancelFlag, GenerateRequest, Progress, Stage, VideoPipeline};

use crate::store::Job;
use crate::App;

/// Idle workers look for new jobs this often.
const POLL: Duration = Duration::from_millis(200);

/// Starts `--workers` threads. The model is built first (in the first thread), then each
/// worker gets a fork sharing its weights; `/readyz` turns true once they run.
pub(crate) fn start(app: Arc<App>) -> Vec<JoinHandle<()>> {
    if app.cfg.workers == 0 {
        return Vec::new();
    }
    let loader = {
        let app = app.clone();
        std::thread::Builder::new()
            .name("vidgen-load".into())
            .spawn(move || load_and_run(app))
            .expect("spawning the loader thread")
    };
    vec![loader]
}

fn load_and_run(app: Arc<App>) {
    let started = Instant::now();
    let loaded = vidgen::pipeline::load(&app.cfg.model, app.cfg.load.clone()).and_then(|mut p| {
        p.preload()?;
        Ok(p)
    });
    let pipeline = match loaded {
        Ok(p) => p,
        Err(e) => {
            tracing::error!("loading the model failed: {e}");
            eprintln!("vidgen serve: loading the model failed: {e}");
            *app.load_error.lock().unwrap_or_else(|p| p.into_inner()) =
                Some("the model could not be loaded; see the server log".into());
            return;
        }
    };
    eprintln!(
        "vidgen serve: model loaded in {:.1}s; ready",
        started.elapsed().as_secs_f64()
    );
    let mut handles = Vec::new();
    for index in 1..app.cfg.workers {
        let app = app.clone();
        let fork = pipeline.fork();
        handles.push(
            std::thread::Builder::new()
                .name(format!("vidgen-worker-{index}"))
                .spawn(move || work(app, fork, index))
                .expect("spawning a worker thread"),
        );
    }
    app.ready.store(true, Ordering::SeqCst);
    work(app, pipeline, 0);
    for handle in handles {
        let _ = handle.join();
    }
}

/// Claims and runs jobs until shutdown.
fn work(app: Arc<App>, mut pipeline: Box<dyn VideoPipeline>, index: usize) {
    let owner = format!("{}-w{index}", app.owner);
    while !app.shutting_down() {
        match app.store.claim(&owner, app.lease_ms()) {
            Ok(Some(job)) => {
                app.busy_workers.fetch_add(1, Ordering::SeqCst);
                run_job(&app, pipeline.as_mut(), &owner, job);
                app.busy_workers.fetch_sub(1, Ordering::SeqCst);
            }
            Ok(None) => std::thread::sleep(POLL),
            Err(e) => {
                tracing::error!("claiming a job: {e:#}");
                std::thread::sleep(Duration::from_secs(1));
            }
        }
    }
}

/// Percent done: denoising is the first 90 %, decoding the rest up to 99 (100 is set when the
/// files are written).
fn percent(p: Progress) -> i64 {
    let frac = p.done as f64 / p.total.max(1) as f64;
    match p.stage {
        Stage::Denoise => (90.0 * frac) as i64,
        Stage::Decode => 90 + (9.0 * frac) as i64,
    }
}

fn run_job(app: &App, pipeline: &mut dyn VideoPipeline, owner: &str, job: Job) {
    let started = Instant::now();
    let p = &job.params;
    let cancel = CancelFlag::new();
    let image = if p.image {
        match crate::media::read_input(&crate::media::input_path(&app.cfg.data_dir, &job.id)) {
            Ok(image) => Some(image),
            Err(e) => {
                tracing::error!("the first frame of {}: {e:#}", job.id);
                let _ = app.store.fail(
                    &job.id,
                    owner,
                    "input_missing",
                    "the uploaded first frame is gone",
                );
                return;
            }
        }
    } else {
        None
    };
    let request = GenerateRequest {
        prompt: p.prompt.clone(),
        negative_prompt: p.negative_prompt.clone(),
        num_frames: Some(p.num_frames),
        height: Some(p.height),
        width: Some(p.width),
        num_inference_steps: Some(p.steps),
        guidance_scale: Some(p.guidance),
        seed: p.seed,
        fps: Some(p.fps),
        image,
        step_cache: p.step_cache,
        cancel: Some(cancel.clone()),
        ..GenerateRequest::default()
    };
    // Set when the job stopped being ours (deleted, or the lease lost), or at shutdown after
    // the grace period (then it goes back to the queue).
    let lost = AtomicBool::new(false);
    let stop_for_shutdown = AtomicBool::new(false);
    let finished = AtomicBool::new(false);
    let result = std::thread::scope(|scope| {
        scope.spawn(|| {
            let beat = (app.cfg.lease / 3).max(Duration::from_millis(100));
            let mut last = Instant::now();
            while !finished.load(Ordering::SeqCst) {
                std::thread::sleep(Duration::from_millis(50));
                if app.shutting_down() && app.grace_expired() {
                    stop_for_shutdown.store(true, Ordering::SeqCst);
                    cancel.cancel();
                }
                if last.elapsed() < beat {
                    continue;
                }
                last = Instant::now();
                match app.store.heartbeat(&job.id, owner, None, app.lease_ms()) {
                    Ok(true) => {}
                    Ok(false) => {
                        lost.store(true, Ordering::SeqCst);
                        cancel.cancel();
                    }
                    Err(e) => tracing::warn!("heartbeat for {}: {e:#}", job.id),
                }
            }
        });
        let mut last_percent = -1;
        let mut step_clock = Instant::now();
        let generated = std::panic::catch_unwind(AssertUnwindSafe(|| {
            pipeline.generate(&request, &mut |progress| {
                if progress.stage == Stage::Denoise {
                    app.metrics.step_done(step_clock.elapsed().as_secs_f64());
                    step_clock = Instant::now();
                }
                let pct = percent(progress);
                if pct != last_percent {
                    last_percent = pct;
                    match app
                        .store
                        .heartbeat(&job.id, owner, Some(pct), app.lease_ms())
                    {
                        Ok(true) => {}
                        Ok(false) => {
                            lost.store(true, Ordering::SeqCst);
                            cancel.cancel();
                        }
                        Err(e) => tracing::warn!("progress of {}: {e:#}", job.id),
                    }
                }
            })
        }));
        finished.store(true, Ordering::SeqCst);
        generated
    });

    let outcome = match result {
        Ok(Ok(generated)) => finish(app, owner, &job, &generated),
        Ok(Err(vidgen::Error::Cancelled)) if lost.load(Ordering::SeqCst) => {
            app.metrics.cancelled.fetch_add(1, Ordering::Relaxed);
            eprintln!("vidgen serve: {} stopped (deleted)", job.id);
            Ok(())
        }
        Ok(Err(vidgen::Error::Cancelled)) if stop_for_shutdown.load(Ordering::SeqCst) => {
            app.metrics.requeued.fetch_add(1, Ordering::Relaxed);
            eprintln!("vidgen serve: {} back in the queue (shutdown)", job.id);
            app.store.requeue(&job.id, owner).map(|_| ())
        }
        Ok(Err(e)) => {
            tracing::error!("{} failed: {e}", job.id);
            app.metrics.failed.fetch_add(1, Ordering::Relaxed);
            app.store
                .fail(&job.id, owner, "generation_failed", &public_message(&e))
                .map(|_| ())
        }
        Err(_) => {
            app.metrics.failed.fetch_add(1, Ordering::Relaxed);
            app.store
                .fail(
                    &job.id,
                    owner,
                    "internal_error",
                    "the worker crashed on this request",
                )
                .map(|_| ())
        }
    };
    if let Err(e) = outcome {
        tracing::error!("recording the outcome of {}: {e:#}", job.id);
    }
    app.metrics.job_done(started.elapsed().as_secs_f64());
}

/// Writes the files, then marks the job completed; if it was deleted meanwhile, removes them.
fn finish(
    app: &App,
    owner: &str,
    job: &Job,
    generated: &vidgen::pipeline::Generated,
) -> anyhow::Result<()> {
    let frames = &generated.frames;
    let (f, h, w, _) = frames.dims4()?;
    let data = frames.flatten_all()?.to_vec1::<f32>()?;
    let video = vidgen_video::Frames::new(f, h, w, generated.settings.fps as f32, data)?;
    if let Err(e) = crate::media::write_outputs(&app.videos, &job.id, &video) {
        crate::media::remove_outputs(&app.videos, &job.id);
        tracing::error!("writing the files of {}: {e:#}", job.id);
        app.metrics.failed.fetch_add(1, Ordering::Relaxed);
        app.store.fail(
            &job.id,
            owner,
            "storage_error",
            "the video could not be saved (is the disk full?)",
        )?;
        return Ok(());
    }
    if app.store.complete(&job.id, owner)? {
        app.metrics.completed.fetch_add(1, Ordering::Relaxed);
        eprintln!("vidgen serve: {} completed", job.id);
    } else {
        crate::media::remove_outputs(&app.videos, &job.id);
    }
    Ok(())
}

/// What a client may read about a failure: the reason for requests the model rejects,
/// nothing about files or internals otherwise.
fn public_message(e: &vidgen::Error) -> String {
    match e {
        vidgen::Error::InvalidRequest(reason) => reason.clone(),
        vidgen::Error::NonFinite(what) => {
            format!("the model produced non-finite values in {what}")
        }
        _ => "generation failed; see the server log".into(),
    }
}

/// Requeues expired leases every third of a lease.
pub(crate) fn start_reaper(app: Arc<App>) -> JoinHandle<()> {
    std::thread::Builder::new()
        .name("vidgen-reaper".into())
        .spawn(move || {
            let every = (app.cfg.lease / 3).max(Duration::from_millis(100));
            let mut last = Instant::now() - every;
            while !app.shutting_down() {
                if last.elapsed() >= every {
                    last = Instant::now();
                    match app.store.reap_expired() {
                        Ok(0) => {}
                        Ok(n) => eprintln!(
                            "vidgen serve: {n} job(s) whose worker stopped are queued again"
                        ),
                        Err(e) => tracing::error!("requeueing expired jobs: {e:#}"),
                    }
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        })
        .expect("spawning the reaper thread")
}
