//! `.png`: a poster (the first frame) plus a folder of numbered frames; and reading either.

use std::fs::{self, File};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use image::codecs::png::{CompressionType, FilterType, PngEncoder};
use image::{ExtendedColorType, ImageEncoder, ImageReader};

use crate::atomic;
use crate::{decode_error, encode_error, io_error, Error, Frames, Result, DEFAULT_FPS};

/// Encodes one `(H, W, 3)` 8-bit frame as png into `writer`.
fn encode_png(
    writer: impl Write,
    rgb: &[u8],
    height: usize,
    width: usize,
) -> image::ImageResult<()> {
    // Fast deflate with adaptive filters: frames are many and large; size matters less.
    PngEncoder::new_with_quality(writer, CompressionType::Fast, FilterType::Adaptive).write_image(
        rgb,
        width as u32,
        height as u32,
        ExtendedColorType::Rgb8,
    )
}

/// The frames folder that goes with a `.png` output: the same path without the extension.
pub(crate) fn frames_folder(path: &Path) -> PathBuf {
    path.with_extension("")
}

/// True for the names this crate gives frames in a folder: `<digits>.png`.
fn is_numbered_png(name: &str) -> bool {
    name.strip_suffix(".png")
        .is_some_and(|stem| !stem.is_empty() && stem.bytes().all(|b| b.is_ascii_digit()))
}

/// Fails unless `path` is absent or a folder of numbered pngs (an earlier output).
fn check_replaceable(path: &Path) -> Result<()> {
    let Ok(metadata) = fs::symlink_metadata(path) else {
        return Ok(());
    };
    if !metadata.is_dir() {
        return Err(Error::FolderInUse {
            path: path.to_path_buf(),
            found: "a file where the frames folder goes".into(),
        });
    }
    for entry in fs::read_dir(path).map_err(io_error(path))? {
        let entry = entry.map_err(io_error(path))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        let is_file = entry.file_type().map_err(io_error(path))?.is_file();
        if !(is_file && is_numbered_png(&name)) {
            return Err(Error::FolderInUse {
                path: path.to_path_buf(),
                found: name,
            });
        }
    }
    Ok(())
}

/// Writes `NAME.png` (frame 0) and `NAME/00000.png, …` (see [`crate::write`]).
pub(crate) fn write_png(path: &Path, frames: &Frames) -> Result<()> {
    let (height, width) = (frames.height, frames.width);
    if u32::try_from(height.max(width)).is_err() {
        return Err(encode_error(
            path,
            format!("{width}x{height} is too large for png"),
        ));
    }
    let folder = frames_folder(path);
    // Only an earlier output may be replaced, so stale frames of a longer video never linger
    // and nobody's own folder is lost.
    check_replaceable(&folder)?;
    atomic::write_dir(&folder, |temp| {
        for index in 0..frames.frames {
            let file_path = temp.join(format!("{index:05}.png"));
            let file = File::create(&file_path).map_err(io_error(&folder))?;
            let mut writer = BufWriter::new(file);
            encode_png(&mut writer, &frames.frame_rgb8(index), height, width)
                .map_err(|e| encode_error(&folder, e))?;
            writer.flush().map_err(io_error(&folder))?;
        }
        Ok(())
    })?;
    atomic::write_file(path, |writer| {
        encode_png(writer, &frames.frame_rgb8(0), height, width).map_err(|e| encode_error(path, e))
    })
}

/// Reads one image as `(H, W, 3)` f32 in [0, 1] (16-bit pngs keep their precision; an alpha
/// channel is dropped).
fn read_image(path: &Path) -> Result<(usize, usize, Vec<f32>)> {
    let image = ImageReader::open(path)
        .map_err(io_error(path))?
        .with_guessed_format()
        .map_err(io_error(path))?
        .decode()
        .map_err(|e| decode_error(path, e))?;
    let rgb = image.into_rgb32f();
    let (width, height) = (rgb.width() as usize, rgb.height() as usize);
    Ok((height, width, rgb.into_raw()))
}

/// `(height, width)` of an image file, from its header.
pub(crate) fn probe_image(path: &Path) -> Result<(usize, usize)> {
    let (w, h) = ImageReader::open(path)
        .map_err(io_error(path))?
        .with_guessed_format()
        .map_err(io_error(path))?
        .into_dimensions()
        .map_err(|e| decode_error(path, format!("not a readable image ({e})")))?;
    Ok((h as usize, w as usize))
}

/// `(frames, height, width)` of a folder of numbered pngs: their count and the first's size.
pub(crate) fn probe_png_folder(folder: &Path) -> Result<(Option<usize>, usize, usize)> {
    let mut first: Option<(u128, PathBuf)> = None;
    let mut count = 0;
    for entry in fs::read_dir(folder).map_err(io_error(folder))? {
        let entry = entry.map_err(io_error(folder))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if is_numbered_png(&name) {
            count += 1;
            let number = name.trim_end_matches(".png").parse().unwrap_or(u128::MAX);
            if first.as_ref().is_none_or(|(n, _)| number < *n) {
                first = Some((number, entry.path()));
            }
        }
    }
    let (_, path) = first.ok_or_else(|| decode_error(folder, "no numbered .png frames"))?;
    let (h, w) = probe_image(&path)?;
    Ok((Some(count), h, w))
}

/// Reads one png as a one-frame video at [`DEFAULT_FPS`].
pub(crate) fn read_png(path: &Path) -> Result<Frames> {
    let (height, width, data) = read_image(path)?;
    Frames::new(1, height, width, DEFAULT_FPS, data).map_err(|e| decode_error(path, e))
}

/// Reads a folder of `<digits>.png` frames, in numeric order, at [`DEFAULT_FPS`]; other files
/// are ignored.
pub(crate) fn read_png_folder(folder: &Path) -> Result<Frames> {
    let mut numbered: Vec<(u128, PathBuf)> = Vec::new();
    for entry in fs::read_dir(folder).map_err(io_error(folder))? {
        let entry = entry.map_err(io_error(folder))?;
        let name = entry.file_name().to_string_lossy().into_owned();
        if is_numbered_png(&name) {
            // The digits are a number: "10.png" comes after "9.png" (u128 holds 38 digits).
            let number = name.trim_end_matches(".png").parse().unwrap_or(u128::MAX);
            numbered.push((number, entry.path()));
        }
    }
    if numbered.is_empty() {
        return Err(decode_error(
            folder,
            "the folder holds no numbered frames (00000.png, 00001.png, …)",
        ));
    }
    numbered.sort();
    let (mut height, mut width) = (0, 0);
    let mut data = Vec::new();
    for (index, (_, file)) in numbered.iter().enumerate() {
        let (h, w, pixels) = read_image(file)?;
        if index == 0 {
            (height, width) = (h, w);
            data.reserve(numbered.len() * pixels.len());
        } else if (h, w) != (height, width) {
            return Err(decode_error(
                file,
                format!("is {w}x{h} but the first frame is {width}x{height}"),
            ));
        }
        data.extend(pixels);
    }
    Frames::new(numbered.len(), height, width, DEFAULT_FPS, data)
        .map_err(|e| decode_error(folder, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbered_png_names() {
        assert!(is_numbered_png("00000.png"));
        assert!(is_numbered_png("123456.png"));
        assert!(!is_numbered_png(".png"));
        assert!(!is_numbered_png("a1.png"));
        assert!(!is_numbered_png("00001.PNG"));
        assert!(!is_numbered_png("notes.txt"));
    }
}
