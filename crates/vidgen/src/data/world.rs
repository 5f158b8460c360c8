//! Scene sampling and exact per-frame physics: what is in a clip and where it is at each frame.
//!
//! Positions are in pixels of the drawn frame, `x` to the right and `y` down, continuous:
//! pixel `(row, col)` covers `[col, col + 1) × [row, row + 1)` and its centre is at
//! `(col + 0.5, row + 0.5)`. Time is
//! real seconds: frame `k` is at `t = k / fps`, so a clip's duration depends on its frame rate.
//! Directional motions are scaled to the clip's duration (they always cross 30–80 % of the
//! frame); gravity is a fixed 2.5 frame-heights per second², raised only when a clip is too
//! short for the object to reach the floor.

use serde::{Deserialize, Serialize};

use super::WorldSpec;
use crate::noise::NoiseRng;

/// Object colours: saturated and at least 0.4 apart in RGB, far from every background.
pub const COLOURS: &[(&str, [f32; 3])] = &[
    ("red", [0.92, 0.12, 0.10]),
    ("orange", [1.00, 0.55, 0.05]),
    ("yellow", [0.98, 0.92, 0.10]),
    ("green", [0.15, 0.80, 0.20]),
    ("blue", [0.15, 0.35, 1.00]),
    ("purple", [0.65, 0.20, 0.90]),
    ("white", [0.96, 0.96, 0.96]),
];

/// Flat, muted backgrounds, each at least 0.55 from every object colour.
pub const BACKGROUNDS: &[(&str, [f32; 3])] = &[
    ("dark gray", [0.16, 0.16, 0.17]),
    ("navy", [0.06, 0.08, 0.24]),
    ("dark green", [0.07, 0.20, 0.10]),
    ("brown", [0.28, 0.18, 0.10]),
    ("black", [0.02, 0.02, 0.02]),
];

/// The occluding wall's colour: mid gray, far from backgrounds and objects (white included).
pub const OCCLUDER_RGB: [f32; 3] = [0.55, 0.55, 0.55];

/// How often each kind of scene is drawn (sums to 1): directional motion 45 %, fall/bounce
/// 20 %, still 10 %, two objects 12 %, occluder 8 %, camera pan 5 %.
pub const MIXTURE: &[(SceneKind, f64)] = &[
    (SceneKind::Move, 0.45),
    (SceneKind::Fall, 0.08),
    (SceneKind::Bounce, 0.12),
    (SceneKind::Still, 0.10),
    (SceneKind::TwoObjects, 0.12),
    (SceneKind::Occluder, 0.08),
    (SceneKind::Pan, 0.05),
];

/// Object half-extent as a fraction of `min(H, W)`: small and big.
pub const RADIUS_FRACTION: [f32; 2] = [0.08, 0.14];
/// Gravity in frame heights per second² (raised for clips too short to reach the floor).
pub const GRAVITY: f32 = 2.5;
/// Height of the floor band as a fraction of the frame height.
pub const FLOOR_FRACTION: f32 = 0.12;

/// The kind of scene, which decides the motion and the caption templates.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SceneKind {
    /// One object moving left, right, up or down at constant speed.
    Move,
    /// One object falling under gravity onto the floor and staying there.
    Fall,
    /// One object falling under gravity and bouncing on the floor with restitution.
    Bounce,
    /// One object standing still (sometimes on the floor).
    Still,
    /// Two objects and their relation (apart, toward, left of, right of).
    TwoObjects,
    /// One object passing behind a gray wall and coming out the other side.
    Occluder,
    /// A still object under a camera that pans left or right.
    Pan,
}

impl SceneKind {
    /// The name configs and the ground-truth JSON use.
    pub fn name(self) -> &'static str {
        match self {
            SceneKind::Move => "move",
            SceneKind::Fall => "fall",
            SceneKind::Bounce => "bounce",
            SceneKind::Still => "still",
            SceneKind::TwoObjects => "two_objects",
            SceneKind::Occluder => "occluder",
            SceneKind::Pan => "pan",
        }
    }
}

