//! `vidgen serve`: OpenAI's Videos API (`/v1/videos`, what `client.videos` in the `openai`
//! SDK speaks) over a durable job queue, with progress as server-sent events and a web page.
//!
//! ```text
//! HTTP (axum) ──validate, fix the seed──► Store (SQLite, WAL) ◄──claim / heartbeat── workers
//!    ▲  GET /v1/videos/{id}, /events, /content          │                  (threads, each a
//!    └──────────────── reads rows and files ◄───────────┴── mp4 + thumbnail   fork of one
//!                                                          + sprites          loaded model)
//! ```
//!
//! Everything a client was told is in the store before the response leaves; files are written
//! under temporary names and renamed. A process killed mid-job loses only that job's progress:
//! its lease runs out and the job is run again, by this process after a restart or by another
//! one serving the same `--data-dir`.

mod api;
pub mod media;
mod metrics;
pub mod store;
mod worker;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use vidgen::pipeline::{LoadOptions, ModelDefaults, VideoPipeline};

use metrics::Metrics;
use store::Store;

/// How the server runs (the flags of `vidgen serve`).
#[derive(Debug, Clone)]
pub struct ServeConfig {
    /// The model folder.
    pub model: PathBuf,
    /// The name clients see in `model` (default: the folder's name).
    pub model_name: Option<String>,
    pub addr: SocketAddr,
    /// Where the job store and the videos live.
    pub data_dir: PathBuf,
    /// When set, `/v1` requires `Authorization: Bearer <key>`.
    pub api_key: Option<String>,
    /// Worker threads sharing the queue (and one loaded model); 0 serves the API only, for
    /// workers in other processes on the same data folder.
    pub workers: usize,
    /// Queued jobs beyond which submissions get 429.
    pub max_queue: usize,
    /// Budget per request: frames × height × width × steps.
    pub max_pixels_per_job: u64,
    /// Largest request body (an image upload must fit).
    pub max_body_bytes: usize,
    /// How long a worker's claim on a job lasts without a heartbeat.
    pub lease: Duration,
    /// On SIGTERM, how long the running job may take to finish before it is stopped and
    /// requeued.
    pub grace: Duration,
    /// `openai-poll-after-ms`: how often clients should poll a job.
    pub poll_after_ms: u64,
    pub load: LoadOptions,
}

/// What the handlers and workers share.
pub(crate) struct App {
    cfg: ServeConfig,
    model_name: String,
    pipeline_class: String,
    defaults: ModelDefaults,
    store: Store,
    videos: PathBuf,
    /// For [`VideoPipeline::resolve`] at submission (cheap: configs only).
    validator: Mutex<Box<dyn VideoPipeline>>,
    ready: AtomicBool,
    /// Why the model could not be loaded, if it could not.
    load_error: Mutex<Option<String>>,
    shutdown: AtomicBool,
    shutdown_at: Mutex<Option<Instant>>,
    busy_workers: AtomicUsize,
    metrics: Metrics,
    /// Identifies this process's workers in leases.
    owner: String,
}

impl App {
    fn shutting_down(&self) -> bool {
        self.shutdown.load(Ordering::SeqCst)
    }

    /// True once the shutdown grace period is over.
    fn grace_expired(&self) -> bool {
        let at = *self.shutdown_at.lock().unwrap_or_else(|p| p.into_inner());
        at.is_some_and(|at| at.elapsed() >= self.cfg.grace)
    }

    fn lease_ms(&self) -> i64 {
        self.cfg.lease.as_millis() as i64
    }
}

