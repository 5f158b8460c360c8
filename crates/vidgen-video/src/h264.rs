//! The few H.264 bitstream details the mp4 reader needs: turning mp4's length-prefixed NAL
//! units into Annex B, and the colour description in a sequence parameter set's VUI.

/// Annex B start code that precedes every NAL unit handed to the decoder.
pub(crate) const START_CODE: [u8; 4] = [0, 0, 0, 1];

/// Appends the NAL units of one mp4 sample (each prefixed by its big-endian length of
/// `length_size` bytes) to `out` in Annex B form (each prefixed by a start code).
pub(crate) fn length_prefixed_to_annexb(
    sample: &[u8],
    length_size: usize,
    out: &mut Vec<u8>,
) -> Result<(), String> {
    let mut rest = sample;
    while !rest.is_empty() {
        if rest.len() < length_size {
            return Err(format!(
                "{} stray bytes after the last NAL unit",
                rest.len()
            ));
        }
        let (prefix, tail) = rest.split_at(length_size);
        let len = prefix
            .iter()
            .fold(0usize, |n, &b| (n << 8) | usize::from(b));
        if len > tail.len() {
            return Err(format!(
                "a NAL unit claims {len} bytes but only {} remain in the sample",
                tail.len()
            ));
        }
        out.extend_from_slice(&START_CODE);
        out.extend_from_slice(&tail[..len]);
        rest = &tail[len..];
    }
    Ok(())
}

/// How a stream says its Y'CbCr relates to RGB (H.264 Annex E).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct ColorDescription {
    /// `matrix_coefficients` when the VUI carries a colour description.
    pub(crate) matrix_coefficients: Option<u8>,
    /// `video_full_range_flag` (false when absent: limited range).
    pub(crate) full_range: bool,
}

/// Exp-Golomb bit reader over an RBSP (emulation-prevention bytes already removed).
struct Bits<'a> {
    data: &'a [u8],
    pos: usize,
}

impl Bits<'_> {
    fn bit(&mut self) -> Option<u32> {
        let byte = *self.data.get(self.pos / 8)?;
        let bit = (byte >> (7 - self.pos % 8)) & 1;
        self.pos += 1;
        Some(u32::from(bit))
    }

    fn bits(&mut self, n: u32) -> Option<u32> {
        (0..n).try_fold(0, |acc, _| Some((acc << 1) | self.bit()?))
    }

    /// ue(v): unsigned Exp-Golomb.
    fn ue(&mut self) -> Option<u32> {
        let mut zeros = 0;
        while self.bit()? == 0 {
            zeros += 1;
            if zeros > 31 {
                return None;
            }
        }
        Some((1u32 << zeros) - 1 + self.bits(zeros)?)
    }

    /// se(v): signed Exp-Golomb (only skipped here, so the value is not mapped).
    fn se(&mut self) -> Option<u32> {
        self.ue()
    }
}

/// The RBSP of a NAL unit: the payload after the header byte with every `00 00 03` turned
/// back into `00 00`.
fn rbsp(nal: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(nal.len());
    let mut zeros = 0;
    for &byte in nal.iter().skip(1) {
        if zeros >= 2 && byte == 3 {
            zeros = 0;
            continue;
        }
        zeros = if byte == 0 { zeros + 1 } else { 0 };
        out.push(byte);
    }
    out
}

