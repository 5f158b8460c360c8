//! `.gif`: one palette for the whole clip, dithered, unchanged pixels transparent, looping.
//!
//! * Palette: when the clip has at most 255 distinct colours they are the palette and the
//!   gif is lossless; otherwise NeuQuant learns 255 colours from up to 2^20 pixels sampled
//!   across all frames. One palette (not one per frame) keeps still regions from flickering.
//! * Floyd–Steinberg error diffusion hides the banding 255 colours leave on gradients; frames
//!   are dithered in parallel.
//! * Index 255 is transparent: a pixel whose index equals the previous frame's is written
//!   transparent over the kept previous frame, which is exact and compresses well.
//! * Delays are whole centiseconds, rounded from the ideal timestamps so that the total
//!   duration stays right (16 fps gives 6, 6, 7, 6, 6, 6, 7, 6, … cs), and at least 2 cs
//!   (browsers slow shorter delays down to 10 cs).

use std::borrow::Cow;
use std::collections::HashMap;
use std::fs::File;
use std::io::BufReader;
use std::path::Path;

use ::gif::{ColorOutput, DecodeOptions, DisposalMethod, Encoder, Frame, Repeat};
use color_quant::NeuQuant;

use crate::{atomic, decode_error, encode_error, io_error, Frames, Result};

/// Colours the palette learns; one more index is kept for transparency.
const COLORS: usize = 255;
const TRANSPARENT: u8 = 255;
/// Pixels NeuQuant learns from at most, sampled evenly across the clip.
const TRAINING_PIXELS: usize = 1 << 20;
/// NeuQuant's sampling factor: 1 is best and slowest, 30 fastest; 10 is its authors' advice.
const NEUQUANT_SAMPLING: i32 = 10;

/// How pixels map to palette indices.
enum Palette {
    /// The clip's own colours, looked up exactly; no dithering is needed.
    Exact(HashMap<[u8; 3], u8>),
    /// A learned palette, searched for the nearest colour.
    Learned(NeuQuant),
}

impl Palette {
    /// The palette for `rgb`, `(N, 3)` pixels of the whole clip.
    fn for_pixels(rgb: &[u8]) -> Self {
        let mut colors = HashMap::new();
        for pixel in rgb.chunks_exact(3) {
            let next = colors.len();
            colors
                .entry([pixel[0], pixel[1], pixel[2]])
                .or_insert(next as u8);
            if colors.len() > COLORS {
                return Self::Learned(learn(rgb));
            }
        }
        Self::Exact(colors)
    }

    /// `(256, 3)` colour table; the last entry (transparent) is black.
    fn table(&self) -> Vec<u8> {
        let mut table = match self {
            Self::Exact(colors) => {
                let mut table = vec![0; colors.len() * 3];
                for (color, &index) in colors {
                    table[usize::from(index) * 3..][..3].copy_from_slice(color);
                }
                table
            }
            Self::Learned(quantizer) => quantizer.color_map_rgb(),
        };
        table.resize(256 * 3, 0);
        table
    }
}

/// Trains NeuQuant on pixels spread evenly over the clip.
fn learn(rgb: &[u8]) -> NeuQuant {
    let pixels = rgb.len() / 3;
    // An odd stride never locks onto the same columns row after row of an even-width frame.
    let stride = pixels.div_ceil(TRAINING_PIXELS) | 1;
    let rgba: Vec<u8> = (0..pixels)
        .step_by(stride)
        .flat_map(|p| [rgb[3 * p], rgb[3 * p + 1], rgb[3 * p + 2], 255])
        .collect();
    NeuQuant::new(NEUQUANT_SAMPLING, COLORS, &rgba)
}

