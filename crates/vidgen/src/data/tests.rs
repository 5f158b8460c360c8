use std::collections::HashSet;

use super::world::{ballistic, GRAVITY};
use super::*;

fn spec() -> WorldSpec {
    WorldSpec::default()
}

fn words(caption: &str) -> Vec<&str> {
    caption.split_whitespace().collect()
}

#[test]
fn same_seed_same_clip_different_seed_different_clip() {
    for split in [Split::Train, Split::Eval] {
        let a = sample_clip(&spec(), 7, split);
        let b = sample_clip(&spec(), 7, split);
        assert_eq!(a.caption, b.caption);
        assert_eq!(a.truth, b.truth);
        let bits = |v: &[f32]| v.iter().map(|x| x.to_bits()).collect::<Vec<_>>();
        assert_eq!(bits(&a.video), bits(&b.video));
        let c = sample_clip(&spec(), 8, split);
        assert_ne!(bits(&a.video), bits(&c.video));
    }
    // The splits draw different scenes for one seed.
    let (t, e) = (
        sample_clip(&spec(), 3, Split::Train),
        sample_clip(&spec(), 3, Split::Eval),
    );
    assert_ne!(t.truth, e.truth);
}

#[test]
fn captions_name_the_truth() {
    let sizes = [
        (Size::Small, ["small", "little", "tiny"]),
        (Size::Big, ["big", "large", "huge"]),
    ];
    for seed in 0..1000 {
        for split in [Split::Train, Split::Eval] {
            let clip = sample_clip(&spec(), seed, split);
            let (t, w) = (&clip.truth, words(&clip.caption));
            let first = &t.objects[0];
            let msg = format!("seed {seed}: `{}` for {:?}", clip.caption, t.scene);
            for object in &t.objects {
                assert!(w.contains(&object.colour.as_str()), "{msg}");
                assert!(w.contains(&object.shape.name()), "{msg}");
            }
            // A size word, when present before the first shape, is the first object's size.
            let first_np: Vec<&str> = w
                .iter()
                .take_while(|x| **x != first.shape.name())
                .copied()
                .collect();
            for (size, names) in sizes {
                if names.iter().any(|n| first_np.contains(n)) {
                    assert_eq!(first.size, size, "{msg}");
                }
            }
            let has = |d: &str| w.contains(&d);
            match t.scene {
                SceneKind::Move | SceneKind::Occluder => {
                    let d = first.direction;
                    let named = [Direction::Left, Direction::Right]
                        .into_iter()
                        .filter(|x| has(x.name()))
                        .collect::<Vec<_>>();
                    assert!(named.is_empty() || named == [d], "{msg}");
                    if t.scene == SceneKind::Move {
                        assert!(!named.is_empty() || matches!(d, Direction::Up | Direction::Down));
                    }
                }
                SceneKind::Pan => {
                    let d = t.camera_direction.expect("pan has a camera direction");
                    assert!(has(d.name()) && !has(d.opposite().name()), "{msg}");
                }
                SceneKind::TwoObjects => {
                    let (a, b) = (&t.objects[0].states[0], &t.objects[1].states[0]);
                    match t.relation {
                        Some(Relation::LeftOf) => assert!(a.x < b.x && has("left"), "{msg}"),
                        Some(Relation::RightOf) => assert!(a.x > b.x && has("right"), "{msg}"),
                        _ => assert!(!has("left") && !has("right"), "{msg}"),
                    }
                    let moving = t.objects.iter().filter(|o| o.motion == SceneKind::Move);
                    let expected = match t.relation {
                        Some(Relation::Apart) => 2,
                        Some(Relation::Toward) => 1,
                        _ => 0,
                    };
                    assert_eq!(moving.count(), expected, "{msg}");
                }
                SceneKind::Bounce => assert!(has("bounces") || has("hops") || has("rebounds")),
                SceneKind::Fall | SceneKind::Still => {
                    assert!(!has("left") && !has("right"), "{msg}")
                }
            }
        }
    }
}

#[test]
fn canonical_phrasings_are_train_captions() {
    let train: HashSet<String> = (0..20_000)
        .map(|s| sample_clip(&spec(), s, Split::Train).caption)
        .collect();
    for wanted in [
        "a red ball bounces on the floor",
        "a blue square moves to the left",
        "a green triangle moves to the right",
        "a yellow triangle falls",
        "an orange ball bounces on the floor",
    ] {
        assert!(train.contains(wanted), "`{wanted}` never drawn");
    }
}

#[test]
fn eval_phrasings_never_appear_in_train_and_vocabulary_covers_both() {
    let vocab: HashSet<String> = vocabulary().into_iter().collect();
    let sorted = vocabulary();
    assert!(
        sorted.windows(2).all(|w| w[0] < w[1]),
        "sorted and deduplicated"
    );
    let train: HashSet<String> = (0..3000)
        .map(|s| sample_clip(&spec(), s, Split::Train).caption)
        .collect();
    for seed in 0..3000 {
        let eval = sample_clip(&spec(), seed, Split::Eval).caption;
        assert!(
            !train.contains(&eval),
            "eval caption `{eval}` is a train caption"
        );
        for caption in [&eval, &sample_clip(&spec(), seed, Split::Train).caption] {
            for word in caption.split_whitespace() {
                assert!(
                    vocab.contains(word),
                    "`{word}` of `{caption}` not in vocabulary"
                );
                assert_eq!(word, word.to_lowercase());
            }
            assert!(!caption.contains("a orange"), "{caption}");
        }
    }
}

