//! `.mp4`: H.264 through openh264 (built from its bundled C source), muxed by muxide with
//! fast-start, demuxed by the `mp4` crate.
//!
//! Encoder settings, and why:
//! * rate control by bitrate, 0.3 bits per pixel per frame (1.9 Mbit/s at 480×832 and
//!   16 fps), at least 1 Mbit/s. Smooth generated-looking video stays below it at openh264's
//!   best quality (mean abs error 0.003 on the 480×832 test pattern); detailed texture uses
//!   all of it;
//! * frame skipping off, so every input frame is a coded frame;
//! * background detection off: it codes "static" blocks coarsely, which turns the smooth
//!   gradients of generated video into visible 16×16 steps (mean abs error 0.005 → 0.003 and
//!   a smaller file on the round-trip pattern at 480×832);
//! * an IDR frame every 5 seconds (and at scene cuts), so players can seek;
//! * BT.709 limited range, written into the SPS VUI so that players convert colours back the
//!   way they were converted here.

use std::fs::File;
use std::io::BufReader;
use std::path::Path;

use muxide::api::{MuxerBuilder, VideoCodec};
use openh264::decoder::{DecodedYUV, Decoder, DecoderConfig, Flush};
use openh264::encoder::{
    BitRate, Complexity, Encoder, EncoderConfig, FrameRate, FrameType, IntraFramePeriod,
    RateControlMode, UsageType, VuiConfig,
};
use openh264::formats::YUVSource;
use openh264::{OpenH264API, Timestamp};

use crate::h264::{length_prefixed_to_annexb, sps_color_description, ColorDescription, START_CODE};
use crate::yuv::{i420_to_rgb, rgb_to_i420, ColorMatrix};
use crate::{atomic, decode_error, encode_error, io_error, Frames, Result};

/// Bits spent per pixel per frame.
const BITS_PER_PIXEL: f64 = 0.3;
/// The floor under the bitrate, for small videos, in bits per second.
const MIN_BITRATE: f64 = 1_000_000.0;
/// Seconds between IDR frames.
const KEYFRAME_SECONDS: f32 = 5.0;
/// muxide's media timescale (ticks per second).
const TIMESCALE: u32 = 90_000;

/// The encoder's target bitrate for `(height, width)` pictures at `fps`, in bits per second.
fn target_bitrate(height: usize, width: usize, fps: f32) -> u32 {
    let bits = BITS_PER_PIXEL * (height * width) as f64 * f64::from(fps);
    bits.clamp(MIN_BITRATE, f64::from(u32::MAX / 2)) as u32
}

/// The size `(H', W')` a `(H, W)` video is coded at: H.264 4:2:0 codes even sizes only, and
/// openh264 nothing under 16×16. The padding repeats the last row and column.
pub(crate) fn coded_size(height: usize, width: usize) -> (usize, usize) {
    let code = |n: usize| (n + n % 2).max(16);
    (code(height), code(width))
}

/// Writes `frames` as H.264 in a fast-start mp4 (see [`crate::write`] for the contract).
pub(crate) fn write_mp4(path: &Path, frames: &Frames) -> Result<()> {
    let bytes = encode(frames).map_err(|message| encode_error(path, message))?;
    atomic::write_bytes(path, &bytes)
}

