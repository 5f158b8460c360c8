//! Rough timings of every output format for a Wan-sized clip (default 81 frames of 480×832 at
//! 16 fps), and the mp4 round-trip error:
//!
//! ```text
//! cargo run --release -p vidgen-video --example encode_speed [FRAMES HEIGHT WIDTH]
//! ```

#[path = "../tests/common/mod.rs"]
mod common;

use std::path::Path;
use std::time::Instant;

use vidgen_video::{read, write, write_frames_safetensors, Frames, Result};

fn timed<T>(label: &str, frames: usize, path: &Path, run: impl FnOnce() -> Result<T>) -> T {
    let start = Instant::now();
    let value = run().unwrap_or_else(|e| panic!("{label}: {e}"));
    let seconds = start.elapsed().as_secs_f64();
    let bytes = std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
    println!(
        "{label:<22} {seconds:7.3} s  {:7.1} frames/s  {:9.1} KiB",
        frames as f64 / seconds,
        bytes as f64 / 1024.0
    );
    value
}

fn main() {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .map(|a| a.parse().expect("a number"))
        .collect();
    let (frames, height, width) = match args[..] {
        [f, h, w] => (f, h, w),
        _ => (81, 480, 832),
    };
    let video = common::moving_pattern(frames, height, width, 16.0);
    let dir = tempfile::tempdir().expect("a temporary folder");
    println!("{frames} frames of {height}x{width} at 16 fps");

    let mp4 = dir.path().join("clip.mp4");
    timed("write mp4", frames, &mp4, || write(&mp4, &video));
    let back: Frames = timed("read mp4", frames, &mp4, || read(&mp4));
    println!(
        "mp4 mean abs error     {:.4}",
        common::mean_abs_error(&video.data, &back.data)
    );
    let gif = dir.path().join("clip.gif");
    timed("write gif", frames, &gif, || write(&gif, &video));
    let png = dir.path().join("clip.png");
    timed("write png (+ folder)", frames, &png, || write(&png, &video));
    let tensors = dir.path().join("clip.safetensors");
    timed("write safetensors", frames, &tensors, || {
        write_frames_safetensors(&tensors, &video)
    });
}
