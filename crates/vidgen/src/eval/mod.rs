//! How well a video follows its prompt, judged from its frames alone against the world
//! [`Truth`] the prompt was written from.
//!
//! ```text
//! frames (F, H, W, 3) ──detect::find_blobs──► blobs per frame (colour class, box, fill)
//!                     ──pick the first-named object (its colour if present, else the
//!                       largest coloured blob)──► track ──► ClipScore ──summarize──► Summary
//! ```
//!
//! Colour is the palette colour nearest a blob's core; shape is the blob's coverage over its
//! bounding box (ball ≈ π/4, square ≈ 1, triangle ≈ 1/2) and the share of it below its centre
//! (triangle ≈ 3/4), on frames where it is not cut by the border or the wall; direction is the
//! box centre's displacement from the first to the last frame it is found in (under 10 % of the
//! frame counts as still), held to what the prompt asks ([`asked`]: a side it names, or away
//! from / toward the second-named object where it names none); trajectory error (falls and
//! bounces) is the mean |y − y_true| / H, a missed frame counting 1; permanence asks that the
//! object be found both before and after the frames the truth hides it behind the wall;
//! consistency is the fraction of consecutive fully-visible frame pairs whose object keeps its
//! colour class and changes area by less than half.

pub mod detect;
pub mod similarity;

use serde::Serialize;

use crate::data::{Direction, Relation, SceneKind, Shape, Truth, COLOURS};
use detect::{find_blobs, Blob};

/// Below this displacement (fraction of the frame side) an object counts as still.
pub const STILL_FRACTION: f32 = 0.1;

/// The verdicts on one clip.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ClipScore {
    /// The first-named object's colour was found.
    pub colour: bool,
    pub shape: bool,
    /// The object moved the way the caption says (`None` when the truth has no direction).
    pub direction: Option<bool>,
    /// Falls and bounces: mean |y − y_true| / H over frames.
    pub trajectory_error: Option<f64>,
    /// Occluder scenes whose truth hides the object: found again after the wall.
    pub permanence: Option<bool>,
    /// 0..1, 1 = perfectly consistent.
    pub consistency: f64,
    pub detected_colour: Option<String>,
    pub detected_shape: Option<String>,
    pub detected_direction: Option<String>,
    /// The directions the prompt accepts (`left or right`; empty when it depends on a second
    /// object that is never seen with the first).
    pub expected_direction: String,
}