/// Encodes and muxes `frames` into the bytes of an mp4 file.
fn encode(frames: &Frames) -> std::result::Result<Vec<u8>, String> {
    let (height, width, fps) = (frames.height, frames.width, frames.fps);
    let (coded_h, coded_w) = coded_size(height, width);
    if coded_h.max(coded_w) > 3840 || coded_h.min(coded_w) > 2160 {
        return Err(format!(
            "{width}x{height} is larger than openh264 encodes (3840x2160 or 2160x3840)"
        ));
    }
    let keyframe_period = (fps * KEYFRAME_SECONDS).round().max(1.0) as u32;
    let config = EncoderConfig::new()
        .bitrate(BitRate::from_bps(target_bitrate(coded_h, coded_w, fps)))
        .max_frame_rate(FrameRate::from_hz(fps))
        .rate_control_mode(RateControlMode::Bitrate)
        .skip_frames(false)
        .usage_type(UsageType::CameraVideoRealTime)
        .complexity(Complexity::High)
        .background_detection(false)
        .intra_frame_period(IntraFramePeriod::from_num_frames(keyframe_period))
        .vui(VuiConfig::bt709());
    let mut encoder = Encoder::with_api_config(OpenH264API::from_source(), config)
        .map_err(|e| format!("openh264 refused the settings: {e}"))?;
    silence(&mut encoder);
    let mut muxer = MuxerBuilder::new(Vec::new())
        .video(
            VideoCodec::H264,
            coded_w as u32,
            coded_h as u32,
            f64::from(fps),
        )
        .with_fast_start(true)
        .build()
        .map_err(|e| e.to_string())?;

    for index in 0..frames.frames {
        let picture = rgb_to_i420(
            frames.frame(index),
            height,
            width,
            (coded_h, coded_w),
            ColorMatrix::BT709,
        );
        let seconds = index as f64 / f64::from(fps);
        let stream = encoder
            .encode_at(&picture, Timestamp::from_millis((seconds * 1000.0) as u64))
            .map_err(|e| format!("frame {index}: {e}"))?;
        let frame_type = stream.frame_type();
        if matches!(frame_type, FrameType::Skip | FrameType::Invalid) {
            return Err(format!(
                "frame {index}: openh264 returned a {frame_type:?} frame"
            ));
        }
        muxer
            .write_video(seconds, &stream.to_vec(), frame_type == FrameType::IDR)
            .map_err(|e| format!("frame {index}: {e}"))?;
    }
    muxer.finish_in_place().map_err(|e| e.to_string())?;
    let mut bytes = muxer.into_writer();
    if frames.frames == 1 {
        // muxide gives a lone sample a duration of one tick (it knows durations only as
        // differences between timestamps); a one-frame video should last 1/fps.
        let ticks = (f64::from(TIMESCALE) / f64::from(fps)).round().max(1.0) as u32;
        set_single_sample_duration(&mut bytes, ticks)?;
    }
    Ok(bytes)
}

/// Turns openh264's log off before it initialises. Otherwise every encode prints a warning
/// that frame skipping is off, which is what we want (quality over an exact bitrate), and
/// the wrapper only quiets the log after initialisation.
fn silence(encoder: &mut Encoder) {
    let mut level = openh264_sys2::WELS_LOG_QUIET;
    // SAFETY: the trace level is one of the options openh264 accepts before initialisation
    // (welsEncoderExt.cpp, `SetOption`); it reads one 32-bit integer through the pointer,
    // which outlives the call, and nothing else the wrapper relies on changes.
    unsafe {
        encoder.raw_api().set_option(
            openh264_sys2::ENCODER_OPTION_TRACE_LEVEL,
            (&raw mut level).cast(),
        );
    }
}

/// `(type, start, end)` of each box inside `data[start..end]`.
fn boxes(data: &[u8], start: usize, end: usize) -> Vec<([u8; 4], usize, usize)> {
    let mut found = Vec::new();
    let mut at = start;
    while at + 8 <= end {
        let size = u32::from_be_bytes(data[at..at + 4].try_into().unwrap()) as usize;
        let kind: [u8; 4] = data[at + 4..at + 8].try_into().unwrap();
        let size = match size {
            0 => end - at,
            1 if at + 16 <= end => {
                u64::from_be_bytes(data[at + 8..at + 16].try_into().unwrap()) as usize
            }
            _ => size,
        };
        if size < 8 || at + size > end {
            break;
        }
        found.push((kind, at, at + size));
        at += size;
    }
    found
}