/// Runs the server until SIGTERM or Ctrl-C: loads the model, binds, serves, then stops
/// taking jobs, lets the running ones finish (or requeues them after the grace period) and
/// returns.
pub fn serve(cfg: ServeConfig) -> Result<()> {
    if cfg.workers > 64 {
        bail!("--workers {}: at most 64", cfg.workers);
    }
    if cfg.max_queue == 0 {
        bail!("--max-queue must be at least 1");
    }
    let videos = cfg.data_dir.join("videos");
    let inputs = cfg.data_dir.join("inputs");
    for dir in [&videos, &inputs] {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("creating the data folder {}", dir.display()))?;
    }
    let store = Store::open(&cfg.data_dir)?;
    clean_leftovers(&videos, &store)?;
    clean_leftovers(&inputs, &store)?;

    // Configs only: a wrong model folder fails here, before the port is taken.
    let validator = vidgen::pipeline::load(&cfg.model, cfg.load.clone())
        .with_context(|| format!("loading model {}", cfg.model.display()))?;
    let model_dir = validator.dir().to_path_buf();
    let model_name = cfg
        .model_name
        .clone()
        .unwrap_or_else(|| folder_name(&model_dir));
    let pipeline_class = vidgen::checkpoint::class_name(&model_dir.join("model_index.json"))
        .unwrap_or_else(|_| "pipeline".into());
    let defaults = validator.defaults().clone();

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let listener = runtime
        .block_on(tokio::net::TcpListener::bind(cfg.addr))
        .with_context(|| format!("listening on {}", cfg.addr))?;
    let addr = listener.local_addr()?;

    let app = Arc::new(App {
        model_name,
        pipeline_class,
        defaults,
        store,
        videos,
        validator: Mutex::new(validator),
        ready: AtomicBool::new(false),
        load_error: Mutex::new(None),
        shutdown: AtomicBool::new(false),
        shutdown_at: Mutex::new(None),
        busy_workers: AtomicUsize::new(0),
        metrics: Metrics::default(),
        owner: format!("{}-{}", std::process::id(), rand::random::<u32>()),
        cfg,
    });
    // The address line is what scripts wait for.
    println!("vidgen serve: listening on http://{addr}");
    eprintln!(
        "vidgen serve: model {} ({}), data in {}, {} worker(s)",
        app.model_name,
        app.pipeline_class,
        app.cfg.data_dir.display(),
        app.cfg.workers
    );

    let workers = worker::start(app.clone());
    let reaper = worker::start_reaper(app.clone());
    let router = api::router(app.clone());
    let shutdown_app = app.clone();
    let served = runtime.block_on(async move {
        axum::serve(listener, router)
            .with_graceful_shutdown(async move {
                wait_for_signal().await;
                eprintln!("vidgen serve: stopping (no new jobs; the running ones finish or go back to the queue)");
                *shutdown_app
                    .shutdown_at
                    .lock()
                    .unwrap_or_else(|p| p.into_inner()) = Some(Instant::now());
                shutdown_app.shutdown.store(true, Ordering::SeqCst);
            })
            .await
    });
    app.shutdown.store(true, Ordering::SeqCst);
    for handle in workers {
        let _ = handle.join();
    }
    let _ = reaper.join();
    runtime.shutdown_timeout(Duration::from_secs(1));
    served.context("serving HTTP")?;
    eprintln!("vidgen serve: stopped");
    Ok(())
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate()).expect("installing the SIGTERM handler");
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = tokio::signal::ctrl_c().await;
}

fn folder_name(dir: &Path) -> String {
    dir.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "vidgen".into())
}

/// Removes what a crash can leave in a folder of job files (videos, inputs): temporary files
/// (`.NAME.XXXX.tmp`) and the files of jobs no longer in the store (deleted while their worker
/// was writing, or refused after their first frame was saved).
fn clean_leftovers(videos: &Path, store: &Store) -> Result<()> {
    let ids = store.ids()?;
    for entry in
        std::fs::read_dir(videos).with_context(|| format!("reading {}", videos.display()))?
    {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let stem = name.split('.').next().unwrap_or_default();
        let temporary = name.starts_with('.') && name.ends_with(".tmp");
        let orphan = !name.starts_with('.') && !ids.contains(stem);
        if (temporary || orphan) && entry.file_type()?.is_file() {
            tracing::info!("removing leftover {}", entry.path().display());
            let _ = std::fs::remove_file(entry.path());
        }
    }
    Ok(())
}
