//! The README's first command: `vidgen generate PROMPT -o FILE.mp4` with no other flag runs the
//! built-in model (`models/tiny-world`) at the size and steps its folder sets and writes a real
//! video: the world's flat background with coloured objects on it, found by the same
//! frame-only detectors as `vidgen eval`. (Whether the objects are the ones asked for is
//! `vidgen eval`'s measure; the committed model is not yet good at it — see TRAINING.md.)

use std::process::Command;

use vidgen::eval::detect::find_blobs;

/// Frames in which the detectors find at least one world object (a palette-coloured blob).
fn frames_with_objects(frames: &[f32], f: usize, h: usize, w: usize) -> usize {
    (0..f)
        .filter(|t| {
            let frame = &frames[t * h * w * 3..(t + 1) * h * w * 3];
            find_blobs(frame, h, w).iter().any(|b| b.colour.is_some())
        })
        .count()
}

#[test]
fn generate_with_no_flags_uses_the_built_in_model_and_draws_world_objects() {
    let tmp = tempfile::tempdir().unwrap();
    for (i, prompt) in [
        "a red ball bounces on the floor",
        "a blue square moves to the right",
    ]
    .into_iter()
    .enumerate()
    {
        let out = tmp.path().join(format!("{i}.mp4"));
        let frames_file = tmp.path().join(format!("{i}.safetensors"));
        let run = Command::new(env!("CARGO_BIN_EXE_vidgen"))
            .args(["generate", prompt, "-o"])
            .arg(&out)
            .arg("--save-frames")
            .arg(&frames_file)
            .output()
            .unwrap();
        assert!(
            run.status.success(),
            "{}",
            String::from_utf8_lossy(&run.stderr)
        );
        assert!(std::fs::metadata(&out).unwrap().len() > 1000);
        let video = vidgen_video::read_frames_safetensors(&frames_file).unwrap();
        // the model folder's defaults: 17 frames of 64x64
        assert_eq!((video.frames, video.height, video.width), (17, 64, 64));
        let with_objects =
            frames_with_objects(&video.data, video.frames, video.height, video.width);
        assert!(
            with_objects >= video.frames / 2,
            "{prompt:?}: objects found in only {with_objects} of {} frames",
            video.frames
        );
    }
}
