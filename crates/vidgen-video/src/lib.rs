//! Frames to and from files: mp4 (H.264), gif, png, and safetensors, with no ffmpeg at run time.
//!
//! The pipeline hands this crate a [`Frames`]: f32 pixels laid out `(F, H, W, 3)`, RGB in
//! [0, 1]. [`write`] picks the format from the file extension; [`read`] turns a file (or a
//! folder of numbered pngs) back into [`Frames`].
//!
//! ```text
//! Frames (F, H, W, 3) f32 ──► .mp4  H.264 yuv420p (openh264, bundled C source) in a
//!                        │          fast-start mp4 (muxide: moov before mdat)
//!                        ├──► .gif  one 255-colour palette for the clip, Floyd–Steinberg
//!                        │          dithering, unchanged pixels transparent, loops forever
//!                        ├──► .png  NAME.png (first frame, a poster) + NAME/00000.png, …
//!                        └──► .safetensors  tensor `frames`, f32 (F, H, W, 3), metadata fps
//! ```
//!
//! Every output is written to a temporary file in the destination folder and renamed into
//! place, so a crash never leaves a half-written file under the final name.

mod atomic;
mod frames;
mod gif;
mod h264;
mod mp4;
mod png;
mod yuv;

use std::path::{Path, PathBuf};

pub use frames::{read_frames_safetensors, write_frames_safetensors, Frames};

/// Extensions that [`write`] accepts (compared case-insensitively).
pub const EXTENSIONS: [&str; 3] = ["mp4", "gif", "png"];

/// Frame rate given to inputs that carry none (a png, a folder of pngs). Wan's default.
pub const DEFAULT_FPS: f32 = 16.0;

/// Errors at the boundary of this crate; each names the path it concerns.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The frames do not describe a video: wrong data length, empty, bad fps, NaN or Inf.
    #[error("invalid frames: {0}")]
    InvalidFrames(String),
    /// The file extension is not one this crate can write or read.
    #[error("{}: unsupported format; accepted extensions: {accepted}", path.display())]
    UnsupportedFormat {
        /// The offending path.
        path: PathBuf,
        /// The accepted extensions, comma separated.
        accepted: String,
    },
    /// The folder that should hold the output does not exist (or is not a folder).
    #[error("{}: the folder {} does not exist; create it first", path.display(), folder.display())]
    MissingFolder {
        /// The output path.
        path: PathBuf,
        /// Its parent folder.
        folder: PathBuf,
    },
    /// The operating system refused a read or a write (permissions, disk full, not found).
    #[error("{}: {source}", path.display())]
    Io {
        /// The file or folder being read or written.
        path: PathBuf,
        /// What the operating system said.
        source: std::io::Error,
    },
    /// The encoder or the muxer rejected the frames (e.g. a size beyond H.264's limits).
    #[error("{}: cannot encode: {message}", path.display())]
    Encode {
        /// The output path.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
    /// The input is corrupt, truncated, or uses a feature this crate does not decode.
    #[error("{}: cannot decode: {message}", path.display())]
    Decode {
        /// The input path.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
    /// The frames folder of a `.png` output exists and holds files this crate did not write.
    #[error(
        "{}: refusing to replace this folder because it holds {found:?}, which is not a numbered \
         frame; move it away or choose another output name",
        path.display()
    )]
    FolderInUse {
        /// The folder next to the `.png`.
        path: PathBuf,
        /// One entry that is not a numbered png.
        found: String,
    },
}

/// Result with this crate's [`Error`].
pub type Result<T> = std::result::Result<T, Error>;

/// The formats [`write`] and [`read`] dispatch to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Format {
    Mp4,
    Gif,
    Png,
}

fn format_of(path: &Path) -> Result<Format> {
    let extension = path
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase);
    match extension.as_deref() {
        Some("mp4") => Ok(Format::Mp4),
        Some("gif") => Ok(Format::Gif),
        Some("png") => Ok(Format::Png),
        _ => Err(Error::UnsupportedFormat {
            path: path.to_path_buf(),
            accepted: format!(
                ".{} (and .safetensors through write_frames_safetensors)",
                EXTENSIONS.join(", .")
            ),
        }),
    }
}

