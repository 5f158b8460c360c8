//! `vidgen serve`: the OpenAI-compatible video API, job queue and web page of
//! `vidgen-server`, with the command line's model and device options.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::Args;
use vidgen::pipeline::LoadOptions;
use vidgen_server::ServeConfig;

use crate::generate::{builtin_model, parse_device, parse_dtype, parse_quantize};

#[derive(Args)]
pub struct ServeArgs {
    /// Model folder. Default: the built-in model.
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// The model's name in the API (`model` of requests and videos). Default: the folder's
    /// name.
    #[arg(long)]
    pub model_name: Option<String>,
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    /// Port (0: any free port; the address is printed on stdout).
    #[arg(long, default_value_t = 8000)]
    pub port: u16,
    /// Folder of the job store (jobs.sqlite3) and the videos; created if missing. Several
    /// servers may share one.
    #[arg(long, default_value = "vidgen-data")]
    pub data_dir: PathBuf,
    /// Require `Authorization: Bearer KEY` on /v1. Default: the VIDGEN_API_KEY variable, if
    /// set; else no key.
    #[arg(long, env = "VIDGEN_API_KEY", hide_env_values = true)]
    pub api_key: Option<String>,
    /// Worker threads sharing the queue and one loaded model (0: API only, for workers in
    /// other processes on the same --data-dir).
    #[arg(long, default_value_t = 1)]
    pub workers: usize,
    /// Queued videos beyond which new requests get 429.
    #[arg(long, default_value_t = 64)]
    pub max_queue: usize,
    /// Budget per video: frames × height × width × steps, checked at submission (Wan2.1's
    /// default, 81 frames at 832×480 for 50 steps, is 1.6e9).
    #[arg(long, default_value_t = 10_000_000_000)]
    pub max_pixels_per_job: u64,
    /// Largest request body in bytes (an image upload must fit).
    #[arg(long, default_value_t = 20 * 1024 * 1024)]
    pub max_body_bytes: usize,
    /// Seconds a worker's claim on a job lasts without a heartbeat; after a crash the job
    /// runs again this long after its last heartbeat.
    #[arg(long, default_value_t = 10.0)]
    pub lease_seconds: f64,
    /// On SIGTERM, seconds the running job may take to finish before it is stopped and put
    /// back in the queue.
    #[arg(long, default_value_t = 30.0)]
    pub grace_seconds: f64,
    /// The `openai-poll-after-ms` hint sent with every video object.
    #[arg(long, default_value_t = 1000)]
    pub poll_after_ms: u64,
    /// Weights and activations: f32, bf16 or f16.
    #[arg(long, default_value = "f32")]
    pub dtype: String,
    /// cpu, cuda:N or metal.
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// 8-bit transformer weights, as `vidgen generate --quantize`.
    #[arg(long, value_name = "q8_0")]
    pub quantize: Option<String>,
    /// Spatial tiling of the VAE, as `vidgen generate --vae-tiling`.
    #[arg(long)]
    pub vae_tiling: bool,
}

pub fn run(args: ServeArgs) -> Result<()> {
    let model = args.model.clone().unwrap_or_else(builtin_model);
    if args.model.is_none() && !model.join("model_index.json").is_file() {
        bail!(
            "the built-in model is not in this checkout ({}); pass --model DIR",
            model.display()
        );
    }
    let addr: SocketAddr = format!("{}:{}", args.host, args.port)
        .parse()
        .with_context(|| format!("--host {} --port {}: not an address", args.host, args.port))?;
    let seconds = |name: &str, s: f64| -> Result<Duration> {
        if !(s.is_finite() && s > 0.0 && s < 86_400.0) {
            bail!("--{name} {s}: a number of seconds above 0");
        }
        Ok(Duration::from_secs_f64(s))
    };
    vidgen_server::serve(ServeConfig {
        model,
        model_name: args.model_name,
        addr,
        data_dir: args.data_dir,
        api_key: args.api_key.filter(|k| !k.is_empty()),
        workers: args.workers,
        max_queue: args.max_queue,
        max_pixels_per_job: args.max_pixels_per_job,
        max_body_bytes: args.max_body_bytes,
        lease: seconds("lease-seconds", args.lease_seconds)?,
        grace: seconds("grace-seconds", args.grace_seconds)?,
        poll_after_ms: args.poll_after_ms,
        load: LoadOptions {
            dtype: parse_dtype(&args.dtype)?,
            device: parse_device(&args.device)?,
            keep_loaded: true,
            quantize: parse_quantize(args.quantize.as_deref())?,
            vae_tiling: args.vae_tiling,
        },
    })
}
