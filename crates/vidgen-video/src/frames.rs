//! [`Frames`]: a video as f32 RGB pixels, the form the pipeline produces; and its lossless
//! file form, safetensors.
//!
//! The safetensors file holds one tensor named `frames`, dtype F32, shape `(F, H, W, 3)`, and
//! the frame rate in the header's `__metadata__` as `{"fps": "16"}`; any safetensors reader
//! (Python's `safetensors.torch.load_file` included) loads it.

use std::io::Write;
use std::path::Path;

use safetensors::{Dtype, SafeTensors};

use crate::{atomic, decode_error, io_error, Error, Result, DEFAULT_FPS};

/// A video: `frames` pictures of `height × width` RGB pixels shown at `fps`.
///
/// `data` is `(F, H, W, 3)` row-major f32 with values in [0, 1]: the value of channel `c` of
/// pixel `(y, x)` in frame `f` is `data[((f * H + y) * W + x) * 3 + c]`.
#[derive(Clone, Debug, PartialEq)]
pub struct Frames {
    /// `F`, the number of frames (at least 1).
    pub frames: usize,
    /// `H`, pixel rows per frame (at least 1).
    pub height: usize,
    /// `W`, pixel columns per frame (at least 1).
    pub width: usize,
    /// Frames per second (finite, > 0).
    pub fps: f32,
    /// `(F, H, W, 3)` pixels in [0, 1].
    pub data: Vec<f32>,
}

impl Frames {
    /// Builds and validates a video from `(F, H, W, 3)` pixels in [0, 1].
    pub fn new(
        frames: usize,
        height: usize,
        width: usize,
        fps: f32,
        data: Vec<f32>,
    ) -> Result<Self> {
        let video = Self {
            frames,
            height,
            width,
            fps,
            data,
        };
        video.validate()?;
        Ok(video)
    }

    /// Builds a video from `(F, H, W, 3)` 8-bit pixels (`value / 255`).
    pub fn from_rgb8(
        frames: usize,
        height: usize,
        width: usize,
        fps: f32,
        rgb: &[u8],
    ) -> Result<Self> {
        let data = rgb.iter().map(|&v| f32::from(v) / 255.0).collect();
        Self::new(frames, height, width, fps, data)
    }

    /// Checks the invariants: non-empty sizes, `data.len() == F·H·W·3`, a finite positive fps
    /// and finite pixels (a NaN or Inf in frames is an error, never an output). Values outside
    /// [0, 1] are allowed here and clamped when written.
    pub fn validate(&self) -> Result<()> {
        if self.frames == 0 || self.height == 0 || self.width == 0 {
            return Err(Error::InvalidFrames(format!(
                "a video needs at least one frame of at least 1x1 pixels, got (F, H, W) = ({}, {}, {})",
                self.frames, self.height, self.width
            )));
        }
        let expected = self
            .frames
            .checked_mul(self.height)
            .and_then(|n| n.checked_mul(self.width))
            .and_then(|n| n.checked_mul(3))
            .ok_or_else(|| Error::InvalidFrames("F·H·W·3 overflows usize".into()))?;
        if self.data.len() != expected {
            return Err(Error::InvalidFrames(format!(
                "data holds {} values but (F, H, W, 3) = ({}, {}, {}, 3) needs {expected}",
                self.data.len(),
                self.frames,
                self.height,
                self.width
            )));
        }
        if !(self.fps.is_finite() && self.fps > 0.0) {
            return Err(Error::InvalidFrames(format!(
                "fps must be finite and > 0, got {}",
                self.fps
            )));
        }
        if let Some(i) = self.data.iter().position(|v| !v.is_finite()) {
            let (pixel, channel) = (i / 3, i % 3);
            let per_frame = self.height * self.width;
            let (frame, pixel) = (pixel / per_frame, pixel % per_frame);
            return Err(Error::InvalidFrames(format!(
                "pixel value {} at frame {frame}, row {}, column {}, channel {channel}",
                self.data[i],
                pixel / self.width,
                pixel % self.width
            )));
        }
        Ok(())
    }

    /// Values in one frame: `H·W·3`.
    pub fn frame_len(&self) -> usize {
        self.height * self.width * 3
    }

    /// Frame `index` as `(H, W, 3)` pixels. Panics if `index >= frames`.
    pub fn frame(&self, index: usize) -> &[f32] {
        let n = self.frame_len();
        &self.data[index * n..(index + 1) * n]
    }

