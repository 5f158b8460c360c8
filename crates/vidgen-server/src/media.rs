//! The files of a finished job: the mp4, a WebP thumbnail (its middle frame) and a JPEG sprite
//! sheet (up to [`SPRITE_FRAMES`] frames spread over the clip, in rows of [`SPRITE_COLUMNS`]).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use image::codecs::jpeg::JpegEncoder;
use image::codecs::webp::WebPEncoder;
use image::{ExtendedColorType, ImageEncoder};
use vidgen_video::Frames;

pub const SPRITE_FRAMES: usize = 16;
pub const SPRITE_COLUMNS: usize = 4;

/// What `GET /v1/videos/{id}/content?variant=` serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Variant {
    Video,
    Thumbnail,
    Spritesheet,
}

impl Variant {
    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "video" => Some(Variant::Video),
            "thumbnail" => Some(Variant::Thumbnail),
            "spritesheet" => Some(Variant::Spritesheet),
            _ => None,
        }
    }

    pub fn content_type(self) -> &'static str {
        match self {
            Variant::Video => "video/mp4",
            Variant::Thumbnail => "image/webp",
            Variant::Spritesheet => "image/jpeg",
        }
    }

    /// The file of job `id` in the videos folder (ids are server-made: `video_` + hex).
    pub fn path(self, videos: &Path, id: &str) -> PathBuf {
        let ext = match self {
            Variant::Video => "mp4",
            Variant::Thumbnail => "webp",
            Variant::Spritesheet => "jpg",
        };
        videos.join(format!("{id}.{ext}"))
    }
}

pub const VARIANTS: [Variant; 3] = [Variant::Video, Variant::Thumbnail, Variant::Spritesheet];

/// Writes the three files of job `id`, each atomically; the mp4 last, so a job whose video
/// exists has all three.
pub fn write_outputs(videos: &Path, id: &str, frames: &Frames) -> Result<()> {
    let thumb = thumbnail_webp(frames)?;
    vidgen_video::write_atomic(&Variant::Thumbnail.path(videos, id), &thumb)?;
    let sprites = spritesheet_jpeg(frames)?;
    vidgen_video::write_atomic(&Variant::Spritesheet.path(videos, id), &sprites)?;
    vidgen_video::write(&Variant::Video.path(videos, id), frames)?;
    Ok(())
}

/// Where the first frame of image-to-video job `id` is kept.
pub fn input_path(data_dir: &Path, id: &str) -> PathBuf {
    data_dir.join("inputs").join(format!("{id}.png"))
}

/// Saves a first frame `(H, W, 3)` in [0, 1] as a PNG (re-encoded: the upload's own bytes are
/// never stored), atomically.
pub fn write_input(path: &Path, image: &candle_core::Tensor) -> Result<()> {
    let (h, w, _) = image.dims3()?;
    let data = image.flatten_all()?.to_vec1::<f32>()?;
    let frames = Frames::new(1, h, w, 1.0, data)?;
    let mut png = Vec::new();
    image::codecs::png::PngEncoder::new(&mut png)
        .write_image(
            &frames.frame_rgb8(0),
            w as u32,
            h as u32,
            ExtendedColorType::Rgb8,
        )
        .context("encoding the first frame")?;
    vidgen_video::write_atomic(path, &png)?;
    Ok(())
}

/// Reads a first frame saved by [`write_input`] as `(H, W, 3)` f32 in [0, 1].
pub fn read_input(path: &Path) -> Result<candle_core::Tensor> {
    let frames = vidgen_video::read(path)?;
    Ok(candle_core::Tensor::from_vec(
        frames.data,
        (frames.height, frames.width, 3),
        &candle_core::Device::Cpu,
    )?)
}

/// Removes job `id`'s files (those that exist).
pub fn remove_outputs(videos: &Path, id: &str) {
    for variant in VARIANTS {
        let _ = std::fs::remove_file(variant.path(videos, id));
    }
}

/// The middle frame as a lossless WebP.
pub fn thumbnail_webp(frames: &Frames) -> Result<Vec<u8>> {
    let rgb = frames.frame_rgb8(frames.frames / 2);
    let mut out = Vec::new();
    WebPEncoder::new_lossless(&mut out)
        .encode(
            &rgb,
            frames.width as u32,
            frames.height as u32,
            ExtendedColorType::Rgb8,
        )
        .context("encoding the WebP thumbnail")?;
    Ok(out)
}

/// Up to [`SPRITE_FRAMES`] evenly spaced frames tiled in rows of [`SPRITE_COLUMNS`], as JPEG.
pub fn spritesheet_jpeg(frames: &Frames) -> Result<Vec<u8>> {
    let n = frames.frames.min(SPRITE_FRAMES);
    let cols = n.min(SPRITE_COLUMNS);
    let rows = n.div_ceil(cols);
    let (h, w) = (frames.height, frames.width);
    let mut sheet = vec![0u8; rows * h * cols * w * 3];
    for k in 0..n {
        // frame indices spread from the first to the last
        let index = if n == 1 {
            0
        } else {
            k * (frames.frames - 1) / (n - 1)
        };
        let rgb = frames.frame_rgb8(index);
        let (r, c) = (k / cols, k % cols);
        for y in 0..h {
            let src = &rgb[y * w * 3..(y + 1) * w * 3];
            let start = ((r * h + y) * cols * w + c * w) * 3;
            sheet[start..start + w * 3].copy_from_slice(src);
        }
    }
    let mut out = Vec::new();
    JpegEncoder::new_with_quality(&mut out, 90)
        .encode(
            &sheet,
            (cols * w) as u32,
            (rows * h) as u32,
            ExtendedColorType::Rgb8,
        )
        .context("encoding the JPEG sprite sheet")?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thumbnail_and_sprites_decode_at_their_sizes() {
        let (f, h, w) = (6, 16, 24);
        let data = (0..f * h * w * 3).map(|i| (i % 7) as f32 / 7.0).collect();
        let frames = Frames::new(f, h, w, 8.0, data).unwrap();
        let thumb = image::load_from_memory(&thumbnail_webp(&frames).unwrap()).unwrap();
        assert_eq!((thumb.width(), thumb.height()), (24, 16));
        let sheet = image::load_from_memory(&spritesheet_jpeg(&frames).unwrap()).unwrap();
        // 6 frames in rows of 4: 2 rows
        assert_eq!((sheet.width(), sheet.height()), (4 * 24, 2 * 16));
    }
}