/// [`MIXTURE`] with each scene's share multiplied by its weight in `weights` (by
/// [`SceneKind::name`]; scenes not named keep weight 1), normalised to sum to 1. The error says
/// which name or weight is wrong.
pub fn reweighted_mixture(
    weights: &std::collections::BTreeMap<String, f64>,
) -> Result<Vec<(SceneKind, f64)>, String> {
    for (name, w) in weights {
        if !MIXTURE.iter().any(|(k, _)| k.name() == name) {
            let known: Vec<&str> = MIXTURE.iter().map(|(k, _)| k.name()).collect();
            return Err(format!(
                "unknown scene {name:?} in data.scene_weights; scenes are {}",
                known.join(", ")
            ));
        }
        if !w.is_finite() || *w < 0.0 {
            return Err(format!(
                "data.scene_weights.{name} must be a weight ≥ 0, got {w}"
            ));
        }
    }
    let shares: Vec<(SceneKind, f64)> = MIXTURE
        .iter()
        .map(|&(k, p)| (k, p * weights.get(k.name()).copied().unwrap_or(1.0)))
        .collect();
    let total: f64 = shares.iter().map(|(_, p)| p).sum();
    if total <= 0.0 {
        return Err("data.scene_weights leaves every scene at weight 0".into());
    }
    Ok(shares.into_iter().map(|(k, p)| (k, p / total)).collect())
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Shape {
    Ball,
    Square,
    Triangle,
}

impl Shape {
    pub const ALL: [Shape; 3] = [Shape::Ball, Shape::Square, Shape::Triangle];

    pub fn name(self) -> &'static str {
        match self {
            Shape::Ball => "ball",
            Shape::Square => "square",
            Shape::Triangle => "triangle",
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Size {
    Small,
    Big,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    Left,
    Right,
    Up,
    Down,
    None,
}

impl Direction {
    pub fn name(self) -> &'static str {
        match self {
            Direction::Left => "left",
            Direction::Right => "right",
            Direction::Up => "up",
            Direction::Down => "down",
            Direction::None => "none",
        }
    }

    pub fn opposite(self) -> Direction {
        match self {
            Direction::Left => Direction::Right,
            Direction::Right => Direction::Left,
            Direction::Up => Direction::Down,
            Direction::Down => Direction::Up,
            Direction::None => Direction::None,
        }
    }
}

/// Speed class of a directional motion, relative to the clip: slow crosses 32–48 % of the
/// frame, fast 58–78 %.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Speed {
    Slow,
    Fast,
}

/// How two objects relate (two-object scenes only).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Relation {
    /// Both move away from each other horizontally.
    Apart,
    /// The first moves horizontally toward the second, which stays still.
    Toward,
    /// Both still; the first is left of the second.
    LeftOf,
    /// Both still; the first is right of the second.
    RightOf,
}

/// One object at one frame, in the drawn frame's pixels (camera offset already applied).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct ObjectState {
    /// Centre (also the centre of the bounding box, for every shape).
    pub x: f32,
    pub y: f32,
    /// Velocity in pixels per frame (per-second velocity / fps).
    pub vx: f32,
    pub vy: f32,
    /// Whether any part shows: inside the frame and not entirely behind the occluder.
    pub visible: bool,
    /// Fraction of the bounding box that shows (1 = fully visible).
    pub visible_fraction: f32,
}

/// One object: what it is, how it moves, and where it is at every frame.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ObjectTruth {
    pub shape: Shape,
    /// A name from [`COLOURS`].
    pub colour: String,
    pub size: Size,
    /// Half-extent in pixels: a ball's radius, half a square's side, a triangle's half base
    /// (its height is `2 * radius`).
    pub radius: f32,
    /// How the object itself moves: the scene's kind, except `move` or `still` for each of
    /// two objects and `still` under a panning camera.
    pub motion: SceneKind,
    /// Direction of the object's own motion in the world (`none` when still, `down` for falls).
    pub direction: Direction,
    pub speed: Option<Speed>,
    /// `(F,)` per-frame states.
    pub states: Vec<ObjectState>,
}

