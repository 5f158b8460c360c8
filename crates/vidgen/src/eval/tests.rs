use super::*;
use crate::data::render::{draw_shape, rgb_of};
use crate::data::{sample_clip, Split, WorldSpec};
use crate::noise::NoiseRng;

fn world_scores(spec: WorldSpec, split: Split, n: u64) -> Vec<ClipScore> {
    let (f, h, w) = (spec.num_frames, spec.height, spec.width);
    (0..n)
        .map(|seed| {
            let clip = sample_clip(&spec, seed, split);
            let s = score_clip(&clip.video, f, h, w, &clip.truth, &clip.caption);
            if !(s.colour && s.shape && s.direction != Some(false)) {
                eprintln!("seed {seed} `{}`: {s:?}", clip.caption);
            }
            s
        })
        .collect()
}

#[test]
fn ground_truth_clips_score_near_perfect() {
    for split in [Split::Train, Split::Eval] {
        let summary = summarize(&world_scores(WorldSpec::default(), split, 200));
        eprintln!("{split:?}: {summary:?}");
        assert!(summary.colour_accuracy >= 0.97, "{summary:?}");
        assert!(summary.shape_accuracy >= 0.93, "{summary:?}");
        assert!(summary.direction_accuracy.unwrap() >= 0.97, "{summary:?}");
        assert!(summary.trajectory_error.unwrap() < 0.03, "{summary:?}");
        assert!(summary.permanence_rate.unwrap() >= 0.95, "{summary:?}");
        assert!(summary.consistency >= 0.95, "{summary:?}");
    }
}

#[test]
fn ground_truth_scores_hold_at_other_sizes_and_rates() {
    for (num_frames, height, width, fps) in [(9, 48, 80, 24), (25, 80, 48, 4), (17, 32, 32, 8)] {
        let spec = WorldSpec {
            num_frames,
            height,
            width,
            fps,
        };
        let summary = summarize(&world_scores(spec, Split::Eval, 150));
        eprintln!("{spec:?}: {summary:?}");
        assert!(summary.colour_accuracy >= 0.95, "{spec:?}: {summary:?}");
        assert!(summary.shape_accuracy >= 0.9, "{spec:?}: {summary:?}");
        assert!(
            summary.direction_accuracy.unwrap() >= 0.95,
            "{spec:?}: {summary:?}"
        );
        assert!(summary.consistency >= 0.9, "{spec:?}: {summary:?}");
    }
}

/// A 3×3 box blur of every frame, as a soft model (or a lossy codec) would draw.
fn blur(video: &[f32], h: usize, w: usize) -> Vec<f32> {
    let mut out = video.to_vec();
    for (src, dst) in video
        .chunks_exact(h * w * 3)
        .zip(out.chunks_exact_mut(h * w * 3))
    {
        for y in 0..h {
            for x in 0..w {
                for c in 0..3 {
                    let (mut sum, mut n) = (0.0, 0.0);
                    for yy in y.saturating_sub(1)..(y + 2).min(h) {
                        for xx in x.saturating_sub(1)..(x + 2).min(w) {
                            sum += src[(yy * w + xx) * 3 + c];
                            n += 1.0;
                        }
                    }
                    dst[(y * w + x) * 3 + c] = sum / n;
                }
            }
        }
    }
    out
}

#[test]
fn blurred_clips_keep_their_colour_shape_and_motion() {
    let spec = WorldSpec::default();
    let scores: Vec<ClipScore> = (0..150)
        .map(|seed| {
            let clip = sample_clip(&spec, seed, Split::Eval);
            score_clip(
                &blur(&clip.video, 64, 64),
                17,
                64,
                64,
                &clip.truth,
                &clip.caption,
            )
        })
        .collect();
    let summary = summarize(&scores);
    eprintln!("blurred: {summary:?}");
    assert!(summary.colour_accuracy >= 0.95, "{summary:?}");
    assert!(summary.shape_accuracy >= 0.9, "{summary:?}");
    assert!(summary.direction_accuracy.unwrap() >= 0.95, "{summary:?}");
    assert!(summary.trajectory_error.unwrap() < 0.03, "{summary:?}");
}

#[test]
fn uniform_noise_scores_poorly() {
    let spec = WorldSpec::default();
    let mut rng = NoiseRng::new(1);
    let scores: Vec<ClipScore> = (0..100)
        .map(|seed| {
            let clip = sample_clip(&spec, seed, Split::Eval);
            let noise: Vec<f32> = (0..17 * 64 * 64 * 3)
                .map(|_| rng.uniform() as f32)
                .collect();
            score_clip(&noise, 17, 64, 64, &clip.truth, &clip.caption)
        })
        .collect();
    let summary = summarize(&scores);
    eprintln!("noise: {summary:?}");
    assert!(summary.colour_accuracy <= 0.1, "{summary:?}");
    assert!(summary.shape_accuracy <= 0.2, "{summary:?}");
    assert!(summary.direction_accuracy.unwrap() <= 0.2, "{summary:?}");
    assert!(summary.consistency <= 0.1, "{summary:?}");
    if let Some(e) = summary.trajectory_error {
        assert!(e > 0.3, "{summary:?}");
    }
}

