//! Training clips: where they come from (the procedural world, drawn on the fly, or a folder
//! of videos with captions) and which ones each step uses. The batch of a step is a pure
//! function of the run's seed and the step number, so a resumed run sees exactly the data an
//! uninterrupted one would.

use std::path::{Path, PathBuf};

use super::config::DataConfig;
use crate::data::{sample_clip_from, SceneKind, Split, WorldSpec, MIXTURE};
use crate::noise::NoiseRng;
use crate::{Error, Result};

/// A video for training: `(F, H, W, 3)` RGB in [0, 1], with its caption.
#[derive(Clone, Debug)]
pub struct TrainClip {
    pub caption: String,
    pub video: Vec<f32>,
    /// `[frames, height, width]`.
    pub size: [usize; 3],
}

impl TrainClip {
    /// The VAE's input: `(1, 3, F, H, W)` in [-1, 1].
    pub fn to_vae_input(&self, device: &candle_core::Device) -> crate::Result<candle_core::Tensor> {
        let [f, h, w] = self.size;
        let pixels =
            candle_core::Tensor::from_slice(&self.video, (f, h, w, 3), &candle_core::Device::Cpu)?;
        crate::pipeline::video_to_vae_input(&pixels, f, h, w, device)
    }
}

/// A set of captioned clips that can be rendered at any bucket size.
pub trait ClipSource: Send + Sync {
    /// Distinct clips available (indices `0..len`).
    fn len(&self) -> usize;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Clip `index` at `size` `[frames, height, width]`.
    fn clip(&self, index: usize, size: [usize; 3]) -> Result<TrainClip>;
}

/// The procedural world: clip `i` of a bucket is world seed `hash(seed, bucket size, i)`,
/// rendered at the bucket's size with the training phrasings.
pub struct WorldSource {
    pub seed: u64,
    pub fps: u32,
    pub num_clips: usize,
    /// Scene shares summing to 1; `None`: the world's own [`MIXTURE`].
    pub mixture: Option<Vec<(SceneKind, f64)>>,
}

/// A 64-bit mix of several words (splitmix64 steps), for deriving independent seeds.
pub fn mix_seed(parts: &[u64]) -> u64 {
    let mut h = 0x9E37_79B9_7F4A_7C15u64;
    for &p in parts {
        h ^= p
            .wrapping_add(0x9E37_79B9_7F4A_7C15)
            .wrapping_add(h << 6)
            .wrapping_add(h >> 2);
        let mut z = h;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        h = z ^ (z >> 31);
    }
    h
}

impl ClipSource for WorldSource {
    fn len(&self) -> usize {
        self.num_clips
    }

    fn clip(&self, index: usize, [f, h, w]: [usize; 3]) -> Result<TrainClip> {
        let spec = WorldSpec {
            num_frames: f,
            height: h,
            width: w,
            fps: self.fps,
        };
        let seed = mix_seed(&[self.seed, f as u64, h as u64, w as u64, index as u64]);
        let mixture = self.mixture.as_deref().unwrap_or(MIXTURE);
        let clip = sample_clip_from(&spec, seed, Split::Train, mixture);
        Ok(TrainClip {
            caption: clip.caption,
            video: clip.video,
            size: [f, h, w],
        })
    }
}

/// A folder of videos with captions: `name.mp4` (or `.gif`) beside `name.txt`, or a
/// `manifest.jsonl` with one `{"video": "file", "caption": "text"}` per line. Videos are
/// decoded when used, resized to cover the bucket and centre-cropped; a clip shorter than the
/// bucket holds its last frame.
pub struct FolderSource {
    items: Vec<(PathBuf, String)>,
}

impl FolderSource {
    /// Lists the folder; errors name what is missing.
    pub fn open(dir: &Path) -> Result<Self> {
        if !dir.is_dir() {
            return Err(Error::InvalidRequest(format!(
                "dataset folder {} does not exist",
                dir.display()
            )));
        }
        let manifest = dir.join("manifest.jsonl");
        let items = if manifest.is_file() {
            Self::read_manifest(dir, &manifest)?
        } else {
            Self::pair_files(dir)?
        };
        if items.is_empty() {
            return Err(Error::InvalidRequest(format!(
                "dataset folder {} has no videos: put clip.mp4 + clip.txt pairs or a \
                 manifest.jsonl ({{\"video\": \"clip.mp4\", \"caption\": \"...\"}} per line) in it",
                dir.display()
            )));
        }
        Ok(Self { items })
    }