/// `(start, end)` of the box at `path` (e.g. `moov/trak/mdia`), first match at each level.
fn find_box(data: &[u8], path: &[&[u8; 4]]) -> Option<(usize, usize)> {
    let (mut start, mut end) = (0, data.len());
    for kind in path {
        let (_, s, e) = boxes(data, start, end)
            .into_iter()
            .find(|(k, _, _)| k == *kind)?;
        (start, end) = (s + 8, e);
    }
    Some((start - 8, end))
}

/// Sets the duration of the only video sample to `ticks` (media timescale), and the track's
/// and movie's durations to match, in a muxide output with one version-0 video track.
fn set_single_sample_duration(data: &mut [u8], ticks: u32) -> std::result::Result<(), String> {
    let locate = |path: &[&[u8; 4]]| {
        find_box(data, path)
            .filter(|&(start, _)| data[start + 8] == 0)
            .ok_or_else(|| format!("muxer output has no version-0 {:?} box", path.last()))
    };
    let put = |data: &mut [u8], at: usize, value: u32| {
        data[at..at + 4].copy_from_slice(&value.to_be_bytes());
    };
    let read = |data: &[u8], at: usize| u32::from_be_bytes(data[at..at + 4].try_into().unwrap());
    let mvhd = locate(&[b"moov", b"mvhd"])?.0;
    let tkhd = locate(&[b"moov", b"trak", b"tkhd"])?.0;
    let mdhd = locate(&[b"moov", b"trak", b"mdia", b"mdhd"])?.0;
    let stts = locate(&[b"moov", b"trak", b"mdia", b"minf", b"stbl", b"stts"])?.0;
    if read(data, stts + 12) != 1 || read(data, stts + 16) != 1 {
        return Err("expected one stts entry of one sample".into());
    }
    // Layouts (version 0): box header (8), version+flags (4), then
    // mvhd/mdhd: creation, modification, timescale, duration; tkhd: creation, modification,
    // track_ID, reserved, duration; stts: entry_count, then (sample_count, sample_delta).
    let movie_timescale = u64::from(read(data, mvhd + 20));
    let movie_ticks = (u64::from(ticks) * movie_timescale).div_ceil(u64::from(TIMESCALE)) as u32;
    put(data, stts + 20, ticks);
    put(data, mdhd + 24, ticks);
    put(data, tkhd + 28, movie_ticks);
    put(data, mvhd + 24, movie_ticks);
    Ok(())
}

/// Reads the first H.264 video track of an mp4 (see [`crate::read`]).
/// `(frames, height, width)` of the first video track, from the header alone.
pub(crate) fn probe_mp4(path: &Path) -> Result<(Option<usize>, usize, usize)> {
    let mut file = File::open(path).map_err(io_error(path))?;
    let size = file.metadata().map_err(io_error(path))?.len();
    check_top_level_boxes(&mut file, size).map_err(|e| decode_error(path, e))?;
    let reader = ::mp4::Mp4Reader::read_header(BufReader::new(file), size)
        .map_err(|e| decode_error(path, format!("not a readable mp4 ({e})")))?;
    let track = reader
        .tracks()
        .iter()
        .filter(|(_, t)| matches!(t.track_type(), Ok(::mp4::TrackType::Video)))
        .min_by_key(|(&id, _)| id)
        .map(|(_, t)| t)
        .ok_or_else(|| decode_error(path, "the file has no video track"))?;
    Ok((
        Some(track.sample_count() as usize),
        usize::from(track.height()),
        usize::from(track.width()),
    ))
}