    /// All pixels as 8-bit `(F, H, W, 3)`, rounded like diffusers' `numpy_to_pil`:
    /// `(x * 255).round().astype("uint8")`, after clamping to [0, 1].
    pub fn to_rgb8(&self) -> Vec<u8> {
        self.data.iter().map(|&v| to_u8(v)).collect()
    }

    /// Frame `index` as 8-bit `(H, W, 3)`, rounded as [`Frames::to_rgb8`].
    pub fn frame_rgb8(&self, index: usize) -> Vec<u8> {
        self.frame(index).iter().map(|&v| to_u8(v)).collect()
    }
}

/// One value in [0, 1] to 8 bits. numpy's `round` sends halves to the even neighbour and works
/// in f32 for f32 arrays, so this multiplies in f32 and rounds ties to even.
pub(crate) fn to_u8(v: f32) -> u8 {
    // Adding and removing 2^23 leaves no fraction bits, so the float unit rounds to nearest,
    // ties to even: the same result as `round_ties_even`, which without SSE4.1 is a libm call
    // and made this loop 5x slower.
    const SHIFT: f32 = 8_388_608.0;
    ((v.clamp(0.0, 1.0) * 255.0 + SHIFT) - SHIFT) as u8
}

/// The safetensors header for `frames`: JSON, padded with spaces to a multiple of 8 bytes so
/// the data that follows is aligned (as the reference writer does).
fn header(frames: &Frames) -> String {
    let bytes = frames.data.len() * 4;
    let mut json = format!(
        r#"{{"__metadata__":{{"fps":"{}"}},"frames":{{"dtype":"F32","shape":[{},{},{},3],"data_offsets":[0,{bytes}]}}}}"#,
        frames.fps, frames.frames, frames.height, frames.width
    );
    while json.len() % 8 != 0 {
        json.push(' ');
    }
    json
}

/// Writes `frames` as tensor `frames`, f32 `(F, H, W, 3)`, with metadata `fps`, atomically.
/// The values are written as they are, without clamping or rounding.
pub fn write_frames_safetensors(path: &Path, frames: &Frames) -> Result<()> {
    frames.validate()?;
    let header = header(frames);
    atomic::write_file(path, |writer| {
        let mut put = |bytes: &[u8]| writer.write_all(bytes).map_err(io_error(path));
        put(&(header.len() as u64).to_le_bytes())?;
        put(header.as_bytes())?;
        // Streamed in chunks: a second copy of a long video would cost gigabytes.
        for chunk in frames.data.chunks(1 << 16) {
            let bytes: Vec<u8> = chunk.iter().flat_map(|v| v.to_le_bytes()).collect();
            put(&bytes)?;
        }
        Ok(())
    })
}

