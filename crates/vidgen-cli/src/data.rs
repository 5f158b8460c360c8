//! `vidgen data world`: writes clips of the procedural world as a dataset folder.
//!
//! ```text
//! DIR/clip_00000.mp4   the video (H.264)
//! DIR/clip_00000.txt   its caption
//! DIR/clip_00000.json  its truth (scene, objects, per-frame positions)
//! DIR/manifest.jsonl   {"video": "clip_00000.mp4", "caption": "…", "truth": "clip_00000.json"}
//! ```
//!
//! Every file is written to a temporary name and renamed into place; the manifest comes last,
//! so a folder with a manifest is complete.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand, ValueEnum};
use vidgen::data::{check_spec, sample_clip, Split, WorldSpec};

use crate::generate::write_atomic;

#[derive(Subcommand)]
pub enum DataCommand {
    /// Write clips of the procedural physics world (mp4 + caption + truth, and a manifest).
    World(WorldArgs),
}

#[derive(Clone, Copy, ValueEnum)]
pub enum SplitArg {
    Train,
    Eval,
}

impl From<SplitArg> for Split {
    fn from(s: SplitArg) -> Split {
        match s {
            SplitArg::Train => Split::Train,
            SplitArg::Eval => Split::Eval,
        }
    }
}

#[derive(Args)]
pub struct WorldArgs {
    /// Number of clips (seeds SEED..SEED+COUNT).
    #[arg(long)]
    pub count: usize,
    /// Folder to write into; created if missing, and must be empty unless --force.
    #[arg(long)]
    pub out: PathBuf,
    /// First seed.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Frames per clip.
    #[arg(long, default_value_t = 17)]
    pub frames: usize,
    /// Frame height in pixels (at least 16).
    #[arg(long, default_value_t = 64)]
    pub height: usize,
    /// Frame width in pixels (at least 16).
    #[arg(long, default_value_t = 64)]
    pub width: usize,
    /// Frames per second: the physics runs in seconds, so this sets the clip's duration.
    #[arg(long, default_value_t = 8)]
    pub fps: u32,
    /// Caption phrasings: train, or the held-out eval ones.
    #[arg(long, value_enum, default_value = "train")]
    pub split: SplitArg,
    /// Write into a folder that already holds files (same-named files are replaced).
    #[arg(long)]
    pub force: bool,
}

pub fn run(command: DataCommand) -> Result<()> {
    match command {
        DataCommand::World(args) => run_world(args),
    }
}

fn run_world(args: WorldArgs) -> Result<()> {
    let spec = WorldSpec {
        num_frames: args.frames,
        height: args.height,
        width: args.width,
        fps: args.fps,
    };
    check_spec(&spec)
        .map_err(|reason| anyhow::anyhow!("--frames/--height/--width/--fps: {reason}"))?;
    prepare_out_dir(&args.out, args.force)?;
    let split = Split::from(args.split);
    let mut manifest = String::new();
    for i in 0..args.count {
        let seed = args.seed + i as u64;
        let clip = sample_clip(&spec, seed, split);
        let stem = format!("clip_{i:05}");
        let video_name = format!("{stem}.mp4");
        let truth_name = format!("{stem}.json");
        let frames = vidgen_video::Frames::new(
            spec.num_frames,
            spec.height,
            spec.width,
            spec.fps as f32,
            clip.video,
        )?;
        let video_path = args.out.join(&video_name);
        vidgen_video::write(&video_path, &frames)
            .with_context(|| format!("writing {}", video_path.display()))?;
        write_atomic(
            &args.out.join(format!("{stem}.txt")),
            clip.caption.as_bytes(),
        )?;
        let mut truth = serde_json::to_value(&clip.truth)?;
        truth["seed"] = seed.into();
        truth["caption"] = clip.caption.clone().into();
        write_atomic(
            &args.out.join(&truth_name),
            serde_json::to_string_pretty(&truth)?.as_bytes(),
        )?;
        let line = serde_json::json!({
            "video": video_name,
            "caption": clip.caption,
            "truth": truth_name,
        });
        manifest.push_str(&line.to_string());
        manifest.push('\n');
    }
    write_atomic(&args.out.join("manifest.jsonl"), manifest.as_bytes())?;
    eprintln!(
        "wrote {} clips ({} frames, {}x{}, {} fps, seeds {}..{}) to {}",
        args.count,
        spec.num_frames,
        spec.width,
        spec.height,
        spec.fps,
        args.seed,
        args.seed + args.count as u64,
        args.out.display()
    );
    Ok(())
}

/// Creates `dir`, or checks that it is an empty folder (any folder with `force`).
fn prepare_out_dir(dir: &Path, force: bool) -> Result<()> {
    if dir.exists() {
        if !dir.is_dir() {
            bail!("--out {}: is a file, not a folder", dir.display());
        }
        let mut entries =
            std::fs::read_dir(dir).with_context(|| format!("reading --out {}", dir.display()))?;
        if entries.next().is_some() && !force {
            bail!(
                "--out {} is not empty; choose a new folder, or pass --force to write into it \
                 (files of the same name are replaced)",
                dir.display()
            );
        }
        return Ok(());
    }
    std::fs::create_dir_all(dir).with_context(|| format!("creating --out {}", dir.display()))
}