/// A clip of one shape moving from `from` to `to` (pixel centres) on a navy background.
fn hand_made(shape: Shape, colour: &str, from: (f32, f32), to: (f32, f32)) -> Vec<f32> {
    let (f, h, w) = (9, 48, 80);
    let bg = rgb_of("navy");
    let mut video: Vec<f32> = (0..f * h * w).flat_map(|_| bg).collect();
    for (k, frame) in video.chunks_exact_mut(h * w * 3).enumerate() {
        let t = k as f32 / (f - 1) as f32;
        let (x, y) = (from.0 + t * (to.0 - from.0), from.1 + t * (to.1 - from.1));
        draw_shape(frame, h, w, shape, x, y, 6.5, rgb_of(colour));
    }
    video
}

fn truth_for(shape: Shape, colour: &str, direction: Direction) -> Truth {
    let spec = WorldSpec {
        num_frames: 9,
        height: 48,
        width: 80,
        fps: 8,
    };
    let mut truth = (0..)
        .map(|s| sample_clip(&spec, s, Split::Train).truth)
        .find(|t| t.scene == SceneKind::Move)
        .unwrap();
    truth.objects[0].shape = shape;
    truth.objects[0].colour = colour.into();
    truth.objects[0].direction = direction;
    truth
}

#[test]
fn hand_made_clips_are_read_right() {
    let cases = [
        (
            Shape::Ball,
            "red",
            (15.0, 24.0),
            (60.0, 24.0),
            Direction::Right,
        ),
        (
            Shape::Square,
            "yellow",
            (60.0, 20.0),
            (20.0, 28.0),
            Direction::Left,
        ),
        (
            Shape::Triangle,
            "white",
            (40.0, 38.0),
            (40.0, 10.0),
            Direction::Up,
        ),
        (
            Shape::Ball,
            "purple",
            (40.0, 20.0),
            (41.0, 21.0),
            Direction::None,
        ),
    ];
    for (shape, colour, from, to, direction) in cases {
        let video = hand_made(shape, colour, from, to);
        let s = score_clip(&video, 9, 48, 80, &truth_for(shape, colour, direction), "");
        assert_eq!(s.detected_colour.as_deref(), Some(colour), "{s:?}");
        assert_eq!(s.detected_shape.as_deref(), Some(shape.name()), "{s:?}");
        assert_eq!(
            s.detected_direction.as_deref(),
            Some(direction.name()),
            "{s:?}"
        );
        assert!(s.colour && s.shape && s.direction == Some(true));
        assert_eq!(s.consistency, 1.0);
        // The same video judged against another prompt fails exactly where it differs.
        let other = truth_for(Shape::Square, "green", Direction::Down);
        let s = score_clip(&video, 9, 48, 80, &other, "");
        assert!(!s.colour && s.direction == Some(false));
        assert_eq!(s.shape, shape == Shape::Square);
    }
}

#[test]
fn a_blank_video_finds_nothing_and_reversed_motion_is_caught() {
    let truth = truth_for(Shape::Ball, "red", Direction::Right);
    let blank: Vec<f32> = (0..9 * 48 * 80).flat_map(|_| rgb_of("black")).collect();
    let s = score_clip(&blank, 9, 48, 80, &truth, "");
    assert!(!s.colour && !s.shape && s.direction == Some(false));
    assert_eq!(s.detected_colour, None);
    assert_eq!(s.consistency, 0.0);

    let mut video = hand_made(Shape::Ball, "red", (60.0, 24.0), (15.0, 24.0));
    let s = score_clip(&video, 9, 48, 80, &truth, "");
    assert!(s.colour && s.direction == Some(false));
    // An object that vanishes halfway is inconsistent.
    let half = video.len() / 2;
    video[half..].iter_mut().for_each(|v| *v = 0.06);
    let s = score_clip(&video, 9, 48, 80, &truth, "");
    assert!(s.consistency < 0.9, "{s:?}");
}