#[test]
fn distractors_keep_every_meaning_word_and_come_from_outside_the_grammar() {
    let grammar: HashSet<String> = vocabulary().into_iter().collect();
    let (mut replaced, mut inserted) = (0, 0);
    for seed in 0..400 {
        let clip = sample_clip(&spec(), seed, Split::Train);
        let mut rng = crate::noise::NoiseRng::new(seed);
        let noisy = distract(&clip.caption, &mut rng);
        let again = distract(&clip.caption, &mut crate::noise::NoiseRng::new(seed));
        assert_eq!(noisy, again, "not deterministic per seed");
        let (before, after) = (words(&clip.caption), words(&noisy));
        // the caption's grammar words, in order, minus at most one redundant verb
        let kept: Vec<&str> = after
            .iter()
            .copied()
            .filter(|w| grammar.contains(*w))
            .collect();
        let added: Vec<&str> = after
            .iter()
            .copied()
            .filter(|w| !grammar.contains(*w))
            .collect();
        assert!(
            (1..=3).contains(&added.len()),
            "{noisy:?} from {:?}: {} distractors",
            clip.caption,
            added.len()
        );
        if kept == before {
            inserted += 1;
        } else {
            replaced += 1;
            assert_eq!(
                kept.len() + 1,
                before.len(),
                "{noisy:?} from {:?}",
                clip.caption
            );
            let gone = before
                .iter()
                .enumerate()
                .find(|(i, w)| kept.get(*i) != Some(*w))
                .map(|(_, w)| *w)
                .expect("a word is gone");
            assert!(
                [
                    "moves", "slides", "falls", "drops", "glides", "travels", "goes", "rolls",
                    "floats", "passes", "pans", "move", "moving"
                ]
                .contains(&gone),
                "{gone:?} taken from {:?}",
                clip.caption
            );
            for meaning in [
                "left", "right", "up", "down", "floor", "camera", "apart", "toward",
            ] {
                assert_eq!(
                    before.contains(&meaning),
                    kept.contains(&meaning),
                    "{meaning:?}: {noisy:?} from {:?}",
                    clip.caption
                );
            }
        }
    }
    assert!(
        replaced > 50 && inserted > 150,
        "replaced {replaced}, inserted {inserted}"
    );
}

#[test]
fn mixture_sums_to_one_and_is_followed() {
    let total: f64 = MIXTURE.iter().map(|(_, p)| p).sum();
    assert!((total - 1.0).abs() < 1e-9);
    let n = 4000;
    let clips: Vec<Truth> = (0..n)
        .map(|s| sample_clip(&spec(), s, Split::Train).truth)
        .collect();
    for &(kind, p) in MIXTURE {
        let seen = clips.iter().filter(|t| t.scene == kind).count() as f64 / n as f64;
        assert!((seen - p).abs() < 0.03, "{kind:?}: {seen} vs {p}");
    }
}

#[test]
fn motions_are_big_enough_to_measure() {
    for seed in 0..600 {
        let t = sample_clip(&spec(), seed, Split::Train).truth;
        let s = &t.objects[0].states;
        let (first, last) = (s[0], s[s.len() - 1]);
        let (dx, dy) = (last.x - first.x, last.y - first.y);
        let (w, h) = (t.spec.width as f32, t.spec.height as f32);
        match t.expected_direction() {
            Direction::Left => assert!(dx < -0.2 * w, "seed {seed}: {dx}"),
            Direction::Right => assert!(dx > 0.2 * w, "seed {seed}: {dx}"),
            Direction::Up => assert!(dy < -0.3 * h, "seed {seed}: {dy}"),
            Direction::Down => assert!(dy > 0.19 * h, "seed {seed}: {dy}"),
            Direction::None => assert!(dx.abs() + dy.abs() < 1e-3, "seed {seed}"),
        }
        if t.scene == SceneKind::Move {
            let travel = dx.abs().max(dy.abs()) / if dx != 0.0 { w } else { h };
            assert!(travel >= 0.3, "seed {seed}: travels {travel}");
        }
        if t.scene == SceneKind::Occluder {
            // Fully hidden somewhere in the middle, fully seen at both ends.
            assert!(s.iter().any(|x| !x.visible), "seed {seed}: never hidden");
            assert!(first.visible_fraction > 0.45 && last.visible_fraction > 0.45);
        }
        for object in &t.objects {
            for st in &object.states {
                assert!(
                    (0.0..=w).contains(&st.x) && (0.0..=h).contains(&st.y),
                    "seed {seed}"
                );
            }
        }
    }
}

