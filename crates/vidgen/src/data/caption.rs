//! The caption grammar: a template per scene, filled with a noun phrase per object, a
//! direction word and sometimes a speed adverb.
//!
//! `{o}` is the first object's noun phrase (`a red ball`, `the big blue square`), `{p}` the
//! second's, `{d}` the direction word (`left`, `right`, `up`, `down`). Every `Eval` template
//! holds a word or word order no `Train` template has (`drifts`, `heads`, `pillar`, `sweeps`,
//! …), so no eval caption can equal a train caption; object, colour, shape and direction words
//! are shared, and so is the word that carries each template's meaning (its direction word, or
//! the scene's verb or noun: `bounces`, `still`, `apart`, `toward`, `camera`). The held-out
//! split tests new phrasings, not new vocabulary: a model trained from scratch, without a
//! pretrained text encoder, cannot know that a word it never saw (`climbs`, `descends`) means
//! up or down. The canonical phrasings (`a red ball bounces on the floor`, `a red ball moves
//! to the left`, `a red ball falls`) are train templates with the article `a` and no size.

use super::world::{Direction, ObjectTruth, Relation, SceneKind, Shape, Size, Speed, Truth};
use super::Split;
use crate::data::world::{pick, COLOURS};
use crate::noise::NoiseRng;

/// `(train, eval)` template lists.
type Templates = (&'static [&'static str], &'static [&'static str]);

const MOVE_SIDEWAYS: Templates = (
    &[
        "{o} moves to the {d}",
        "{o} slides to the {d}",
        "{o} glides to the {d}",
        "{o} travels to the {d}",
        "{o} moves {d}",
        "{o} is moving to the {d}",
        "there is {o} moving to the {d}",
    ],
    &[
        "{o} drifts to the {d}",
        "{o} heads toward the {d} side",
        "{o} makes its way to the {d}",
    ],
);
/// Only balls roll.
const ROLL: &[&str] = &["{o} rolls to the {d}"];
const MOVE_UP: Templates = (
    &[
        "{o} moves up",
        "{o} rises",
        "{o} floats up",
        "{o} goes up",
        "{o} is moving up",
    ],
    &["{o} drifts up", "{o} climbs up"],
);
const MOVE_DOWN: Templates = (
    &[
        "{o} moves down",
        "{o} sinks",
        "{o} goes down",
        "{o} slides down",
    ],
    &["{o} drifts down", "{o} makes its way down"],
);
const FALL: Templates = (
    &[
        "{o} falls",
        "{o} drops",
        "{o} falls to the floor",
        "{o} falls down",
        "{o} drops to the floor",
    ],
    &["{o} tumbles down", "{o} plunges to the floor"],
);
const BOUNCE: Templates = (
    &[
        "{o} bounces on the floor",
        "{o} bounces",
        "{o} falls and bounces",
        "{o} bounces off the floor",
    ],
    &[
        "{o} hops and bounces on the ground",
        "{o} drops and rebounds",
    ],
);
const STILL: Templates = (
    &[
        "{o} sits still",
        "{o} rests",
        "{o} stays still",
        "{o} does not move",
    ],
    &["{o} remains still", "{o} stands still"],
);
const STILL_ON_FLOOR: Templates = (
    &["{o} rests on the floor", "{o} sits on the floor"],
    &["{o} lies still on the floor"],
);
const APART: Templates = (
    &[
        "{o} and {p} move apart",
        "{o} and {p} move away from each other",
    ],
    &[
        "{o} and {p} drift apart",
        "{o} and {p} drift away from each other",
    ],
);
const TOWARD: Templates = (
    &[
        "{o} moves toward {p}",
        "{o} moves towards {p}",
        "{o} slides toward {p}",
    ],
    &["{o} heads toward {p}", "{o} drifts toward {p}"],
);
const BESIDE: Templates = (
    &[
        "{o} is {d} of {p}",
        "{o} is to the {d} of {p}",
        "{o} sits {d} of {p}",
    ],
    &[
        "{o} is positioned {d} of {p}",
        "{o} stays on the {d} side of {p}",
    ],
);
const OCCLUDER: Templates = (
    &[
        "{o} passes behind a wall",
        "{o} moves to the {d} behind a wall",
        "{o} goes behind a gray wall and comes out",
        "{o} moves behind a wall and reappears",
    ],
    &[
        "{o} slips behind a pillar and reappears",
        "{o} drifts to the {d} behind a gray pillar",
    ],
);
const PAN: Templates = (
    &[
        "the camera pans {d} over {o}",
        "the camera pans to the {d} over {o}",
        "the camera moves {d} past {o}",
    ],
    &[
        "the camera sweeps {d} across {o}",
        "the camera drifts to the {d} over {o}",
    ],
);