/// Reads the colour description from a sequence parameter set NAL unit (header byte
/// included). `None` when the SPS is malformed; a default description when it has no VUI.
pub(crate) fn sps_color_description(sps: &[u8]) -> Option<ColorDescription> {
    if sps.first()? & 0x1f != 7 {
        return None;
    }
    let data = rbsp(sps);
    let mut r = Bits {
        data: &data,
        pos: 0,
    };
    let profile_idc = r.bits(8)?;
    r.bits(16)?; // constraint flags, level_idc
    r.ue()?; // seq_parameter_set_id
    if matches!(
        profile_idc,
        100 | 110 | 122 | 244 | 44 | 83 | 86 | 118 | 128 | 138 | 139 | 134 | 135
    ) {
        let chroma_format_idc = r.ue()?;
        if chroma_format_idc == 3 {
            r.bit()?; // separate_colour_plane_flag
        }
        r.ue()?; // bit_depth_luma_minus8
        r.ue()?; // bit_depth_chroma_minus8
        r.bit()?; // qpprime_y_zero_transform_bypass_flag
        if r.bit()? == 1 {
            let lists = if chroma_format_idc == 3 { 12 } else { 8 };
            for i in 0..lists {
                if r.bit()? == 1 {
                    skip_scaling_list(&mut r, if i < 6 { 16 } else { 64 })?;
                }
            }
        }
    }
    r.ue()?; // log2_max_frame_num_minus4
    match r.ue()? {
        0 => {
            r.ue()?; // log2_max_pic_order_cnt_lsb_minus4
        }
        1 => {
            r.bit()?; // delta_pic_order_always_zero_flag
            r.se()?; // offset_for_non_ref_pic
            r.se()?; // offset_for_top_to_bottom_field
            for _ in 0..r.ue()? {
                r.se()?; // offset_for_ref_frame[i]
            }
        }
        _ => {}
    }
    r.ue()?; // max_num_ref_frames
    r.bit()?; // gaps_in_frame_num_value_allowed_flag
    r.ue()?; // pic_width_in_mbs_minus1
    r.ue()?; // pic_height_in_map_units_minus1
    if r.bit()? == 0 {
        r.bit()?; // mb_adaptive_frame_field_flag
    }
    r.bit()?; // direct_8x8_inference_flag
    if r.bit()? == 1 {
        (0..4).try_for_each(|_| r.ue().map(drop))?; // frame crop offsets
    }
    if r.bit()? == 0 {
        return Some(ColorDescription::default()); // no VUI
    }
    if r.bit()? == 1 && r.bits(8)? == 255 {
        r.bits(32)?; // sar_width, sar_height of the extended aspect ratio
    }
    if r.bit()? == 1 {
        r.bit()?; // overscan_appropriate_flag
    }
    let mut description = ColorDescription::default();
    if r.bit()? == 1 {
        r.bits(3)?; // video_format
        description.full_range = r.bit()? == 1;
        if r.bit()? == 1 {
            r.bits(16)?; // colour_primaries, transfer_characteristics
            description.matrix_coefficients = Some(r.bits(8)? as u8);
        }
    }
    Some(description)
}

fn skip_scaling_list(r: &mut Bits<'_>, size: usize) -> Option<()> {
    let (mut last, mut next) = (8i64, 8i64);
    for _ in 0..size {
        if next != 0 {
            let code = i64::from(r.ue()?);
            // se(v) mapping: 1 -> 1, 2 -> -1, 3 -> 2, …
            let delta = if code % 2 == 1 {
                (code + 1) / 2
            } else {
                -(code / 2)
            };
            next = (last + delta).rem_euclid(256);
        }
        if next != 0 {
            last = next;
        }
    }
    Some(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use openh264::encoder::{Encoder, EncoderConfig, VuiConfig};
    use openh264::formats::YUVBuffer;
    use openh264::OpenH264API;

    /// The SPS openh264 writes for a 32×32 grey picture under `config`.
    fn encoded_sps(config: EncoderConfig) -> Vec<u8> {
        let mut encoder = Encoder::with_api_config(OpenH264API::from_source(), config).unwrap();
        let picture = YUVBuffer::from_vec(vec![128; 32 * 32 * 3 / 2], 32, 32);
        let stream = encoder.encode(&picture).unwrap().to_vec();
        let sps = openh264::nal_units(&stream)
            .map(|nal| {
                nal.iter()
                    .skip_while(|&&b| b == 0)
                    .skip(1)
                    .copied()
                    .collect::<Vec<u8>>()
            })
            .find(|nal| nal[0] & 0x1f == 7)
            .expect("an SPS in the first access unit");
        sps
    }

    #[test]
    fn reads_the_vui_openh264_writes() {
        let limited = encoded_sps(EncoderConfig::new().vui(VuiConfig::bt709()));
        assert_eq!(
            sps_color_description(&limited),
            Some(ColorDescription {
                matrix_coefficients: Some(1),
                full_range: false
            })
        );
        let full = encoded_sps(EncoderConfig::new().vui(VuiConfig::bt601().full_range(true)));
        assert_eq!(
            sps_color_description(&full),
            Some(ColorDescription {
                matrix_coefficients: Some(6),
                full_range: true
            })
        );
        let bare = encoded_sps(EncoderConfig::new());
        assert_eq!(
            sps_color_description(&bare),
            Some(ColorDescription::default())
        );
        assert_eq!(sps_color_description(&bare[..3]), None, "truncated SPS");
    }

    #[test]
    fn emulation_prevention_bytes_are_removed() {
        assert_eq!(
            rbsp(&[0x67, 0, 0, 3, 1, 0, 0, 3, 0]),
            vec![0, 0, 1, 0, 0, 0]
        );
    }

    #[test]
    fn length_prefixed_units_become_annexb() {
        let mut out = Vec::new();
        length_prefixed_to_annexb(&[0, 2, 0xaa, 0xbb, 0, 1, 0xcc], 2, &mut out).unwrap();
        assert_eq!(out, [0, 0, 0, 1, 0xaa, 0xbb, 0, 0, 0, 1, 0xcc]);
        let err = length_prefixed_to_annexb(&[0, 9, 0xaa], 2, &mut out).unwrap_err();
        assert!(err.contains("claims 9 bytes"), "{err}");
    }
}