/// Palette indices of one `(H, W, 3)` frame, with Floyd–Steinberg dithering for a learned
/// palette. Returns `(H, W)` indices.
fn indices(frame: &[u8], height: usize, width: usize, palette: &Palette, table: &[u8]) -> Vec<u8> {
    let quantizer = match palette {
        Palette::Exact(colors) => {
            return frame
                .chunks_exact(3)
                .map(|p| colors[&[p[0], p[1], p[2]]])
                .collect();
        }
        Palette::Learned(quantizer) => quantizer,
    };
    let mut out = Vec::with_capacity(height * width);
    // Nearest palette entry per 6-bit-per-channel cell, found once at the cell's centre: the
    // search is the slow part, and any miss by a shade is carried on by the diffusion.
    const EMPTY: u16 = u16::MAX;
    let mut nearest = vec![EMPTY; 1 << 18];
    // Error carried into this row and the next, one pixel of margin on each side.
    let mut this_row = vec![[0.0f32; 3]; width + 2];
    let mut next_row = vec![[0.0f32; 3]; width + 2];
    for row in 0..height {
        for col in 0..width {
            let i = (row * width + col) * 3;
            let want: [f32; 3] = std::array::from_fn(|c| {
                (f32::from(frame[i + c]) + this_row[col + 1][c]).clamp(0.0, 255.0)
            });
            let [r, g, b] = want.map(|v| v as u8 >> 2);
            let cell = usize::from(r) << 12 | usize::from(g) << 6 | usize::from(b);
            if nearest[cell] == EMPTY {
                let centre = [r, g, b, 0].map(|v| (v << 2) | 2);
                nearest[cell] = quantizer.index_of(&[centre[0], centre[1], centre[2], 255]) as u16;
            }
            let index = usize::from(nearest[cell]);
            out.push(index as u8);
            for c in 0..3 {
                let error = want[c] - f32::from(table[index * 3 + c]);
                this_row[col + 2][c] += error * 7.0 / 16.0;
                next_row[col][c] += error * 3.0 / 16.0;
                next_row[col + 1][c] += error * 5.0 / 16.0;
                next_row[col + 2][c] += error * 1.0 / 16.0;
            }
        }
        std::mem::swap(&mut this_row, &mut next_row);
        next_row.iter_mut().for_each(|e| *e = [0.0; 3]);
    }
    out
}

/// `[f(0), f(1), …, f(count - 1)]`, computed on all cores in contiguous runs.
fn parallel_map<T: Send>(count: usize, f: impl Fn(usize) -> T + Sync) -> Vec<T> {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let run = count.div_ceil(threads).max(1);
    let mut out: Vec<Option<T>> = (0..count).map(|_| None).collect();
    std::thread::scope(|scope| {
        for (chunk_index, chunk) in out.chunks_mut(run).enumerate() {
            let f = &f;
            scope.spawn(move || {
                for (offset, slot) in chunk.iter_mut().enumerate() {
                    *slot = Some(f(chunk_index * run + offset));
                }
            });
        }
    });
    out.into_iter()
        .map(|v| v.expect("every slot is filled"))
        .collect()
}

/// Per-frame delays in centiseconds whose running sum tracks `i / fps` (at least 2 cs each).
fn delays(frames: usize, fps: f32) -> Vec<u16> {
    let at = |i: usize| (100.0 * i as f64 / f64::from(fps)).round();
    (0..frames)
        .map(|i| (at(i + 1) - at(i)).clamp(2.0, f64::from(u16::MAX)) as u16)
        .collect()
}

/// Writes `frames` as a looping gif (see [`crate::write`] for the contract).
pub(crate) fn write_gif(path: &Path, frames: &Frames) -> Result<()> {
    let (height, width) = (frames.height, frames.width);
    let (Ok(h16), Ok(w16)) = (u16::try_from(height), u16::try_from(width)) else {
        return Err(encode_error(
            path,
            format!("{width}x{height} exceeds gif's 65535x65535"),
        ));
    };
    let rgb = frames.to_rgb8();
    let palette = Palette::for_pixels(&rgb);
    let table = palette.table();
    let delays = delays(frames.frames, frames.fps);
    // Dithering is the slow part (a palette search per pixel) and frames are independent.
    let frame_indices = parallel_map(frames.frames, |index| {
        let frame_rgb = &rgb[index * frames.frame_len()..][..frames.frame_len()];
        indices(frame_rgb, height, width, &palette, &table)
    });
    let gif_error = |e: ::gif::EncodingError| encode_error(path, e);

    atomic::write_file(path, |writer| {
        let mut encoder = Encoder::new(writer, w16, h16, &table).map_err(gif_error)?;
        encoder.set_repeat(Repeat::Infinite).map_err(gif_error)?;
        let mut previous: Option<&Vec<u8>> = None;
        for (current, &delay) in frame_indices.iter().zip(&delays) {
            let (buffer, transparent) = match previous {
                Some(previous) => {
                    let buffer = current
                        .iter()
                        .zip(previous)
                        .map(|(&now, &before)| if now == before { TRANSPARENT } else { now })
                        .collect();
                    (buffer, Some(TRANSPARENT))
                }
                None => (current.clone(), None),
            };
            let frame = Frame {
                width: w16,
                height: h16,
                delay,
                dispose: DisposalMethod::Keep,
                transparent,
                buffer: Cow::Owned(buffer),
                ..Frame::default()
            };
            encoder.write_frame(&frame).map_err(gif_error)?;
            previous = Some(current);
        }
        encoder.into_inner().map_err(gif_error)?;
        Ok(())
    })
}

/// Reads a gif, compositing each frame over the canvas the way browsers show it; fps is the
/// frame count over the total delay (delays under 2 cs count as 10 cs, as browsers play them).
/// `(height, width)` of the gif's canvas, from its header.
pub(crate) fn probe_gif(path: &Path) -> Result<(usize, usize)> {
    let file = File::open(path).map_err(io_error(path))?;
    let decoder = DecodeOptions::new()
        .read_info(BufReader::new(file))
        .map_err(|e| decode_error(path, format!("not a readable gif ({e})")))?;
    Ok((usize::from(decoder.height()), usize::from(decoder.width())))
}