/// The gray wall of occluder scenes: columns `[x0, x1)` over the whole height.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Occluder {
    pub x0: f32,
    pub x1: f32,
}

/// Everything true about a clip, from which its caption is written and its frames drawn.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Truth {
    pub scene: SceneKind,
    pub spec: WorldSpec,
    /// A name from [`BACKGROUNDS`].
    pub background: String,
    /// Top row of the floor band, when there is one.
    pub floor_y: Option<f32>,
    pub occluder: Option<Occluder>,
    pub relation: Option<Relation>,
    /// Pan scenes: the direction the camera moves.
    pub camera_direction: Option<Direction>,
    /// `(F,)` camera x offset in pixels: world x = frame x + offset.
    pub camera_offset: Vec<f32>,
    /// Gravity in pixels per second² (fall and bounce scenes).
    pub gravity: Option<f32>,
    /// Fraction of the speed kept at each bounce (fall: 0, bounce: 0.5–0.75).
    pub restitution: Option<f32>,
    pub objects: Vec<ObjectTruth>,
}

impl Truth {
    /// The direction the first-named object should move across the frame: its own motion,
    /// or, under a panning camera, the opposite of the camera's.
    pub fn expected_direction(&self) -> Direction {
        match self.camera_direction {
            Some(d) => d.opposite(),
            None => self.objects[0].direction,
        }
    }
}

/// Draws the scene of `seed`: kind by `mixture` (shares summing to 1, e.g. [`MIXTURE`]), then
/// objects and motion.
pub(crate) fn sample_truth(
    spec: &WorldSpec,
    rng: &mut NoiseRng,
    mixture: &[(SceneKind, f64)],
) -> Truth {
    let u = rng.uniform();
    let mut acc = 0.0;
    let mut scene = mixture[mixture.len() - 1].0;
    for &(kind, p) in mixture {
        acc += p;
        if u < acc {
            scene = kind;
            break;
        }
    }
    let background = BACKGROUNDS[pick(rng, BACKGROUNDS.len())].0.to_string();
    let mut truth = Truth {
        scene,
        spec: *spec,
        background,
        floor_y: None,
        occluder: None,
        relation: None,
        camera_direction: None,
        camera_offset: vec![0.0; spec.num_frames],
        gravity: None,
        restitution: None,
        objects: Vec::new(),
    };
    let scene_sampler = Sampler {
        spec,
        truth: &mut truth,
    };
    scene_sampler.fill(rng);
    for object in &mut truth.objects {
        for state in &mut object.states {
            state.visible_fraction = visible_fraction(spec, truth.occluder, state, object.radius);
            state.visible = state.visible_fraction > 0.0;
        }
    }
    truth
}

/// Uniform index in `0..n`.
pub(crate) fn pick(rng: &mut NoiseRng, n: usize) -> usize {
    ((rng.uniform() * n as f64) as usize).min(n - 1)
}

fn between(rng: &mut NoiseRng, lo: f32, hi: f32) -> f32 {
    lo + (hi - lo) * rng.uniform() as f32
}

struct Sampler<'a> {
    spec: &'a WorldSpec,
    truth: &'a mut Truth,
}