    fn read_manifest(dir: &Path, manifest: &Path) -> Result<Vec<(PathBuf, String)>> {
        #[derive(serde::Deserialize)]
        struct Line {
            video: PathBuf,
            caption: String,
        }
        let text = std::fs::read_to_string(manifest).map_err(|e| Error::io(manifest, e))?;
        let mut items = Vec::new();
        for (n, line) in text.lines().enumerate() {
            if line.trim().is_empty() {
                continue;
            }
            let item: Line = serde_json::from_str(line).map_err(|e| Error::BadConfig {
                path: manifest.to_path_buf(),
                reason: format!(
                    "line {}: {e}; expected {{\"video\": \"clip.mp4\", \"caption\": \"...\"}}",
                    n + 1
                ),
            })?;
            let path = dir.join(&item.video);
            if !path.is_file() {
                return Err(Error::InvalidRequest(format!(
                    "{} line {}: video {} does not exist",
                    manifest.display(),
                    n + 1,
                    path.display()
                )));
            }
            items.push((path, item.caption));
        }
        Ok(items)
    }

    fn pair_files(dir: &Path) -> Result<Vec<(PathBuf, String)>> {
        let mut videos: Vec<PathBuf> = std::fs::read_dir(dir)
            .map_err(|e| Error::io(dir, e))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| {
                matches!(
                    p.extension().and_then(|e| e.to_str()),
                    Some("mp4") | Some("gif")
                )
            })
            .collect();
        videos.sort();
        videos
            .into_iter()
            .map(|video| {
                let txt = video.with_extension("txt");
                let caption = std::fs::read_to_string(&txt).map_err(|_| {
                    Error::InvalidRequest(format!(
                        "{} has no caption file {}",
                        video.display(),
                        txt.display()
                    ))
                })?;
                Ok((video, caption.trim().to_string()))
            })
            .collect()
    }
}

impl ClipSource for FolderSource {
    fn len(&self) -> usize {
        self.items.len()
    }

    fn clip(&self, index: usize, size: [usize; 3]) -> Result<TrainClip> {
        let (path, caption) = &self.items[index % self.items.len()];
        let frames = vidgen_video::read(path).map_err(|e| {
            Error::InvalidRequest(format!(
                "cannot read training video {}: {e}",
                path.display()
            ))
        })?;
        let video = fit_video(
            &frames.data,
            [frames.frames, frames.height, frames.width],
            size,
        );
        Ok(TrainClip {
            caption: caption.clone(),
            video,
            size,
        })
    }
}

/// Resizes `(F, H, W, 3)` frames (bilinear) so they cover `[f, h, w]`, centre-crops, and takes
/// the first `f` frames (holding the last one if there are fewer).
pub fn fit_video(src: &[f32], [sf, sh, sw]: [usize; 3], [f, h, w]: [usize; 3]) -> Vec<f32> {
    let scale = (h as f64 / sh as f64).max(w as f64 / sw as f64);
    let (rh, rw) = (sh as f64 * scale, sw as f64 * scale);
    let (oy, ox) = ((rh - h as f64) / 2.0, (rw - w as f64) / 2.0);
    let mut out = Vec::with_capacity(f * h * w * 3);
    for t in 0..f {
        let frame = &src[t.min(sf - 1) * sh * sw * 3..][..sh * sw * 3];
        for y in 0..h {
            // pixel centres, as PyTorch's align_corners=False
            let fy = ((y as f64 + oy + 0.5) / scale - 0.5).clamp(0.0, (sh - 1) as f64);
            let (y0, ty) = (fy.floor() as usize, fy - fy.floor());
            let y1 = (y0 + 1).min(sh - 1);
            for x in 0..w {
                let fx = ((x as f64 + ox + 0.5) / scale - 0.5).clamp(0.0, (sw - 1) as f64);
                let (x0, tx) = (fx.floor() as usize, fx - fx.floor());
                let x1 = (x0 + 1).min(sw - 1);
                for c in 0..3 {
                    let p = |yy: usize, xx: usize| frame[(yy * sw + xx) * 3 + c] as f64;
                    let top = p(y0, x0) * (1.0 - tx) + p(y0, x1) * tx;
                    let bottom = p(y1, x0) * (1.0 - tx) + p(y1, x1) * tx;
                    out.push((top * (1.0 - ty) + bottom * ty) as f32);
                }
            }
        }
    }
    out
}