pub(crate) fn read_mp4(path: &Path) -> Result<Frames> {
    let mut file = File::open(path).map_err(io_error(path))?;
    let size = file.metadata().map_err(io_error(path))?.len();
    check_top_level_boxes(&mut file, size).map_err(|e| decode_error(path, e))?;
    let mut reader = ::mp4::Mp4Reader::read_header(BufReader::new(file), size)
        .map_err(|e| decode_error(path, format!("not a readable mp4 ({e})")))?;

    let mut video_tracks: Vec<u32> = reader
        .tracks()
        .iter()
        .filter(|(_, track)| matches!(track.track_type(), Ok(::mp4::TrackType::Video)))
        .map(|(&id, _)| id)
        .collect();
    video_tracks.sort_unstable();
    let track_id = *video_tracks
        .first()
        .ok_or_else(|| decode_error(path, "the file has no video track"))?;
    let track = &reader.tracks()[&track_id];
    let avc1 = track
        .trak
        .mdia
        .minf
        .stbl
        .stsd
        .avc1
        .as_ref()
        .ok_or_else(|| {
            let kind = track
                .box_type()
                .map(|t| t.to_string())
                .unwrap_or_else(|_| "unknown".into());
            decode_error(
                path,
                format!("the video is {kind}; only H.264 (avc1) is supported"),
            )
        })?;
    let length_size = usize::from(avc1.avcc.length_size_minus_one & 3) + 1;
    let mut parameter_sets = Vec::new();
    for nal in avc1
        .avcc
        .sequence_parameter_sets
        .iter()
        .chain(&avc1.avcc.picture_parameter_sets)
    {
        parameter_sets.extend_from_slice(&START_CODE);
        parameter_sets.extend_from_slice(&nal.bytes);
    }
    let colors = avc1
        .avcc
        .sequence_parameter_sets
        .first()
        .and_then(|sps| sps_color_description(&sps.bytes))
        .unwrap_or_default();

    let samples = track.sample_count();
    let ticks: u64 = track
        .trak
        .mdia
        .minf
        .stbl
        .stts
        .entries
        .iter()
        .map(|e| u64::from(e.sample_count) * u64::from(e.sample_delta))
        .sum();
    if samples == 0 || ticks == 0 {
        return Err(decode_error(path, "the video track holds no frames"));
    }
    let fps = (f64::from(samples) * f64::from(track.timescale()) / ticks as f64) as f32;

    let config = DecoderConfig::new().flush_after_decode(Flush::NoFlush);
    let mut decoder = Decoder::with_api_config(OpenH264API::from_source(), config)
        .map_err(|e| decode_error(path, format!("openh264 decoder: {e}")))?;
    let mut video = DecodedVideo::new(colors);
    let mut packet = Vec::new();
    for sample_id in 1..=samples {
        let sample = reader
            .read_sample(track_id, sample_id)
            .map_err(|e| decode_error(path, describe_sample_error(sample_id, samples, e)))?
            .ok_or_else(|| {
                decode_error(path, format!("frame {sample_id} of {samples} is missing"))
            })?;
        packet.clear();
        if sample_id == 1 {
            packet.extend_from_slice(&parameter_sets);
        }
        length_prefixed_to_annexb(&sample.bytes, length_size, &mut packet)
            .map_err(|e| decode_error(path, format!("frame {sample_id}: {e}")))?;
        match decoder.decode(&packet) {
            Ok(Some(picture)) => video.push(&picture).map_err(|e| decode_error(path, e))?,
            Ok(None) => {}
            Err(e) => return Err(decode_error(path, format!("frame {sample_id}: H.264: {e}"))),
        }
    }
    let rest = decoder
        .flush_remaining()
        .map_err(|e| decode_error(path, format!("H.264 at the end of the stream: {e}")))?;
    for picture in &rest {
        video.push(picture).map_err(|e| decode_error(path, e))?;
    }
    if video.frames != samples as usize {
        return Err(decode_error(
            path,
            format!(
                "decoded {} of the {samples} frames the track lists",
                video.frames
            ),
        ));
    }
    Frames::new(video.frames, video.height, video.width, fps, video.data)
}