/// Scores one video against what its prompt asked.
///
/// * `video` — `(F, H, W, 3)` RGB in [0, 1]; its height may differ from the truth's, whose
///   positions are then rescaled.
/// * `caption` — the prompt the video was made from, written from `truth`: it says whether a
///   side was asked for ([`asked`]).
///
/// # Panics
///
/// When `video.len()` is not `F·H·W·3` (a caller bug).
pub fn score_clip(
    video: &[f32],
    num_frames: usize,
    height: usize,
    width: usize,
    truth: &Truth,
    caption: &str,
) -> ClipScore {
    assert_eq!(
        video.len(),
        num_frames * height * width * 3,
        "score_clip: video is not (F, H, W, 3) = ({num_frames}, {height}, {width}, 3)"
    );
    let first = &truth.objects[0];
    let colour_index = |name: &str| COLOURS.iter().position(|(n, _)| *n == name);
    let target = colour_index(&first.colour);
    // 1. the first-named object in every frame (and the second-named one, by its colour only)
    let blobs: Vec<Vec<Blob>> = video
        .chunks_exact(height * width * 3)
        .map(|frame| find_blobs(frame, height, width))
        .collect();
    let track: Vec<Option<Blob>> = blobs.iter().map(|b| pick(b, target)).collect();
    let other_target = truth.objects.get(1).and_then(|o| colour_index(&o.colour));
    let other_track: Vec<Option<Blob>> = blobs
        .iter()
        .map(|b| other_target.and_then(|t| pick_exact(b, t)))
        .collect();
    let found: Vec<(usize, &Blob)> = track
        .iter()
        .enumerate()
        .filter_map(|(k, b)| b.as_ref().map(|b| (k, b)))
        .collect();

    // 2. colour and shape: majority over frames
    let detected_colour = mode(found.iter().filter_map(|(_, b)| b.colour)).map(|k| COLOURS[k].0);
    let whole: Vec<&Blob> = found
        .iter()
        .map(|(_, b)| *b)
        .filter(|b| !b.clipped && b.area >= 12)
        .collect();
    let shape_votes = if whole.is_empty() {
        found.iter().map(|(_, b)| *b).collect()
    } else {
        whole
    };
    let detected_shape = mode(
        shape_votes
            .iter()
            .map(|b| classify_shape(b.fill, b.bottom_share)),
    );

    // 3. direction: first to last frame found
    let detected_direction = match (found.first(), found.last()) {
        (Some((k0, a)), Some((k1, b))) if k1 > k0 => {
            let ((ax, ay), (bx, by)) = (a.centre(), b.centre());
            Some(direction_of(
                (bx - ax) / width as f32,
                (by - ay) / height as f32,
            ))
        }
        _ if num_frames == 1 && !found.is_empty() => Some(Direction::None),
        _ => None,
    };

    // 4. trajectory, permanence, consistency against the truth's per-frame states
    let sy = height as f32 / truth.spec.height as f32;
    let frames = num_frames.min(first.states.len());
    let trajectory_error = matches!(truth.scene, SceneKind::Fall | SceneKind::Bounce).then(|| {
        let total: f64 = (0..frames)
            .map(|k| match &track[k] {
                Some(b) => {
                    ((b.centre().1 - first.states[k].y * sy).abs() / height as f32).min(1.0) as f64
                }
                None => 1.0,
            })
            .sum();
        total / frames.max(1) as f64
    });
    let hidden: Vec<usize> = (0..frames).filter(|&k| !first.states[k].visible).collect();
    let permanence = match (hidden.first(), hidden.last()) {
        (Some(&h0), Some(&h1)) if h0 > 0 && h1 + 1 < frames => {
            let seen = |k: &usize| track[*k].as_ref().is_some_and(|b| b.colour == target);
            Some((0..h0).any(|k| seen(&k)) && (h1 + 1..frames).any(|k| seen(&k)))
        }
        _ => None,
    };
    let pairs: Vec<usize> = (0..frames.saturating_sub(1))
        .filter(|&k| {
            first.states[k].visible_fraction >= 0.99 && first.states[k + 1].visible_fraction >= 0.99
        })
        .collect();
    let consistent = pairs
        .iter()
        .filter(|&&k| match (&track[k], &track[k + 1]) {
            (Some(a), Some(b)) => {
                let (a1, a2) = (a.area as f64, b.area as f64);
                a.colour.is_some() && a.colour == b.colour && (a1 - a2).abs() < 0.5 * a1.max(a2)
            }
            _ => false,
        })
        .count();
    let consistency = if pairs.is_empty() {
        if found.is_empty() {
            0.0
        } else {
            1.0
        }
    } else {
        consistent as f64 / pairs.len() as f64
    };

    let accepted = accepted_directions(asked(truth, caption), &track, &other_track);
    ClipScore {
        colour: detected_colour == Some(first.colour.as_str()),
        shape: detected_shape == Some(first.shape),
        direction: Some(detected_direction.is_some_and(|d| accepted.contains(&d))),
        trajectory_error,
        permanence,
        consistency,
        detected_colour: detected_colour.map(str::to_string),
        detected_shape: detected_shape.map(|s| s.name().to_string()),
        detected_direction: detected_direction.map(|d| d.name().to_string()),
        expected_direction: accepted
            .iter()
            .map(|d| d.name())
            .collect::<Vec<_>>()
            .join(" or "),
    }
}

/// What a prompt asks of its first-named object's motion.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Asked {
    /// This direction (`None`: stay still).
    Exactly(Direction),
    /// Left or right, either: an occluder caption that names no side ("slips behind a pillar
    /// and reappears").
    Sideways,
    /// Sideways, away from the second-named object ("… and … drift apart").
    AwayFromOther,
    /// Sideways, toward the second-named object ("… heads toward …").
    TowardOther,
}

/// What `caption`, written from `truth`, asks of the first-named object. Where the words leave
/// the side open, the truth's own side is one draw among equally good ones, so it is not what
/// a video is held to.
pub fn asked(truth: &Truth, caption: &str) -> Asked {
    let names_a_side = caption
        .split_whitespace()
        .any(|w| matches!(w, "left" | "right"));
    match (truth.scene, truth.relation) {
        (SceneKind::TwoObjects, Some(Relation::Apart)) => Asked::AwayFromOther,
        (SceneKind::TwoObjects, Some(Relation::Toward)) => Asked::TowardOther,
        (SceneKind::Occluder, _) if !names_a_side => Asked::Sideways,
        _ => Asked::Exactly(truth.expected_direction()),
    }
}