/// What one micro-batch trains on.
#[derive(Clone, Debug, PartialEq)]
pub struct BatchPlan {
    /// `[frames, height, width]`.
    pub size: [usize; 3],
    /// Clip indices into the source.
    pub clips: Vec<usize>,
    /// Per clip: train on the empty caption instead (classifier-free guidance).
    pub drop_caption: Vec<bool>,
    /// Per clip: the seed of its caption's distractor words (`data.word_noise`), if it gets any.
    pub distract: Vec<Option<u64>>,
    /// Seeds the noise and timesteps of this micro-batch.
    pub noise_seed: u64,
}

/// The micro-batch `micro` of optimizer step `step`: a bucket drawn by weight, then clips.
pub fn plan_batch(
    data: &DataConfig,
    source_len: usize,
    batch_size: usize,
    seed: u64,
    step: usize,
    micro: usize,
) -> BatchPlan {
    let mut rng = NoiseRng::new(mix_seed(&[seed, 0xDA7A, step as u64, micro as u64]));
    let weights: Vec<f64> = if data.bucket_weights.is_empty() {
        vec![1.0; data.buckets.len()]
    } else {
        data.bucket_weights.clone()
    };
    let total: f64 = weights.iter().sum();
    let mut pick = rng.uniform() * total;
    let mut bucket = weights.len() - 1;
    for (i, w) in weights.iter().enumerate() {
        if pick < *w {
            bucket = i;
            break;
        }
        pick -= w;
    }
    let clips = (0..batch_size)
        .map(|_| ((rng.uniform() * source_len as f64) as usize).min(source_len - 1))
        .collect();
    let drop_caption = (0..batch_size)
        .map(|_| rng.uniform() < data.caption_dropout)
        .collect();
    // drawn from a stream of their own, so that plans without word noise stay as they were
    let mut words = NoiseRng::new(mix_seed(&[seed, 0x0D15, step as u64, micro as u64]));
    let distract = (0..batch_size)
        .map(|_| {
            (data.word_noise > 0.0 && words.uniform() < data.word_noise).then(|| words.next_u64())
        })
        .collect();
    BatchPlan {
        size: data.buckets[bucket],
        clips,
        drop_caption,
        distract,
        noise_seed: rng.next_u64(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data() -> DataConfig {
        toml::from_str("buckets = [[17, 64, 64], [9, 48, 80]]\nbucket_weights = [3.0, 1.0]")
            .unwrap()
    }

    #[test]
    fn scene_weights_reshape_the_world_mix_and_bad_ones_are_refused() {
        use crate::data::world::reweighted_mixture;
        use std::collections::BTreeMap;
        let only_pans: BTreeMap<String, f64> = MIXTURE
            .iter()
            .map(|(k, _)| (k.name().to_string(), (*k == SceneKind::Pan) as u8 as f64))
            .collect();
        let pans = WorldSource {
            seed: 3,
            fps: 8,
            num_clips: 20,
            mixture: Some(reweighted_mixture(&only_pans).unwrap()),
        };
        let plain = WorldSource {
            mixture: None,
            ..pans
        };
        let mut pan_captions = 0;
        for i in 0..12 {
            let caption = pans.clip(i, [9, 32, 32]).unwrap().caption;
            assert!(caption.contains("camera"), "not a pan: {caption:?}");
            pan_captions += plain
                .clip(i, [9, 32, 32])
                .unwrap()
                .caption
                .contains("camera") as usize;
        }
        assert!(
            pan_captions < 6,
            "{pan_captions} of 12 default clips are pans (5 % expected)"
        );
        // weight 1 everywhere is the world's own mix
        let ones: BTreeMap<String, f64> = [("pan".to_string(), 1.0)].into();
        let same = reweighted_mixture(&ones).unwrap();
        for ((k, p), (k0, p0)) in same.iter().zip(MIXTURE) {
            assert_eq!(k, k0);
            assert!((p - p0).abs() < 1e-9);
        }
        for (weights, needle) in [
            (
                BTreeMap::from([("pans".to_string(), 2.0)]),
                "unknown scene \"pans\"",
            ),
            (
                BTreeMap::from([("fall".to_string(), -1.0)]),
                "must be a weight",
            ),
            (
                MIXTURE
                    .iter()
                    .map(|(k, _)| (k.name().to_string(), 0.0))
                    .collect(),
                "every scene at weight 0",
            ),
        ] {
            let err = reweighted_mixture(&weights).unwrap_err();
            assert!(err.contains(needle), "{err}");
        }
    }

    #[test]
    fn plans_are_deterministic_and_follow_bucket_weights() {
        let d = data();
        assert_eq!(
            plan_batch(&d, 100, 4, 7, 12, 0),
            plan_batch(&d, 100, 4, 7, 12, 0)
        );
        assert_ne!(
            plan_batch(&d, 100, 4, 7, 12, 0),
            plan_batch(&d, 100, 4, 7, 13, 0)
        );
        let first = (0..400)
            .filter(|&s| plan_batch(&d, 100, 4, 7, s, 0).size == [17, 64, 64])
            .count();
        assert!(
            (250..350).contains(&first),
            "{first} of 400 in the weight-3 bucket"
        );
        let plan = plan_batch(&d, 5, 64, 1, 0, 0);
        assert!(plan.clips.iter().all(|&c| c < 5));
        assert!(
            plan.distract.iter().all(Option::is_none),
            "word noise is off by default"
        );
    }

    #[test]
    fn word_noise_marks_its_share_of_captions_and_leaves_the_rest_of_the_plan() {
        let quiet = data();
        let noisy = DataConfig {
            word_noise: 0.25,
            ..data()
        };
        let marked: usize = (0..100)
            .map(|step| {
                let (a, b) = (
                    plan_batch(&quiet, 100, 8, 7, step, 0),
                    plan_batch(&noisy, 100, 8, 7, step, 0),
                );
                assert_eq!(
                    (&a.clips, a.size, a.noise_seed),
                    (&b.clips, b.size, b.noise_seed)
                );
                b.distract.iter().flatten().count()
            })
            .sum();
        assert!(
            (150..250).contains(&marked),
            "{marked} of 800 captions marked"
        );
        let all = DataConfig {
            word_noise: 1.0,
            ..data()
        };
        let seeds: Vec<u64> = plan_batch(&all, 100, 8, 7, 0, 0)
            .distract
            .into_iter()
            .map(|s| s.expect("every caption marked"))
            .collect();
        assert!(seeds.windows(2).all(|w| w[0] != w[1]));
    }

    #[test]
    fn fit_video_covers_crops_and_holds_the_last_frame() {
        // 2 frames of 4x8: left half 0, right half 1 in frame 0; all 0.5 in frame 1
        let mut src = Vec::new();
        for t in 0..2 {
            for _y in 0..4 {
                for x in 0..8 {
                    let v = if t == 1 {
                        0.5
                    } else if x < 4 {
                        0.0
                    } else {
                        1.0
                    };
                    src.extend([v, v, v]);
                }
            }
        }
        let out = fit_video(&src, [2, 4, 8], [3, 4, 4]);
        assert_eq!(out.len(), 3 * 4 * 4 * 3);
        // the centre crop keeps both halves: first column dark, last bright
        assert!(out[0] < 0.1 && out[3 * 3] > 0.9);
        // frame 2 repeats frame 1
        assert!(out[2 * 48..].iter().all(|&v| (v - 0.5).abs() < 1e-6));
    }

    #[test]
    fn folder_errors_name_the_problem() {
        let dir = tempfile::tempdir().unwrap();
        let err = FolderSource::open(&dir.path().join("nope"))
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("does not exist"), "{err}");
        let err = FolderSource::open(dir.path()).err().unwrap().to_string();
        assert!(err.contains("no videos"), "{err}");
        std::fs::write(dir.path().join("a.mp4"), b"x").unwrap();
        let err = FolderSource::open(dir.path()).err().unwrap().to_string();
        assert!(err.contains("no caption file"), "{err}");
        std::fs::write(dir.path().join("a.txt"), b"a red ball").unwrap();
        let src = FolderSource::open(dir.path()).unwrap();
        let err = src.clip(0, [5, 16, 16]).err().unwrap().to_string();
        assert!(err.contains("cannot read training video"), "{err}");
    }
}