impl Sampler<'_> {
    fn fill(mut self, rng: &mut NoiseRng) {
        let (h, w) = (self.spec.height as f32, self.spec.width as f32);
        let frames = self.spec.num_frames;
        // Frames advanced from the first to the last frame (at least 1, so F = 1 still works).
        let steps = (frames.max(2) - 1) as f32;
        match self.truth.scene {
            SceneKind::Move => {
                let mut obj = self.object(rng, None);
                let dir = [
                    Direction::Left,
                    Direction::Right,
                    Direction::Up,
                    Direction::Down,
                ][pick(rng, 4)];
                let speed = if rng.uniform() < 0.5 {
                    Speed::Slow
                } else {
                    Speed::Fast
                };
                let frac = match speed {
                    Speed::Slow => between(rng, 0.32, 0.48),
                    Speed::Fast => between(rng, 0.58, 0.78),
                };
                let r = obj.radius;
                let horizontal = matches!(dir, Direction::Left | Direction::Right);
                let (along, across) = if horizontal { (w, h) } else { (h, w) };
                let travel = frac * along;
                // The centre stays inside the frame; up to half the object may leave it.
                let start_lo = 0.5 * r;
                let start = between(rng, start_lo, along - 0.5 * r - travel);
                let (start, sign) = match dir {
                    Direction::Left | Direction::Up => (along - start, -1.0),
                    _ => (start, 1.0),
                };
                let other = between(rng, r, across - r);
                let v = sign * travel / steps;
                obj.direction = dir;
                obj.speed = Some(speed);
                obj.states = (0..frames)
                    .map(|k| {
                        let s = start + v * k as f32;
                        let (x, y, vx, vy) = if horizontal {
                            (s, other, v, 0.0)
                        } else {
                            (other, s, 0.0, v)
                        };
                        state(x, y, vx, vy)
                    })
                    .collect();
                self.truth.objects.push(obj);
            }
            SceneKind::Fall | SceneKind::Bounce => {
                let mut obj = self.object(rng, None);
                let floor_y = (h * (1.0 - FLOOR_FRACTION)).round();
                let r = obj.radius;
                let rest_y = floor_y - r;
                let y0 = between(rng, r, r + 0.15 * h);
                let x = between(rng, r, w - r);
                let fps = self.spec.fps as f32;
                let duration = steps / fps;
                // Reach the floor within the first half of the clip, whatever its length.
                let drop = rest_y - y0;
                let g = (GRAVITY * h).max(2.0 * drop / (0.5 * duration).powi(2));
                let e = if self.truth.scene == SceneKind::Bounce {
                    between(rng, 0.5, 0.75)
                } else {
                    0.0
                };
                obj.direction = Direction::Down;
                obj.states = (0..frames)
                    .map(|k| {
                        let (y, vy) = ballistic(y0, 0.0, g, e, rest_y, k as f32 / fps);
                        state(x, y, 0.0, vy / fps)
                    })
                    .collect();
                self.truth.floor_y = Some(floor_y);
                self.truth.gravity = Some(g);
                self.truth.restitution = Some(e);
                self.truth.objects.push(obj);
            }
            SceneKind::Still => {
                let obj = self.object(rng, None);
                let r = obj.radius;
                let x = between(rng, r, w - r);
                let y = if rng.uniform() < 0.5 {
                    let floor_y = (h * (1.0 - FLOOR_FRACTION)).round();
                    self.truth.floor_y = Some(floor_y);
                    floor_y - r
                } else {
                    between(rng, r, h - r)
                };
                self.push_still(obj, x, y);
            }
            SceneKind::TwoObjects => self.two_objects(rng, steps),
            SceneKind::Occluder => {
                let mut obj = self.object(rng, None);
                let r = obj.radius;
                let travel = between(rng, 0.7, 0.85) * w;
                let step = travel / steps;
                let wall = (2.0 * r + (1.5 * step).max(3.0)).min(0.4 * w);
                let centre = between(rng, 0.45, 0.55) * w;
                let right = rng.uniform() < 0.5;
                let (start, v) = if right {
                    (centre - travel / 2.0, step)
                } else {
                    (centre + travel / 2.0, -step)
                };
                let y = between(rng, r, h - r);
                obj.direction = if right {
                    Direction::Right
                } else {
                    Direction::Left
                };
                obj.states = (0..frames)
                    .map(|k| state(start + v * k as f32, y, v, 0.0))
                    .collect();
                self.truth.occluder = Some(Occluder {
                    x0: centre - wall / 2.0,
                    x1: centre + wall / 2.0,
                });
                self.truth.objects.push(obj);
            }
            SceneKind::Pan => {
                let obj = self.object(rng, None);
                let r = obj.radius;
                let travel = between(rng, 0.32, 0.5) * w;
                let left = rng.uniform() < 0.5;
                // Panning left moves the camera to smaller world x: the scene slides right.
                let sign = if left { -1.0 } else { 1.0 };
                let image_start = if left {
                    between(rng, 0.5 * r, w - 0.5 * r - travel)
                } else {
                    between(rng, 0.5 * r + travel, w - 0.5 * r)
                };
                let y = between(rng, r, h - r);
                let camera: Vec<f32> = (0..frames)
                    .map(|k| sign * travel * k as f32 / steps)
                    .collect();
                let mut obj = obj;
                // Still in the world; only the camera moves.
                obj.motion = SceneKind::Still;
                obj.states = camera
                    .iter()
                    .map(|&c| state(image_start - c, y, -sign * travel / steps, 0.0))
                    .collect();
                self.truth.camera_offset = camera;
                self.truth.camera_direction = Some(if left {
                    Direction::Left
                } else {
                    Direction::Right
                });
                self.truth.objects.push(obj);
            }
        }
    }

    /// A random object (a colour other than `not_colour`), not yet placed.
    fn object(&self, rng: &mut NoiseRng, not_colour: Option<&str>) -> ObjectTruth {
        let shape = Shape::ALL[pick(rng, 3)];
        let colour = loop {
            let c = COLOURS[pick(rng, COLOURS.len())].0;
            if Some(c) != not_colour {
                break c;
            }
        };
        let size = if rng.uniform() < 0.5 {
            Size::Small
        } else {
            Size::Big
        };
        let idx = if size == Size::Small { 0 } else { 1 };
        let base = self.spec.height.min(self.spec.width) as f32;
        ObjectTruth {
            shape,
            colour: colour.to_string(),
            size,
            radius: RADIUS_FRACTION[idx] * base,
            motion: self.truth.scene,
            direction: Direction::None,
            speed: None,
            states: Vec::new(),
        }
    }

    fn push_still(&mut self, mut obj: ObjectTruth, x: f32, y: f32) {
        obj.direction = Direction::None;
        obj.states = vec![state(x, y, 0.0, 0.0); self.spec.num_frames];
        self.truth.objects.push(obj);
    }

    fn two_objects(self, rng: &mut NoiseRng, steps: f32) {
        let (h, w) = (self.spec.height as f32, self.spec.width as f32);
        let a = self.object(rng, None);
        let b = self.object(rng, Some(&a.colour));
        let (ra, rb) = (a.radius, b.radius);
        let relation = [
            Relation::Apart,
            Relation::Toward,
            Relation::LeftOf,
            Relation::RightOf,
        ][pick(rng, 4)];
        self.truth.relation = Some(relation);
        let y = between(rng, ra.max(rb), h - ra.max(rb));
        let frames = self.spec.num_frames;
        let linear = |mut obj: ObjectTruth, x0: f32, v: f32, y: f32| {
            obj.motion = if v == 0.0 {
                SceneKind::Still
            } else {
                SceneKind::Move
            };
            obj.direction = if v < 0.0 {
                Direction::Left
            } else if v > 0.0 {
                Direction::Right
            } else {
                Direction::None
            };
            obj.states = (0..frames)
                .map(|k| state(x0 + v * k as f32, y, v, 0.0))
                .collect();
            obj
        };
        // `a_left`: whether the first-named object is the one on the left.
        let a_left = match relation {
            Relation::LeftOf => true,
            Relation::RightOf => false,
            _ => rng.uniform() < 0.5,
        };
        let (left_r, right_r) = if a_left { (ra, rb) } else { (rb, ra) };
        let (left_x0, left_v, right_x0, right_v) = match relation {
            Relation::Apart => {
                let gap = between(rng, 2.0, 0.06 * w);
                let centre = w / 2.0;
                let lx = centre - gap / 2.0 - left_r;
                let rx = centre + gap / 2.0 + right_r;
                let room = (lx - 0.5 * left_r).min(w - 0.5 * right_r - rx);
                let travel = between(rng, 0.2 * w, 0.3 * w).min(room).max(0.0);
                (lx, -travel / steps, rx, travel / steps)
            }
            Relation::Toward => {
                // The mover ends 2–5 px short of the still one; it starts up to half outside.
                let gap = between(rng, 2.0, 5.0);
                let (mover_r, still_r) = (ra, rb);
                let still_x = w - still_r - between(rng, 0.0, 0.05 * w);
                let end = still_x - still_r - mover_r - gap;
                let travel = between(rng, 0.3 * w, 0.5 * w)
                    .min(end - 0.5 * mover_r)
                    .max(0.0);
                // Written for a mover on the left; mirrored when the first object is on the right.
                if a_left {
                    (end - travel, travel / steps, still_x, 0.0)
                } else {
                    (w - still_x, 0.0, w - end + travel, -travel / steps)
                }
            }
            Relation::LeftOf | Relation::RightOf => {
                let gap = between(rng, 0.1 * w, 0.3 * w);
                let span = left_r + gap + right_r;
                let lx = between(rng, left_r, (w - span).max(left_r + 0.01));
                (lx, 0.0, lx + span, 0.0)
            }
        };
        let (ax, av, bx, bv) = if a_left {
            (left_x0, left_v, right_x0, right_v)
        } else {
            (right_x0, right_v, left_x0, left_v)
        };
        // Tiny frames may not have room for the drawn gaps: keep both centres inside.
        let a = linear(a, ax.clamp(0.5 * ra, w - 0.5 * ra), av, y);
        let b = linear(b, bx.clamp(0.5 * rb, w - 0.5 * rb), bv, y);
        self.truth.objects.push(a);
        self.truth.objects.push(b);
    }
}

