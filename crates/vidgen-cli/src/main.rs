//! `vidgen`: generate videos from text, describe and create model folders, write world data
//! and evaluate models on it.

mod bench;
mod data;
mod eval;
mod generate;
mod info;
mod serve;
mod train;

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "vidgen",
    version,
    about = "Text-to-video generation with video diffusion transformers"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Generate a video from a prompt.
    Generate(generate::GenerateArgs),
    /// Describe a model folder: family, sizes, parameters, dtype, what it can do.
    Info(info::InfoArgs),
    /// Write a randomly initialised Wan-architecture model folder from a preset.
    Init(info::InitArgs),
    /// Train the VAE or the DiT of a vidgen model folder from a TOML run config.
    Train(train::TrainArgs),
    /// Time the transformer and the VAE at real sizes with random weights (JSON lines).
    Bench(bench::BenchArgs),
    /// Write training data: clips of the procedural physics world.
    #[command(subcommand)]
    Data(data::DataCommand),
    /// Serve the OpenAI-compatible video API (/v1/videos), a job queue and a web page.
    Serve(serve::ServeArgs),
    /// Score how well a model follows prompts of the world (colour, shape, motion, physics).
    Eval(eval::EvalArgs),
}

fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    vidgen::memory::keep_freed_memory();
    let result: Result<()> = match cli.command {
        Command::Generate(args) => generate::run(args),
        Command::Info(args) => info::run_info(args),
        Command::Init(args) => info::run_init(args),
        Command::Bench(args) => bench::run(args),
        Command::Data(command) => data::run(command),
        Command::Train(args) => train::run(args),
        Command::Eval(args) => eval::run(args),
        Command::Serve(args) => serve::run(args),
    };
    if let Err(err) = result {
        eprintln!("error: {err:#}");
        std::process::exit(1);
    }
}