pub(crate) fn read_gif(path: &Path) -> Result<Frames> {
    let file = File::open(path).map_err(io_error(path))?;
    let mut options = DecodeOptions::new();
    options.set_color_output(ColorOutput::RGBA);
    let mut decoder = options
        .read_info(BufReader::new(file))
        .map_err(|e| decode_error(path, format!("not a readable gif ({e})")))?;
    let (width, height) = (usize::from(decoder.width()), usize::from(decoder.height()));
    // (H, W, 4) RGBA; what no frame covers stays transparent black.
    let mut canvas = vec![0u8; height * width * 4];
    let mut data = Vec::new();
    let (mut count, mut centiseconds) = (0usize, 0u64);
    loop {
        let frame = match decoder.read_next_frame() {
            Ok(Some(frame)) => frame,
            Ok(None) => break,
            Err(e) => return Err(decode_error(path, format!("frame {count}: {e}"))),
        };
        let saved = (frame.dispose == DisposalMethod::Previous).then(|| canvas.clone());
        let (left, top) = (usize::from(frame.left), usize::from(frame.top));
        let (frame_w, frame_h) = (usize::from(frame.width), usize::from(frame.height));
        // The frame's rectangle, clipped to the canvas.
        let rows = top..(top + frame_h).min(height);
        let cols = left..(left + frame_w).min(width);
        for y in rows.clone() {
            for x in cols.clone() {
                let src = ((y - top) * frame_w + (x - left)) * 4;
                if frame.buffer[src + 3] != 0 {
                    canvas[(y * width + x) * 4..][..4].copy_from_slice(&frame.buffer[src..src + 4]);
                }
            }
        }
        data.extend(
            canvas
                .chunks_exact(4)
                .flat_map(|p| p[..3].iter().map(|&v| f32::from(v) / 255.0)),
        );
        count += 1;
        centiseconds += u64::from(if frame.delay < 2 { 10 } else { frame.delay });
        match (frame.dispose, saved) {
            (DisposalMethod::Previous, Some(saved)) => canvas = saved,
            (DisposalMethod::Background, _) => {
                for y in rows {
                    canvas[(y * width + cols.start) * 4..(y * width + cols.end) * 4].fill(0);
                }
            }
            _ => {}
        }
    }
    if count == 0 {
        return Err(decode_error(path, "the gif holds no frames"));
    }
    let fps = (count as f64 * 100.0 / centiseconds as f64) as f32;
    Frames::new(count, height, width, fps, data).map_err(|e| decode_error(path, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_keep_the_total_duration() {
        let d = delays(16, 16.0);
        assert_eq!(d.iter().map(|&x| u32::from(x)).sum::<u32>(), 100);
        assert!(d.iter().all(|&x| x == 6 || x == 7), "{d:?}");
        assert_eq!(delays(3, 10.0), [10, 10, 10]);
        assert_eq!(
            delays(2, 100.0),
            [2, 2],
            "clamped to the 2 cs browsers honour"
        );
    }

    #[test]
    fn few_colours_give_an_exact_palette() {
        let rgb = [255u8, 0, 0, 0, 255, 0, 255, 0, 0, 1, 2, 3];
        let palette = Palette::for_pixels(&rgb);
        let table = palette.table();
        let idx = indices(&rgb, 2, 2, &palette, &table);
        let back: Vec<u8> = idx
            .iter()
            .flat_map(|&i| table[usize::from(i) * 3..][..3].to_vec())
            .collect();
        assert_eq!(back, rgb);
        assert!(matches!(palette, Palette::Exact(_)));
    }

    #[test]
    fn dithering_keeps_a_gradient_mean() {
        // A smooth gradient of 4096 distinct colours: the learned palette plus dithering keeps
        // local means close to the source.
        let (h, w) = (64, 64);
        let rgb: Vec<u8> = (0..h * w)
            .flat_map(|p| [(p % w * 4) as u8, (p / w * 4) as u8, 128])
            .collect();
        let palette = Palette::for_pixels(&rgb);
        assert!(matches!(palette, Palette::Learned(_)));
        let table = palette.table();
        let idx = indices(&rgb, h, w, &palette, &table);
        let mean = |v: &mut dyn Iterator<Item = u8>| v.map(f64::from).sum::<f64>() / (h * w) as f64;
        let want = mean(&mut rgb.iter().step_by(3).copied());
        let got = mean(&mut idx.iter().map(|&i| table[usize::from(i) * 3]));
        assert!((want - got).abs() < 1.0, "red mean {want} vs {got}");
    }
}