/// Walks the top-level boxes of an mp4 of `size` bytes, so that a cut-off file is reported
/// as truncated instead of as a malformed box. Leaves the file positioned at its start.
fn check_top_level_boxes(file: &mut File, size: u64) -> std::result::Result<(), String> {
    use std::io::{Read, Seek, SeekFrom};
    let mut at = 0u64;
    while at < size {
        let mut header = [0u8; 16];
        let available = (size - at).min(16) as usize;
        file.seek(SeekFrom::Start(at)).map_err(|e| e.to_string())?;
        file.read_exact(&mut header[..available])
            .map_err(|e| e.to_string())?;
        if available < 8 {
            return Err(format!(
                "the file is truncated: {available} stray bytes at its end"
            ));
        }
        let kind = String::from_utf8_lossy(&header[4..8]).into_owned();
        let box_size = match u32::from_be_bytes(header[..4].try_into().unwrap()) {
            0 => size - at,
            1 if available == 16 => u64::from_be_bytes(header[8..16].try_into().unwrap()),
            1 => return Err("the file is truncated inside a box header".into()),
            n => u64::from(n),
        };
        if box_size < 8 {
            return Err(format!(
                "not an mp4: box {kind:?} at byte {at} has size {box_size}"
            ));
        }
        if at == 0 && kind != "ftyp" {
            return Err(format!(
                "not an mp4: it starts with {kind:?}, not an \"ftyp\" box"
            ));
        }
        if box_size > size - at {
            return Err(format!(
                "the file is truncated: the {kind:?} box at byte {at} needs {box_size} bytes \
                 but only {} remain",
                size - at
            ));
        }
        at += box_size;
    }
    file.seek(SeekFrom::Start(0)).map_err(|e| e.to_string())?;
    Ok(())
}

/// Decoded pictures gathered as `(F, H, W, 3)` f32.
struct DecodedVideo {
    colors: ColorDescription,
    frames: usize,
    height: usize,
    width: usize,
    data: Vec<f32>,
}

impl DecodedVideo {
    fn new(colors: ColorDescription) -> Self {
        Self {
            colors,
            frames: 0,
            height: 0,
            width: 0,
            data: Vec::new(),
        }
    }

    fn push(&mut self, picture: &DecodedYUV<'_>) -> std::result::Result<(), String> {
        let (width, height) = picture.dimensions();
        if self.frames == 0 {
            (self.height, self.width) = (height, width);
        } else if (height, width) != (self.height, self.width) {
            return Err(format!(
                "frame {} is {width}x{height} but the first is {}x{}; size changes are not supported",
                self.frames, self.width, self.height
            ));
        }
        let matrix = ColorMatrix::from_vui(
            self.colors.matrix_coefficients,
            self.colors.full_range,
            height,
        );
        let start = self.data.len();
        self.data.resize(start + height * width * 3, 0.0);
        i420_to_rgb(picture, matrix, &mut self.data[start..]);
        self.frames += 1;
        Ok(())
    }
}

/// Explains a failure to read sample `sample_id`; a short read means a truncated file.
fn describe_sample_error(sample_id: u32, samples: u32, error: ::mp4::Error) -> String {
    match error {
        ::mp4::Error::IoError(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
            format!("the file is truncated: frame {sample_id} of {samples} lies past its end")
        }
        e => format!("frame {sample_id} of {samples}: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bitrate_scales_with_size_and_has_a_floor() {
        assert_eq!(target_bitrate(480, 832, 16.0), 1_916_928);
        assert_eq!(target_bitrate(64, 64, 8.0), 1_000_000);
        assert!(target_bitrate(720, 1280, 24.0) > 6_000_000);
    }

    #[test]
    fn box_walker_finds_nested_boxes() {
        // moov { trak { tkhd(12 bytes payload) } }
        let tkhd = [&20u32.to_be_bytes()[..], b"tkhd", &[0; 12]].concat();
        let trak = [&(8 + tkhd.len() as u32).to_be_bytes()[..], b"trak", &tkhd].concat();
        let moov = [&(8 + trak.len() as u32).to_be_bytes()[..], b"moov", &trak].concat();
        let file = [&16u32.to_be_bytes()[..], b"ftyp", &[0; 8], &moov].concat();
        assert_eq!(
            find_box(&file, &[b"moov", b"trak", b"tkhd"]),
            Some((32, 52))
        );
        assert_eq!(find_box(&file, &[b"moov", b"mvhd"]), None);
    }
}