fn state(x: f32, y: f32, vx: f32, vy: f32) -> ObjectState {
    ObjectState {
        x,
        y,
        vx,
        vy,
        visible: true,
        visible_fraction: 1.0,
    }
}

/// Height and vertical velocity (px, px/s, `y` down) at time `t` of a body released at `y0`
/// with velocity `v0` under gravity `g`, bouncing on `rest_y` with restitution `e`. Exact:
/// each flight is the parabola `y0 + v t + g t² / 2`, solved for its floor contact.
pub fn ballistic(y0: f32, v0: f32, g: f32, e: f32, rest_y: f32, t: f32) -> (f32, f32) {
    let (mut y, mut v, mut t0) = (y0 as f64, v0 as f64, 0.0f64);
    let (g, e, rest_y, t) = (g as f64, e as f64, rest_y as f64, t as f64);
    for _ in 0..64 {
        // Contact time: y + v τ + g τ²/2 = rest_y, the positive root.
        let d = rest_y - y;
        let tau = (-v + (v * v + 2.0 * g * d).max(0.0).sqrt()) / g;
        if t <= t0 + tau {
            let s = t - t0;
            return ((y + v * s + 0.5 * g * s * s) as f32, (v + g * s) as f32);
        }
        let impact = v + g * tau;
        t0 += tau;
        y = rest_y;
        v = -e * impact;
        // Below half a pixel of rebound height the body is at rest.
        if v * v / (2.0 * g) < 0.5 {
            break;
        }
    }
    (rest_y as f32, 0.0)
}

/// Fraction of the object's bounding box inside the frame and outside the occluder.
fn visible_fraction(spec: &WorldSpec, occ: Option<Occluder>, s: &ObjectState, r: f32) -> f32 {
    let (x0, x1) = ((s.x - r).max(0.0), (s.x + r).min(spec.width as f32));
    let (y0, y1) = ((s.y - r).max(0.0), (s.y + r).min(spec.height as f32));
    if x1 <= x0 || y1 <= y0 {
        return 0.0;
    }
    let mut width = x1 - x0;
    if let Some(o) = occ {
        width -= (x1.min(o.x1) - x0.max(o.x0)).max(0.0);
    }
    (width.max(0.0) * (y1 - y0)) / (4.0 * r * r)
}