/// Writes `frames` (`(F, H, W, 3)` f32 in [0, 1]) to `path`; the extension picks the format.
///
/// * `.mp4` — H.264 (yuv420p, BT.709 limited range, signalled in the stream) in an mp4 with
///   the `moov` box before `mdat`. The bitrate follows the size: 0.3 bits per pixel per
///   frame, at least 1 Mbit/s. H.264 4:2:0 needs even sizes, and openh264 at least 16×16: an
///   odd height or width is padded by repeating the last row or column (the file is one pixel
///   taller or wider), and so is a side under 16 pixels, up to 16.
/// * `.gif` — looping; one palette for the whole clip, dithered. Frame delays are whole
///   centiseconds, rounded so that the total duration stays right.
/// * `.png` — `NAME.png` holds the first frame (a poster) and the folder `NAME/` next to it
///   holds every frame as `00000.png`, `00001.png`, …; an earlier `NAME/` of numbered frames
///   is replaced.
///
/// Pixels are clamped to [0, 1] and rounded as `(x * 255).round()` (ties to even, as numpy).
/// Any other extension, an invalid `Frames`, or a missing parent folder is an error, and then
/// nothing is left behind.
pub fn write(path: &Path, frames: &Frames) -> Result<()> {
    let format = format_of(path)?;
    frames.validate()?;
    atomic::check_parent(path)?;
    match format {
        Format::Mp4 => mp4::write_mp4(path, frames),
        Format::Gif => gif::write_gif(path, frames),
        Format::Png => png::write_png(path, frames),
    }
}

/// Writes `bytes` to `path` through a temporary file in the same folder (`.NAME.XXXXXX.tmp`),
/// synced, then renamed over `path`: a crash leaves either the old file or the new one, never
/// a part. The parent folder must exist.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    atomic::write_bytes(path, bytes)
}

/// Reads a video into `(F, H, W, 3)` f32 frames in [0, 1].
///
/// * `.mp4` — the first H.264 video track, decoded with openh264; colours are converted
///   with the matrix and range that the stream's VUI names (BT.601 or BT.709 when it names
///   none, by size, as players do). fps is frames per second of track time.
/// * `.gif` — frames composited as a browser shows them; fps from the mean frame delay.
/// * `.png` — one frame; a folder — its files named `<digits>.png`, in numeric order. Both
///   get [`DEFAULT_FPS`].
pub fn read(path: &Path) -> Result<Frames> {
    if path.is_dir() {
        return png::read_png_folder(path);
    }
    match format_of(path)? {
        Format::Mp4 => mp4::read_mp4(path),
        Format::Gif => gif::read_gif(path),
        Format::Png => png::read_png(path),
    }
}

/// `(frames, height, width)` of a video file (or png folder) that [`read`] takes, from its
/// header alone — to check sizes before decoding. `frames` is `None` where the header does not
/// say (gif).
pub fn probe(path: &Path) -> Result<(Option<usize>, usize, usize)> {
    if path.is_dir() {
        return png::probe_png_folder(path);
    }
    match format_of(path)? {
        Format::Mp4 => mp4::probe_mp4(path),
        Format::Gif => gif::probe_gif(path).map(|(h, w)| (None, h, w)),
        Format::Png => png::probe_image(path).map(|(h, w)| (Some(1), h, w)),
    }
}

/// An [`Error::Io`] for `path`.
pub(crate) fn io_error(path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |source| Error::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// An [`Error::Decode`] for `path`.
pub(crate) fn decode_error(path: &Path, message: impl std::fmt::Display) -> Error {
    Error::Decode {
        path: path.to_path_buf(),
        message: message.to_string(),
    }
}

/// An [`Error::Encode`] for `path`.
pub(crate) fn encode_error(path: &Path, message: impl std::fmt::Display) -> Error {
    Error::Encode {
        path: path.to_path_buf(),
        message: message.to_string(),
    }
}