/// Every template list, for [`vocabulary`].
const ALL: &[Templates] = &[
    MOVE_SIDEWAYS,
    (ROLL, &[]),
    MOVE_UP,
    MOVE_DOWN,
    FALL,
    BOUNCE,
    STILL,
    STILL_ON_FLOOR,
    APART,
    TOWARD,
    BESIDE,
    OCCLUDER,
    PAN,
];

const ARTICLES: &[&str] = &["a", "the"];
/// `a` before a vowel (`an orange ball`).
const AN: &str = "an";
/// `(train, eval)` size words for small and big.
const SMALL_WORDS: (&[&str], &[&str]) = (&["small", "little"], &["tiny"]);
const BIG_WORDS: (&[&str], &[&str]) = (&["big", "large"], &["huge"]);
/// `(train, eval)` adverbs appended to directional motions, by speed.
const FAST_WORDS: (&[&str], &[&str]) = (&["quickly", "fast"], &["rapidly"]);
const SLOW_WORDS: (&[&str], &[&str]) = (&["slowly"], &["gently"]);
const DIRECTIONS: &[&str] = &["left", "right", "up", "down"];
/// Words of earlier eval templates, which held direction and scene words training never saw:
/// still in [`vocabulary`], so that `vidgen init` keeps writing the built-in model's tokenizer
/// (the same token ids), and prompts that use them stay one piece per word.
const FORMER_EVAL_WORDS: &[&str] = &[
    "approaches",
    "descends",
    "downward",
    "motionless",
    "place",
    "separate",
    "upward",
];

fn of_split<T: Copy>(pair: (T, T), split: Split) -> T {
    match split {
        Split::Train => pair.0,
        Split::Eval => pair.1,
    }
}

/// A caption of `truth` in `split`'s phrasings.
pub(crate) fn caption(truth: &Truth, split: Split, rng: &mut NoiseRng) -> String {
    let first = &truth.objects[0];
    let mut adverb = None;
    let (templates, direction): (Vec<&str>, Direction) = match truth.scene {
        SceneKind::Move => {
            let d = first.direction;
            let mut list = match d {
                Direction::Up => of_split(MOVE_UP, split).to_vec(),
                Direction::Down => of_split(MOVE_DOWN, split).to_vec(),
                _ => of_split(MOVE_SIDEWAYS, split).to_vec(),
            };
            let sideways = matches!(d, Direction::Left | Direction::Right);
            if split == Split::Train && first.shape == Shape::Ball && sideways {
                list.extend_from_slice(ROLL);
            }
            if rng.uniform() < 0.4 {
                let words = match first.speed {
                    Some(Speed::Fast) => of_split(FAST_WORDS, split),
                    _ => of_split(SLOW_WORDS, split),
                };
                adverb = Some(words[pick(rng, words.len())]);
            }
            (list, d)
        }
        SceneKind::Fall => (of_split(FALL, split).to_vec(), Direction::Down),
        SceneKind::Bounce => (of_split(BOUNCE, split).to_vec(), Direction::Down),
        SceneKind::Still if truth.floor_y.is_some() && rng.uniform() < 0.5 => {
            (of_split(STILL_ON_FLOOR, split).to_vec(), Direction::None)
        }
        SceneKind::Still => (of_split(STILL, split).to_vec(), Direction::None),
        SceneKind::TwoObjects => match truth.relation {
            Some(Relation::Apart) => (of_split(APART, split).to_vec(), Direction::None),
            Some(Relation::Toward) => (of_split(TOWARD, split).to_vec(), Direction::None),
            Some(Relation::LeftOf) => (of_split(BESIDE, split).to_vec(), Direction::Left),
            _ => (of_split(BESIDE, split).to_vec(), Direction::Right),
        },
        SceneKind::Occluder => (of_split(OCCLUDER, split).to_vec(), first.direction),
        SceneKind::Pan => (
            of_split(PAN, split).to_vec(),
            truth.camera_direction.unwrap_or(Direction::None),
        ),
    };
    let template = templates[pick(rng, templates.len())];
    let mut text = template
        .replace("{d}", direction.name())
        .replace("{o}", &noun_phrase(first, split, rng));
    if let Some(second) = truth.objects.get(1) {
        text = text.replace("{p}", &noun_phrase(second, split, rng));
    }
    if let Some(adverb) = adverb {
        text.push(' ');
        text.push_str(adverb);
    }
    text
}