/// Reads a file written by [`write_frames_safetensors`] (or any with an f32 tensor `frames`
/// of shape `(F, H, W, 3)`); fps comes from the metadata, else [`DEFAULT_FPS`].
pub fn read_frames_safetensors(path: &Path) -> Result<Frames> {
    let buffer = std::fs::read(path).map_err(io_error(path))?;
    let (_, metadata) = SafeTensors::read_metadata(&buffer)
        .map_err(|e| decode_error(path, format!("not a safetensors file ({e})")))?;
    let tensors = SafeTensors::deserialize(&buffer).map_err(|e| decode_error(path, e))?;
    let tensor = tensors.tensor("frames").map_err(|_| {
        let names = tensors.names().join(", ");
        decode_error(path, format!("no tensor named `frames` (found: {names})"))
    })?;
    if tensor.dtype() != Dtype::F32 {
        return Err(decode_error(
            path,
            format!("tensor `frames` is {:?}; expected F32", tensor.dtype()),
        ));
    }
    let &[frames, height, width, 3] = tensor.shape() else {
        return Err(decode_error(
            path,
            format!(
                "tensor `frames` has shape {:?}; expected (F, H, W, 3)",
                tensor.shape()
            ),
        ));
    };
    let fps = match metadata.metadata().as_ref().and_then(|m| m.get("fps")) {
        Some(text) => text
            .parse()
            .map_err(|_| decode_error(path, format!("metadata fps {text:?} is not a number")))?,
        None => DEFAULT_FPS,
    };
    let data = tensor
        .data()
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect();
    Frames::new(frames, height, width, fps, data).map_err(|e| decode_error(path, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An f32 `x` whose f32 product `x * 255` is exactly `target`.
    fn exact_preimage(target: f32) -> f32 {
        let start = (target / 255.0).to_bits();
        (start - 8..start + 8)
            .map(f32::from_bits)
            .find(|&x| x * 255.0 == target)
            .expect("an exact preimage near target / 255")
    }

    #[test]
    fn rounding_matches_numpy() {
        // numpy rounds halves to even: 2.5 -> 2, 3.5 -> 4, 127.5 -> 128 (half-away would give 3).
        assert_eq!(to_u8(exact_preimage(2.5)), 2);
        assert_eq!(to_u8(exact_preimage(3.5)), 4);
        assert_eq!(to_u8(0.5), 128);
        assert_eq!(to_u8(0.25), 64); // 63.75
        assert_eq!(to_u8(1.0), 255);
        // Out of range clamps instead of wrapping.
        assert_eq!(to_u8(-0.2), 0);
        assert_eq!(to_u8(1.7), 255);
    }

    #[test]
    fn fast_rounding_equals_round_ties_even() {
        for i in 0..=2_000_000u32 {
            let v = i as f32 / 2_000_000.0;
            assert_eq!(to_u8(v), (v * 255.0).round_ties_even() as u8, "{v}");
        }
    }

    #[test]
    fn rgb8_round_trip_is_exact() {
        let rgb: Vec<u8> = (0..2 * 3 * 5 * 3).map(|i| (i * 7 % 256) as u8).collect();
        let video = Frames::from_rgb8(2, 3, 5, 8.0, &rgb).unwrap();
        assert_eq!(video.to_rgb8(), rgb);
        assert_eq!(video.frame_rgb8(1), rgb[45..].to_vec());
    }

    #[test]
    fn validation_names_the_problem() {
        let err = Frames::new(2, 2, 2, 8.0, vec![0.0; 23]).unwrap_err();
        assert!(err.to_string().contains("needs 24"), "{err}");
        let err = Frames::new(0, 2, 2, 8.0, vec![]).unwrap_err();
        assert!(err.to_string().contains("at least one frame"), "{err}");
        let err = Frames::new(1, 1, 1, 0.0, vec![0.0; 3]).unwrap_err();
        assert!(err.to_string().contains("fps"), "{err}");
        let mut data = vec![0.5; 2 * 2 * 3 * 3];
        // frame 1 (18 values each), row 1 (9 values), column 2, channel 1
        data[18 + 9 + 2 * 3 + 1] = f32::NAN;
        let err = Frames::new(2, 2, 3, 8.0, data).unwrap_err();
        let text = err.to_string();
        assert!(
            text.contains("frame 1, row 1, column 2, channel 1"),
            "{text}"
        );
    }

    #[test]
    fn round_trip_is_exact_and_readable_by_the_reference_crate() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("frames.safetensors");
        let data: Vec<f32> = (0..2 * 3 * 5 * 3).map(|i| i as f32 / 89.0 - 0.1).collect();
        let video = Frames::new(2, 3, 5, 24.0, data).unwrap();
        write_frames_safetensors(&path, &video).unwrap();
        assert_eq!(read_frames_safetensors(&path).unwrap(), video);

        let buffer = std::fs::read(&path).unwrap();
        let tensors = SafeTensors::deserialize(&buffer).unwrap();
        assert_eq!(tensors.tensor("frames").unwrap().shape(), [2, 3, 5, 3]);
        let header_len = u64::from_le_bytes(buffer[..8].try_into().unwrap());
        assert_eq!(header_len % 8, 0, "data is 8-byte aligned");
    }

    #[test]
    fn wrong_tensors_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("latents.safetensors");
        let bytes = [0u8; 8];
        let view = safetensors::tensor::TensorView::new(Dtype::F32, vec![2], &bytes).unwrap();
        let file = safetensors::serialize([("latents", view)], None).unwrap();
        std::fs::write(&path, file).unwrap();
        let err = read_frames_safetensors(&path).unwrap_err().to_string();
        assert!(
            err.contains("no tensor named `frames` (found: latents)"),
            "{err}"
        );
        std::fs::write(&path, b"garbage").unwrap();
        let err = read_frames_safetensors(&path).unwrap_err().to_string();
        assert!(err.contains("not a safetensors file"), "{err}");
    }
}
