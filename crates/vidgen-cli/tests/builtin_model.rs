//! The README's first command: `vidgen generate PROMPT -o FILE.mp4` with no other flag runs the
//! built-in model (`models/tiny-world`) at the size and steps its folder sets and writes a real
//! video: the world's flat background with coloured objects on it, found by the same
//! frame-only detectors as `vidgen eval`, in the colour the prompt asks for. (How well it
//! follows the rest — shape, motion — is `vidgen eval`'s measure; see TRAINING.md.)

use std::path::Path;
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

/// `vidgen generate PROMPT FLAGS -o out` (+ `--save-frames`): the frames it made.
fn generate(prompt: &str, flags: &[&str], out: &Path) -> vidgen_video::Frames {
    let frames_file = out.with_extension("safetensors");
    let run = Command::new(env!("CARGO_BIN_EXE_vidgen"))
        .args(["generate", prompt])
        .args(flags)
        .arg("-o")
        .arg(out)
        .arg("--save-frames")
        .arg(&frames_file)
        .output()
        .unwrap();
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    vidgen_video::read_frames_safetensors(&frames_file).unwrap()
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
        let video = generate(prompt, &[], &out);
        assert!(std::fs::metadata(&out).unwrap().len() > 1000);
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

/// The committed model follows the prompt's colour: the canonical prompt of each of the world's
/// seven colours at a fixed seed shows an object of that colour in most of the frames that show
/// one (`vidgen eval`'s colour test; on held-out phrasings, `vidgen eval --count 100`: 91 %).
/// The committed model gets 7 of 7 here (green in 11 of the 12 frames that show an object, the
/// others in 14-17 of 17); the test asks 4, as other CPUs round differently, where a model that
/// ignored the text would get about one.
#[test]
fn the_built_in_model_draws_the_asked_colour() {
    use vidgen::data::world::COLOURS;
    let tmp = tempfile::tempdir().unwrap();
    let mut right = Vec::new();
    for (i, (colour, _)) in COLOURS.iter().enumerate() {
        let prompt = format!("a {colour} ball bounces on the floor");
        let video = generate(
            &prompt,
            &["--seed", "1"],
            &tmp.path().join(format!("{colour}.mp4")),
        );
        let (h, w) = (video.height, video.width);
        // as `vidgen eval` scores colour: over the frames where an object is found, the asked
        // colour's object when there is one, else another; the asked colour must be the majority
        let (mut asked, mut found) = (0, 0);
        for t in 0..video.frames {
            let blobs = find_blobs(&video.data[t * h * w * 3..(t + 1) * h * w * 3], h, w);
            found += blobs.iter().any(|b| b.colour.is_some()) as usize;
            asked += blobs.iter().any(|b| b.colour == Some(i)) as usize;
        }
        eprintln!("{prompt:?}: {asked} of the {found} frames with an object");
        if found > 0 && 2 * asked > found {
            right.push(*colour);
        }
    }
    assert!(right.len() >= 4, "asked colour drawn only for {right:?}");
}