/// `a red ball`, `the big blue square`, `an orange ball`, …: the article, a size word 40 % of
/// the time, colour, shape.
fn noun_phrase(object: &ObjectTruth, split: Split, rng: &mut NoiseRng) -> String {
    let article = if rng.uniform() < 0.7 {
        ARTICLES[0]
    } else {
        ARTICLES[1]
    };
    let mut words = vec![article];
    if rng.uniform() < 0.4 {
        let sizes = match object.size {
            Size::Small => of_split(SMALL_WORDS, split),
            Size::Big => of_split(BIG_WORDS, split),
        };
        words.push(sizes[pick(rng, sizes.len())]);
    }
    words.push(&object.colour);
    words.push(object.shape.name());
    if words[0] == "a" && words[1].starts_with(['a', 'e', 'i', 'o', 'u']) {
        words[0] = AN;
    }
    words.join(" ")
}

/// Every word any caption of either split can contain: lowercase, deduplicated, sorted.
pub fn vocabulary() -> Vec<String> {
    let mut words: Vec<String> = Vec::new();
    let mut add = |text: &str| {
        words.extend(
            text.split_whitespace()
                .filter(|w| !w.starts_with('{'))
                .map(str::to_string),
        )
    };
    for (train, eval) in ALL {
        train.iter().chain(eval.iter()).for_each(|t| add(t));
    }
    for pair in [SMALL_WORDS, BIG_WORDS, FAST_WORDS, SLOW_WORDS] {
        pair.0.iter().chain(pair.1).for_each(|t| add(t));
    }
    ARTICLES
        .iter()
        .chain(DIRECTIONS)
        .chain(FORMER_EVAL_WORDS)
        .chain([&AN])
        .for_each(|t| add(t));
    COLOURS.iter().for_each(|(c, _)| add(c));
    Shape::ALL.iter().for_each(|s| add(s.name()));
    words.sort();
    words.dedup();
    words
}

/// Verbs of train templates that the rest of their caption makes redundant when it holds one
/// of [`ANCHORS`] (`moves to the left`, `falls to the floor`, `the camera pans left`): the
/// ones [`distract`] may put a distractor in place of.
const REDUNDANT_VERBS: &[&str] = &[
    "moves", "move", "moving", "slides", "glides", "travels", "goes", "rolls", "floats", "falls",
    "drops", "passes", "pans",
];
/// Words that carry a caption's motion on their own: a direction, the floor a fall ends on,
/// the wall of an occluder, the camera of a pan, the relation of two objects.
const ANCHORS: &[&str] = &[
    "left", "right", "up", "down", "floor", "wall", "camera", "toward", "towards", "apart", "away",
];

/// Words a distractor is drawn from: the tokenizer's general prompt words
/// ([`crate::text::vocab::default_vocab`]) that the world's grammar, train and eval, never uses.
fn distractor_words() -> &'static [String] {
    static WORDS: std::sync::OnceLock<Vec<String>> = std::sync::OnceLock::new();
    WORDS.get_or_init(|| {
        let grammar = vocabulary();
        crate::text::vocab::default_vocab()
            .into_iter()
            .filter_map(|(piece, _)| {
                let word = piece.strip_prefix(crate::text::vocab::WORD_START)?;
                (!word.is_empty() && grammar.binary_search(&word.to_string()).is_err())
                    .then(|| word.to_string())
            })
            .collect()
    })
}

/// `caption` with one to three words the model has no use for: put in place of a verb the
/// caption's anchor word makes redundant (half the time, where it has one), else inserted at a
/// random place. Training on such captions (`data.word_noise`) teaches a model to read a
/// prompt by its meaning words and pass over words it never learned, as a phrasing it never
/// saw holds (`drifts to the left`). Distractors come from outside the world's grammar, so the
/// held-out phrasings' own words stay unseen. The words that carry meaning are never dropped.
pub fn distract(caption: &str, rng: &mut NoiseRng) -> String {
    let words: Vec<&str> = caption.split_whitespace().collect();
    let pool = distractor_words();
    let u = rng.uniform();
    let count = 1 + usize::from(u < 0.3) + usize::from(u < 0.1);
    let fillers: Vec<&str> = (0..count)
        .map(|_| pool[pick(rng, pool.len())].as_str())
        .collect();
    let verbs: Vec<usize> = if words.iter().any(|w| ANCHORS.contains(w)) {
        (0..words.len())
            .filter(|&i| REDUNDANT_VERBS.contains(&words[i]))
            .collect()
    } else {
        Vec::new()
    };
    // the fillers go at `at`, in place of `replaced` words (the verb, or none)
    let (at, replaced) = if !verbs.is_empty() && rng.uniform() < 0.5 {
        (verbs[pick(rng, verbs.len())], 1)
    } else {
        (pick(rng, words.len() + 1), 0)
    };
    let spliced: Vec<&str> = words[..at]
        .iter()
        .chain(&fillers)
        .chain(&words[at + replaced..])
        .copied()
        .collect();
    spliced.join(" ")
}