/// The directions that satisfy `asked`, given the tracks of the first- and second-named
/// objects. A motion relative to the other object is judged from where the two first appear
/// together; none is accepted when they never do (the video does not show the relation).
fn accepted_directions(
    asked: Asked,
    track: &[Option<Blob>],
    other_track: &[Option<Blob>],
) -> Vec<Direction> {
    let other_is_right = || {
        track.iter().zip(other_track).find_map(|pair| match pair {
            (Some(a), Some(b)) => Some(b.cx > a.cx),
            _ => None,
        })
    };
    let side = |right: bool| {
        if right {
            Direction::Right
        } else {
            Direction::Left
        }
    };
    match asked {
        Asked::Exactly(d) => vec![d],
        Asked::Sideways => vec![Direction::Left, Direction::Right],
        Asked::AwayFromOther => other_is_right().map(|r| side(!r)).into_iter().collect(),
        Asked::TowardOther => other_is_right().map(side).into_iter().collect(),
    }
}

/// The blob of the target colour if there is one, else the largest coloured blob.
fn pick(blobs: &[Blob], target: Option<usize>) -> Option<Blob> {
    target
        .and_then(|t| pick_exact(blobs, t))
        .or_else(|| largest(blobs.iter().filter(|b| b.colour.is_some())))
}

/// The largest blob of colour `target`, if any.
fn pick_exact(blobs: &[Blob], target: usize) -> Option<Blob> {
    largest(blobs.iter().filter(|b| b.colour == Some(target)))
}

fn largest<'a>(blobs: impl Iterator<Item = &'a Blob>) -> Option<Blob> {
    blobs.max_by_key(|b| b.area).cloned()
}

/// Fill ratio and bottom share → shape: a triangle holds 3/4 of its coverage below its centre
/// (or fills half its box), a square fills its box, a ball π/4 of it.
pub fn classify_shape(fill: f32, bottom_share: f32) -> Shape {
    if bottom_share >= 0.62 || fill < 0.6 {
        Shape::Triangle
    } else if fill >= 0.9 {
        Shape::Square
    } else {
        Shape::Ball
    }
}

/// Displacement (fractions of the frame width and height) → direction; small ones are still.
pub fn direction_of(dx: f32, dy: f32) -> Direction {
    if dx.abs().max(dy.abs()) < STILL_FRACTION {
        Direction::None
    } else if dx.abs() >= dy.abs() {
        if dx < 0.0 {
            Direction::Left
        } else {
            Direction::Right
        }
    } else if dy < 0.0 {
        Direction::Up
    } else {
        Direction::Down
    }
}

/// The most frequent item (the first seen among ties).
fn mode<T: PartialEq + Copy>(items: impl Iterator<Item = T>) -> Option<T> {
    let mut counts: Vec<(T, usize)> = Vec::new();
    for item in items {
        match counts.iter_mut().find(|(x, _)| *x == item) {
            Some((_, n)) => *n += 1,
            None => counts.push((item, 1)),
        }
    }
    let best = counts.iter().map(|(_, n)| *n).max()?;
    counts.into_iter().find(|(_, n)| *n == best).map(|(x, _)| x)
}

/// Rates over many clips.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Summary {
    pub count: usize,
    pub colour_accuracy: f64,
    pub shape_accuracy: f64,
    /// Over the clips with a direction (`null` when none had one).
    pub direction_accuracy: Option<f64>,
    pub direction_count: usize,
    /// Mean over fall and bounce clips, in frame heights.
    pub trajectory_error: Option<f64>,
    pub trajectory_count: usize,
    /// Over occluder clips whose truth hides the object.
    pub permanence_rate: Option<f64>,
    pub permanence_count: usize,
    pub consistency: f64,
}

/// Averages clip scores; rates over an empty set are 0 (or `None` for the optional ones).
pub fn summarize(scores: &[ClipScore]) -> Summary {
    let n = scores.len().max(1) as f64;
    let rate = |it: &mut dyn Iterator<Item = bool>| {
        let v: Vec<bool> = it.collect();
        let hits = v.iter().filter(|b| **b).count() as f64;
        ((!v.is_empty()).then(|| hits / v.len() as f64), v.len())
    };
    let (direction_accuracy, direction_count) =
        rate(&mut scores.iter().filter_map(|s| s.direction));
    let (permanence_rate, permanence_count) = rate(&mut scores.iter().filter_map(|s| s.permanence));
    let errors: Vec<f64> = scores.iter().filter_map(|s| s.trajectory_error).collect();
    Summary {
        count: scores.len(),
        colour_accuracy: scores.iter().filter(|s| s.colour).count() as f64 / n,
        shape_accuracy: scores.iter().filter(|s| s.shape).count() as f64 / n,
        direction_accuracy,
        direction_count,
        trajectory_error: (!errors.is_empty())
            .then(|| errors.iter().sum::<f64>() / errors.len() as f64),
        trajectory_count: errors.len(),
        permanence_rate,
        permanence_count,
        consistency: scores.iter().map(|s| s.consistency).sum::<f64>() / n,
    }
}

#[cfg(test)]
mod tests;