#[test]
fn fall_follows_the_parabola_and_bounces_with_restitution() {
    let (y0, g, e, rest) = (10.0f32, 160.0f32, 0.6f32, 50.0f32);
    let t_contact = (2.0 * (rest - y0) / g).sqrt();
    for i in 0..20 {
        let t = t_contact * i as f32 / 20.0;
        let (y, v) = ballistic(y0, 0.0, g, e, rest, t);
        assert!((y - (y0 + 0.5 * g * t * t)).abs() < 1e-3, "t {t}: {y}");
        assert!((v - g * t).abs() < 1e-3);
    }
    // After contact: launched upward at e times the impact speed.
    let v_up = e * g * t_contact;
    let flight = 2.0 * v_up / g;
    for i in 1..20 {
        let s = flight * i as f32 / 20.0;
        let (y, v) = ballistic(y0, 0.0, g, e, rest, t_contact + s);
        assert!(
            (y - (rest - v_up * s + 0.5 * g * s * s)).abs() < 1e-2,
            "s {s}: {y}"
        );
        assert!((v - (-v_up + g * s)).abs() < 1e-2);
        assert!(y <= rest + 1e-3);
    }
    // Without restitution the body stays on the floor.
    assert_eq!(
        ballistic(y0, 0.0, g, 0.0, rest, 3.0 * t_contact),
        (rest, 0.0)
    );
}

#[test]
fn bounce_clips_use_the_frame_rate() {
    for fps in [4, 8, 24] {
        let spec = WorldSpec { fps, ..spec() };
        let clip = (0..200)
            .map(|s| sample_clip(&spec, s, Split::Train))
            .find(|c| c.truth.scene == SceneKind::Bounce)
            .expect("a bounce clip");
        let t = &clip.truth;
        let g = t.gravity.unwrap();
        assert!(g >= GRAVITY * spec.height as f32);
        let s = &t.objects[0].states;
        for (k, st) in s.iter().enumerate().take(3) {
            let time = k as f32 / fps as f32;
            let free = s[0].y + 0.5 * g * time * time;
            if free < t.floor_y.unwrap() - t.objects[0].radius {
                assert!((st.y - free).abs() < 1e-2, "fps {fps} frame {k}");
                assert!((st.vy - g * time / fps as f32).abs() < 1e-3);
            }
        }
        let floor = t.floor_y.unwrap() - t.objects[0].radius;
        assert!(
            s.iter().any(|st| (st.y - floor).abs() < 1.0),
            "fps {fps}: reaches floor"
        );
    }
}

#[test]
fn frames_show_the_first_object_in_its_colour() {
    for seed in 0..300 {
        let clip = sample_clip(&spec(), seed, Split::Train);
        let t = &clip.truth;
        let (h, w) = (t.spec.height, t.spec.width);
        let o = &t.objects[0];
        let colour = render::rgb_of(&o.colour);
        for (k, st) in o.states.iter().enumerate() {
            if st.visible_fraction < 1.0 {
                continue;
            }
            // The pixel under the centre (a triangle's centre is inside it too).
            let (x, y) = (st.x as usize, (st.y + 0.3 * o.radius) as usize);
            let px = &clip.video[((k * h + y) * w + x) * 3..][..3];
            let d: f32 = (0..3).map(|c| (px[c] - colour[c]).abs()).sum();
            assert!(d < 0.05, "seed {seed} frame {k}: {px:?} vs {colour:?}");
        }
        assert!(clip.video.iter().all(|v| (0.0..=1.0).contains(v)));
    }
}

#[test]
fn any_size_and_aspect_draws() {
    for (f, h, w) in [
        (1, 16, 16),
        (2, 48, 80),
        (9, 80, 48),
        (5, 16, 100),
        (33, 32, 32),
    ] {
        let spec = WorldSpec {
            num_frames: f,
            height: h,
            width: w,
            fps: 12,
        };
        for seed in 0..100 {
            let clip = sample_clip(&spec, seed, Split::Eval);
            assert_eq!(clip.video.len(), f * h * w * 3);
            assert!(clip
                .video
                .iter()
                .all(|v| (0.0..=1.0).contains(v) && v.is_finite()));
            assert!(clip.truth.objects.iter().all(|o| o.states.len() == f));
        }
    }
    assert!(check_spec(&WorldSpec {
        height: 8,
        ..spec()
    })
    .is_err());
}

#[test]
fn truth_round_trips_through_json() {
    let t = sample_clip(&spec(), 11, Split::Train).truth;
    let json = serde_json::to_string(&t).unwrap();
    assert!(json.contains("\"scene\""));
    assert_eq!(serde_json::from_str::<Truth>(&json).unwrap(), t);
}

#[test]
fn rendering_is_fast() {
    let start = std::time::Instant::now();
    let n = 200;
    for seed in 0..n {
        std::hint::black_box(sample_clip(&spec(), seed, Split::Train));
    }
    let per_clip = start.elapsed().as_secs_f64() / n as f64;
    eprintln!("sample_clip 17x64x64: {:.3} ms", per_clip * 1e3);
    if !cfg!(debug_assertions) {
        assert!(per_clip < 5e-3, "{per_clip} s per clip");
    }
}