#[test]
fn summary_rates_count_only_clips_that_have_them() {
    let base = ClipScore {
        colour: true,
        shape: false,
        direction: None,
        trajectory_error: Some(0.1),
        permanence: Some(true),
        consistency: 0.5,
        detected_colour: None,
        detected_shape: None,
        detected_direction: None,
        expected_direction: String::new(),
    };
    let other = ClipScore {
        colour: false,
        direction: Some(true),
        trajectory_error: None,
        permanence: None,
        consistency: 1.0,
        ..base.clone()
    };
    let s = summarize(&[base, other]);
    assert_eq!(
        (s.count, s.colour_accuracy, s.shape_accuracy),
        (2, 0.5, 0.0)
    );
    assert_eq!((s.direction_accuracy, s.direction_count), (Some(1.0), 1));
    assert_eq!((s.trajectory_error, s.trajectory_count), (Some(0.1), 1));
    assert_eq!((s.permanence_rate, s.consistency), (Some(1.0), 0.75));
    assert_eq!(summarize(&[]).direction_accuracy, None);
}

/// `video` (rows of `w` RGB pixels) mirrored left to right.
fn mirrored(video: &[f32], w: usize) -> Vec<f32> {
    let mut out = video.to_vec();
    for (src, dst) in video.chunks_exact(w * 3).zip(out.chunks_exact_mut(w * 3)) {
        for x in 0..w {
            dst[x * 3..x * 3 + 3].copy_from_slice(&src[(w - 1 - x) * 3..(w - x) * 3]);
        }
    }
    out
}

/// `video` played backwards.
fn reversed(video: &[f32], h: usize, w: usize) -> Vec<f32> {
    video
        .chunks_exact(h * w * 3)
        .rev()
        .flatten()
        .copied()
        .collect()
}

/// Eval clips of `spec` whose prompt asks `want`, with the clip.
fn clips_asking(spec: &WorldSpec, want: Asked, n: usize) -> Vec<crate::data::Clip> {
    (0..2000)
        .map(|seed| sample_clip(spec, seed, Split::Eval))
        .filter(|c| asked(&c.truth, &c.caption) == want)
        .take(n)
        .collect()
}

#[test]
fn a_side_the_prompt_leaves_open_is_not_held_against_the_video() {
    let spec = WorldSpec::default();
    let (f, h, w) = (spec.num_frames, spec.height, spec.width);
    for want in [Asked::Sideways, Asked::AwayFromOther, Asked::TowardOther] {
        let clips = clips_asking(&spec, want, 8);
        assert_eq!(clips.len(), 8);
        for clip in &clips {
            let score = |video: &[f32]| score_clip(video, f, h, w, &clip.truth, &clip.caption);
            // The world's clip and its mirror image both do what the prompt says: the mirror
            // is the same scene drawn on the other side.
            let (s, m) = (score(&clip.video), score(&mirrored(&clip.video, w)));
            assert_eq!(s.direction, Some(true), "`{}`: {s:?}", clip.caption);
            assert_eq!(
                m.direction,
                Some(true),
                "`{}` mirrored: {m:?}",
                clip.caption
            );
            assert_ne!(s.detected_direction, m.detected_direction);
            if want == Asked::Sideways {
                assert_eq!(s.expected_direction, "left or right");
            } else {
                // Played backwards, objects that part meet and a mover that arrives leaves.
                let r = score(&reversed(&clip.video, h, w));
                assert_eq!(
                    r.direction,
                    Some(false),
                    "`{}` reversed: {r:?}",
                    clip.caption
                );
            }
        }
    }
    // A prompt that names the side is held to it: the mirror image fails.
    let named: Vec<_> = (0..2000)
        .map(|seed| sample_clip(&spec, seed, Split::Eval))
        .filter(|c| c.truth.scene == SceneKind::Occluder || c.truth.scene == SceneKind::Move)
        .filter(|c| c.caption.contains("left") || c.caption.contains("right"))
        .take(8)
        .collect();
    for clip in &named {
        let m = score_clip(
            &mirrored(&clip.video, w),
            f,
            h,
            w,
            &clip.truth,
            &clip.caption,
        );
        assert!(matches!(
            asked(&clip.truth, &clip.caption),
            Asked::Exactly(_)
        ));
        assert_eq!(
            m.direction,
            Some(false),
            "`{}` mirrored: {m:?}",
            clip.caption
        );
    }
}

#[test]
fn a_relation_with_no_second_object_in_sight_is_not_followed() {
    let spec = WorldSpec::default();
    let (f, h, w) = (spec.num_frames, spec.height, spec.width);
    let clip = &clips_asking(&spec, Asked::TowardOther, 1)[0];
    // Only the first-named object, moving as the world moves it.
    let alone = crate::data::render::render(&Truth {
        objects: clip.truth.objects[..1].to_vec(),
        ..clip.truth.clone()
    });
    let s = score_clip(&alone, f, h, w, &clip.truth, &clip.caption);
    assert!(s.colour, "{s:?}");
    assert_eq!(
        (s.direction, s.expected_direction.as_str()),
        (Some(false), "")
    );
}
