//! The procedural physics world vidgen's own models learn from: flat coloured shapes that
//! move, fall, bounce, hide behind a wall or sit still under a fixed or panning camera, with a
//! caption and the exact truth of every frame.
//!
//! ```text
//! seed ──NoiseRng──► world::sample_truth ──► Truth (scene, objects, per-frame states)
//!                                              ├──render──► video (F, H, W, 3) in [0, 1]
//!                                              └──caption (Train or Eval phrasings)──► text
//! ```
//!
//! Everything is f32/f64 arithmetic on the CPU from one seeded [`NoiseRng`], so a
//! `(spec, seed, split)` gives the same clip on any machine. The dataset writer (mp4 files and
//! a manifest) is `vidgen data world` in the command-line crate.

mod caption;
pub mod render;
pub mod world;

pub use caption::{distract, vocabulary};
pub use world::{
    Direction, ObjectState, ObjectTruth, Occluder, Relation, SceneKind, Shape, Size, Speed, Truth,
    BACKGROUNDS, COLOURS, MIXTURE,
};

use crate::noise::NoiseRng;

/// Size of the clips to draw.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct WorldSpec {
    pub num_frames: usize,
    pub height: usize,
    pub width: usize,
    pub fps: u32,
}

impl Default for WorldSpec {
    /// 17 frames of 64×64 at 8 fps: 2 seconds, the built-in model's size.
    fn default() -> Self {
        Self {
            num_frames: 17,
            height: 64,
            width: 64,
            fps: 8,
        }
    }
}

/// Which caption phrasings to use: `Eval` phrasings (templates/synonym combos held out) never
/// appear in `Train`. The two splits also draw different scenes for the same seed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Split {
    Train,
    Eval,
}

/// One drawn clip.
#[derive(Clone, Debug)]
pub struct Clip {
    pub caption: String,
    /// (F, H, W, 3) row-major, RGB in [0, 1].
    pub video: Vec<f32>,
    pub spec: WorldSpec,
    pub truth: Truth,
}

/// Smallest frame side the world draws: objects stay a few pixels wide.
pub const MIN_SIDE: usize = 16;

/// Deterministic: the same (spec, seed, split) always gives the same clip, on any machine.
///
/// # Panics
///
/// When `spec` has no frames, a side under [`MIN_SIDE`] pixels, or fps 0: these are caller
/// bugs (the command line checks its arguments first, see [`check_spec`]).
pub fn sample_clip(spec: &WorldSpec, seed: u64, split: Split) -> Clip {
    sample_clip_from(spec, seed, split, MIXTURE)
}

/// [`sample_clip`] with the scenes drawn by `mixture` (shares summing to 1; see
/// [`world::reweighted_mixture`]) instead of [`MIXTURE`].
pub fn sample_clip_from(
    spec: &WorldSpec,
    seed: u64,
    split: Split,
    mixture: &[(SceneKind, f64)],
) -> Clip {
    if let Err(reason) = check_spec(spec) {
        panic!("sample_clip: {reason}");
    }
    // Eval scenes come from another stream, so an eval clip is never a train clip re-captioned.
    let salt = match split {
        Split::Train => 0,
        Split::Eval => 0x5EED_E7A1_0000_0000,
    };
    let mut rng = NoiseRng::new(seed ^ salt);
    let truth = world::sample_truth(spec, &mut rng, mixture);
    let caption = caption::caption(&truth, split, &mut rng);
    let video = render::render(&truth);
    Clip {
        caption,
        video,
        spec: *spec,
        truth,
    }
}

/// Whether the world can draw clips of `spec`; the error says what to change.
pub fn check_spec(spec: &WorldSpec) -> Result<(), String> {
    if spec.num_frames == 0 {
        return Err("num_frames must be at least 1".into());
    }
    if spec.height < MIN_SIDE || spec.width < MIN_SIDE {
        return Err(format!(
            "frames of {}x{} are too small; height and width must be at least {MIN_SIDE}",
            spec.width, spec.height
        ));
    }
    if spec.fps == 0 {
        return Err("fps must be at least 1".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests;
