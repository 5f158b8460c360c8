//! `.safetensors`: the frames before 8-bit rounding, for comparing against a reference.
//!
//! One tensor named `frames`, dtype F32, shape `(F, H, W, 3)`, and the frame rate in the
//! header's `__metadata__` as `{"fps": "16"}`; any safetensors reader (Python's
//! `safetensors.torch.load_file` included) loads it.

use std::io::Write;
use std::path::Path;

use safetensors::{Dtype, SafeTensors};

use crate::{atomic, decode_error, io_error, Frames, Result, DEFAULT_FPS};

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
