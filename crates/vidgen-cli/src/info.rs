//! `vidgen info` and `vidgen init`.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;

#[derive(Args)]
pub struct InfoArgs {
    /// Model folder (diffusers layout, or a Hugging Face cache folder).
    pub dir: PathBuf,
    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

pub fn run_info(args: InfoArgs) -> Result<()> {
    let info = vidgen::info::describe(&args.dir)
        .with_context(|| format!("reading model {}", args.dir.display()))?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&info)?);
    } else {
        print!("{info}");
    }
    Ok(())
}

#[derive(Args)]
pub struct InitArgs {
    /// Preset: one of `vidgen init --list`'s names (e.g. tiny).
    #[arg(long, default_value = "tiny")]
    pub preset: String,
    /// Folder to create (must not exist, or be empty).
    #[arg(short, long, required_unless_present = "list")]
    pub output: Option<PathBuf>,
    /// Seed of the random initialisation.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// List the presets and exit.
    #[arg(long)]
    pub list: bool,
    /// Replace the output folder if it already holds a model (a folder with model_index.json).
    #[arg(long)]
    pub force: bool,
}

pub fn run_init(args: InitArgs) -> Result<()> {
    use vidgen::families::wan::presets;
    if args.list {
        for name in presets::NAMES {
            let preset = presets::preset(name)?;
            println!("{name:<17} {}", preset.description);
        }
        return Ok(());
    }
    let output = args.output.expect("clap requires --output without --list");
    let preset = presets::preset(&args.preset)?;
    if args.force && output.exists() {
        if !output.join("model_index.json").is_file() {
            anyhow::bail!(
                "--force replaces only model folders; {} has no model_index.json",
                output.display()
            );
        }
        std::fs::remove_dir_all(&output)
            .with_context(|| format!("removing {}", output.display()))?;
    }
    vidgen::families::wan::init::write_random_model(&output, &preset, args.seed)
        .with_context(|| format!("writing model folder {}", output.display()))?;
    eprintln!(
        "wrote a random `{}` model to {} ({})",
        args.preset,
        output.display(),
        preset.description
    );
    Ok(())
}
