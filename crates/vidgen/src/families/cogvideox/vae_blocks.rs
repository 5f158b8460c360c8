//! The layers of the CogVideoX VAE (diffusers' `CogVideoXEncoder3D` / `CogVideoXDecoder3D` and
//! their parts).
//!
//! Activations are channels-last, `(B, T, H, W, C)`, as in the Wan VAE: the convs are matmuls
//! over channels. A video is processed in chunks of frames; each causal conv with a temporal
//! kernel keeps the last frames it saw in a [`ConvCache`] slot, visited in the same order on every
//! chunk (the reference's nested `conv_cache` dicts). Everything else — the group norms and the
//! temporal down/up sampling — sees only the current chunk, exactly as in the reference.

use candle_core::{DType, Result, Tensor};
use candle_nn::VarBuilder;

use crate::nn::conv3d::{Conv3d, Padding3d};

/// The frames the causal convs remember between chunks: one slot per temporal conv, in order.
#[derive(Debug, Default)]
pub(crate) struct ConvCache {
    slots: Vec<Option<Tensor>>,
    idx: usize,
}

impl ConvCache {
    /// Rewinds to the first conv, before each chunk.
    pub(crate) fn start_chunk(&mut self) {
        self.idx = 0;
    }

    fn next_slot(&mut self) -> &mut Option<Tensor> {
        if self.idx == self.slots.len() {
            self.slots.push(None);
        }
        self.idx += 1;
        &mut self.slots[self.idx - 1]
    }
}

/// `CogVideoXCausalConv3d` (stride 1, `pad_mode="first"`/`"constant"`): zero padding in space,
/// and in time the `kt - 1` frames before the chunk — the previous chunk's last frames, or on the
/// first chunk copies of the first frame (not zeros, unlike Wan).
#[derive(Clone, Debug)]
pub(crate) struct CausalConv3d {
    conv: Conv3d,
}

impl CausalConv3d {
    /// Loads `conv.weight` `(C_out, C_in, k, k, k)` and `conv.bias` from `vb`.
    pub(crate) fn load(vb: VarBuilder, c_in: usize, c_out: usize, k: usize) -> Result<Self> {
        let p = (k - 1) / 2;
        let conv = Conv3d::load(vb.pp("conv"), c_in, c_out, (k, k, k), (1, 1, 1), (0, p, p))?;
        Ok(Self { conv })
    }

    /// `(B, T, H, W, C_in)` -> `(B, T, H, W, C_out)`; a temporal kernel takes one cache slot.
    pub(crate) fn forward(&self, x: &Tensor, cache: &mut ConvCache) -> Result<Tensor> {
        let (kt, kh, kw) = self.conv.kernel();
        let pad = Padding3d {
            t: (0, 0),
            h: ((kh - 1) / 2, (kh - 1) / 2),
            w: ((kw - 1) / 2, (kw - 1) / 2),
        };
        if kt == 1 {
            // the reference caches the whole input here but never reads it back
            return self.conv.forward_cl_padded(&[x], pad);
        }
        let slot = cache.next_slot();
        let first = x.narrow(1, 0, 1)?;
        let mut parts: Vec<&Tensor> = match slot.as_ref() {
            Some(prev) => vec![prev],
            None => vec![&first; kt - 1],
        };
        parts.push(x);
        let y = self.conv.forward_cl_padded(&parts, pad)?;
        let tail = last_frames(&parts, kt - 1)?;
        *slot = Some(tail);
        Ok(y)
    }
}

/// The last `n` frames of the time-concatenation of `parts` (each `(B, T_i, H, W, C)`), copied.
fn last_frames(parts: &[&Tensor], n: usize) -> Result<Tensor> {
    let mut tail = Vec::new();
    let mut need = n;
    for p in parts.iter().rev() {
        if need == 0 {
            break;
        }
        let t = p.dim(1)?;
        let take = need.min(t);
        tail.push(p.narrow(1, t - take, take)?);
        need -= take;
    }
    tail.reverse();
    Tensor::cat(&tail, 1)?.contiguous()
}

/// `nn.GroupNorm` with affine weights over channels-last `(B, T, H, W, C)`: statistics per batch
/// element and group of `C / G` channels, over all frames of the chunk. Computed in f32 with
/// f64 sums.
#[derive(Clone, Debug)]
pub(crate) struct GroupNorm {
    /// `(C,)` f32.
    weight: Tensor,
    bias: Tensor,
    groups: usize,
    eps: f64,
}

impl GroupNorm {
    pub(crate) fn load(vb: VarBuilder, channels: usize, groups: usize, eps: f64) -> Result<Self> {
        if groups == 0 || !channels.is_multiple_of(groups) {
            candle_core::bail!("group norm: {channels} channels do not split into {groups} groups")
        }
        Ok(Self {
            weight: vb.get(channels, "weight")?.to_dtype(DType::F32)?,
            bias: vb.get(channels, "bias")?.to_dtype(DType::F32)?,
            groups,
            eps,
        })
    }

    pub(crate) fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (b, t, h, w, c) = x.dims5()?;
        let (g, n) = (self.groups, t * h * w);
        let count = (n * (c / g)) as f64;
        // b t h w (g cg) -> b (t h w) g cg
        let xf = x.to_dtype(DType::F32)?.reshape((b, n, g, c / g))?;
        // sums over the group's channels in f32, over the pixels in f64
        let group_mean = |v: &Tensor| -> Result<Tensor> {
            let s = v.sum_keepdim(3)?.to_dtype(DType::F64)?.sum_keepdim(1)?;
            (s / count)?.to_dtype(DType::F32)
        };
        let mean = group_mean(&xf)?; // (B, 1, G, 1)
        let var = group_mean(&xf.broadcast_sub(&mean)?.sqr()?)?;
        // as PyTorch's CPU kernel: y = x * a + (beta - mean * a) with a = gamma / sqrt(var + eps)
        let rstd = (var + self.eps)?.sqrt()?.recip()?;
        let a = self
            .weight
            .reshape((1, 1, g, c / g))?
            .broadcast_mul(&rstd)?;
        let shift = self
            .bias
            .reshape((1, 1, g, c / g))?
            .broadcast_sub(&mean.broadcast_mul(&a)?)?;
        xf.broadcast_mul(&a)?
            .broadcast_add(&shift)?
            .reshape((b, t, h, w, c))?
            .to_dtype(x.dtype())
    }
}

/// Nearest-neighbour resize of `(B, T, H, W, C)` to `(B, t, h, w, C)`, as `F.interpolate(size=…)`
/// (source index `floor(i · in / out)`).
fn resize_nearest(x: &Tensor, (t, h, w): (usize, usize, usize)) -> Result<Tensor> {
    let mut x = x.clone();
    for (dim, out) in [(1, t), (2, h), (3, w)] {
        let len = x.dim(dim)?;
        if len == out {
            continue;
        }
        let idx: Vec<u32> = (0..out).map(|i| (i * len / out) as u32).collect();
        let idx = Tensor::from_vec(idx, out, x.device())?;
        x = x.index_select(&idx, dim)?;
    }
    Ok(x)
}

/// `CogVideoXSpatialNorm3D`: group norm of `f` scaled and shifted by 1x1 convs of the latents
/// `zq`, resized to `f`'s frames and pixels (the first frame on its own when `f` has an odd
/// number of frames > 1, as the reference does).
#[derive(Clone, Debug)]
pub(crate) struct SpatialNorm3d {
    norm_layer: GroupNorm,
    conv_y: CausalConv3d,
    conv_b: CausalConv3d,
}

impl SpatialNorm3d {
    pub(crate) fn load(
        vb: VarBuilder,
        f_channels: usize,
        zq_channels: usize,
        groups: usize,
    ) -> Result<Self> {
        Ok(Self {
            // the reference fixes this eps, whatever the config's norm_eps
            norm_layer: GroupNorm::load(vb.pp("norm_layer"), f_channels, groups, 1e-6)?,
            conv_y: CausalConv3d::load(vb.pp("conv_y"), zq_channels, f_channels, 1)?,
            conv_b: CausalConv3d::load(vb.pp("conv_b"), zq_channels, f_channels, 1)?,
        })
    }

    /// `f` `(B, T, H, W, C)`, `zq` `(B, T_z, h, w, C_z)` -> `(B, T, H, W, C)`.
    pub(crate) fn forward(&self, f: &Tensor, zq: &Tensor, cache: &mut ConvCache) -> Result<Tensor> {
        let t = f.dim(1)?;
        // the convs are 1x1x1, so they commute with the nearest resize: run them at latent size
        let y = self.conv_y.forward(zq, cache)?;
        let b = self.conv_b.forward(zq, cache)?;
        let normed = self.norm_layer.forward(f)?;
        if t > 1 && t % 2 == 1 {
            let tz = zq.dim(1)?;
            let first = scale_shift_nearest(
                &normed.narrow(1, 0, 1)?,
                &y.narrow(1, 0, 1)?,
                &b.narrow(1, 0, 1)?,
            )?;
            let rest = scale_shift_nearest(
                &normed.narrow(1, 1, t - 1)?,
                &y.narrow(1, 1, tz - 1)?,
                &b.narrow(1, 1, tz - 1)?,
            )?;
            Tensor::cat(&[first, rest], 1)
        } else {
            scale_shift_nearest(&normed, &y, &b)
        }
    }
}

/// `x * resize(y) + resize(b)` with `x` `(B, T, H, W, C)` and `y`, `b` `(B, t, h, w, C)` resized
/// nearest-neighbour to `x`'s size. For whole ratios (always, in this VAE) the resize is a
/// broadcast over the repeated axes and never materialised.
fn scale_shift_nearest(x: &Tensor, y: &Tensor, b: &Tensor) -> Result<Tensor> {
    let (bs, t, h, w, c) = x.dims5()?;
    let (_, tz, hz, wz, _) = y.dims5()?;
    if t % tz != 0 || h % hz != 0 || w % wz != 0 {
        let size = (t, h, w);
        return (x * resize_nearest(y, size)?)? + resize_nearest(b, size)?;
    }
    // b (tz rt) (hz rh) (wz rw) c -> (b tz) rt hz rh wz rw c; y, b: (b tz) 1 hz 1 wz 1 c
    let xs = x.reshape(vec![bs * tz, t / tz, hz, h / hz, wz, w / wz, c])?;
    let small = vec![bs * tz, 1, hz, 1, wz, 1, c];
    xs.broadcast_mul(&y.reshape(small.clone())?)?
        .broadcast_add(&b.reshape(small)?)?
        .reshape((bs, t, h, w, c))
}

/// The norm of a resnet: a plain group norm (encoder) or a spatial norm on the latents (decoder).
#[derive(Clone, Debug)]
pub(crate) enum Norm {
    Group(GroupNorm),
    Spatial(SpatialNorm3d),
}

impl Norm {
    fn forward(&self, x: &Tensor, zq: Option<&Tensor>, cache: &mut ConvCache) -> Result<Tensor> {
        match (self, zq) {
            (Norm::Group(n), _) => n.forward(x),
            (Norm::Spatial(n), Some(zq)) => n.forward(x, zq, cache),
            (Norm::Spatial(_), None) => candle_core::bail!("spatial norm needs the latents"),
        }
    }
}

/// Sizes shared by every norm of one encoder or decoder.
#[derive(Clone, Copy, Debug)]
pub(crate) struct NormSpec {
    pub groups: usize,
    /// `norm_eps` of the config (group norms of the encoder's resnets).
    pub eps: f64,
    /// Latent channels for the decoder's spatial norms; `None` in the encoder.
    pub zq_channels: Option<usize>,
}

impl NormSpec {
    fn load(&self, vb: VarBuilder, channels: usize) -> Result<Norm> {
        Ok(match self.zq_channels {
            Some(zq) => Norm::Spatial(SpatialNorm3d::load(vb, channels, zq, self.groups)?),
            None => Norm::Group(GroupNorm::load(vb, channels, self.groups, self.eps)?),
        })
    }
}

/// `CogVideoXResnetBlock3D` without time embedding: (norm, SiLU, causal 3x3x3 conv) twice plus a
/// shortcut (a 1x1x1 conv when the channel count changes).
#[derive(Clone, Debug)]
pub(crate) struct ResnetBlock3d {
    norm1: Norm,
    conv1: CausalConv3d,
    norm2: Norm,
    conv2: CausalConv3d,
    conv_shortcut: Option<Conv3d>,
}

impl ResnetBlock3d {
    pub(crate) fn load(vb: VarBuilder, c_in: usize, c_out: usize, norm: &NormSpec) -> Result<Self> {
        let conv_shortcut = (c_in != c_out)
            .then(|| {
                Conv3d::load(
                    vb.pp("conv_shortcut"),
                    c_in,
                    c_out,
                    (1, 1, 1),
                    (1, 1, 1),
                    (0, 0, 0),
                )
            })
            .transpose()?;
        Ok(Self {
            norm1: norm.load(vb.pp("norm1"), c_in)?,
            conv1: CausalConv3d::load(vb.pp("conv1"), c_in, c_out, 3)?,
            norm2: norm.load(vb.pp("norm2"), c_out)?,
            conv2: CausalConv3d::load(vb.pp("conv2"), c_out, c_out, 3)?,
            conv_shortcut,
        })
    }

    /// `(B, T, H, W, C_in)` -> `(B, T, H, W, C_out)`; `zq` are the decoder's latents.
    pub(crate) fn forward(
        &self,
        x: &Tensor,
        zq: Option<&Tensor>,
        cache: &mut ConvCache,
    ) -> Result<Tensor> {
        let h = self.norm1.forward(x, zq, cache)?.silu()?;
        let h = self.conv1.forward(&h, cache)?;
        let h = self.norm2.forward(&h, zq, cache)?.silu()?;
        // dropout is the identity at inference
        let h = self.conv2.forward(&h, cache)?;
        let shortcut = match &self.conv_shortcut {
            Some(conv) => conv.forward_cl(x)?,
            None => x.clone(),
        };
        h + shortcut
    }
}

/// `CogVideoXDownsample3D`: optionally halves time by averaging frame pairs (an odd first frame
/// is kept alone), then halves H and W with a stride-2 3x3 conv after one zero row and column.
#[derive(Clone, Debug)]
pub(crate) struct Downsample3d {
    conv: Conv3d,
    compress_time: bool,
}

impl Downsample3d {
    pub(crate) fn load(vb: VarBuilder, channels: usize, compress_time: bool) -> Result<Self> {
        Ok(Self {
            conv: Conv3d::load_2d(vb.pp("conv"), channels, channels, 3, 2, 0)?,
            compress_time,
        })
    }

    /// `(B, T, H, W, C)` -> `(B, T', ⌊H/2⌋, ⌊W/2⌋, C)`, `T' = T` or (compressing) `⌈T/2⌉`.
    pub(crate) fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let x = if self.compress_time {
            let (b, t, h, w, c) = x.dims5()?;
            let odd = t % 2;
            let pairs = (t - odd) / 2;
            let mut parts = Vec::with_capacity(2);
            if odd == 1 {
                parts.push(x.narrow(1, 0, 1)?);
            }
            if pairs > 0 {
                // b (p 2) h w c -> b p 2 (h w c), mean over the pair
                let rest = x
                    .narrow(1, odd, 2 * pairs)?
                    .reshape((b, pairs, 2, h * w * c))?;
                parts.push((rest.sum(2)? * 0.5)?.reshape((b, pairs, h, w, c))?);
            }
            Tensor::cat(&parts, 1)?
        } else {
            x.clone()
        };
        // F.pad(x, (0, 1, 0, 1)): one zero column right, one zero row below
        let pad = Padding3d {
            t: (0, 0),
            h: (0, 1),
            w: (0, 1),
        };
        self.conv.forward_cl_padded(&[&x], pad)
    }
}

/// `CogVideoXUpsample3D`: nearest 2x in H and W — and in time when compressing, except that the
/// first of an odd number of frames (> 1) stays one frame — then a 3x3 conv per frame.
#[derive(Clone, Debug)]
pub(crate) struct Upsample3d {
    conv: Conv3d,
    compress_time: bool,
}

impl Upsample3d {
    pub(crate) fn load(vb: VarBuilder, channels: usize, compress_time: bool) -> Result<Self> {
        Ok(Self {
            conv: Conv3d::load_2d(vb.pp("conv"), channels, channels, 3, 1, 1)?,
            compress_time,
        })
    }

    /// `(B, T, H, W, C)` -> `(B, T', 2H, 2W, C)`; compressing, `T' = 2T - (T mod 2)` for `T > 1`.
    pub(crate) fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (_, t, h, w, _) = x.dims5()?;
        let x = match (self.compress_time, t) {
            (true, t) if t > 1 && t % 2 == 1 => {
                let first = resize_nearest(&x.narrow(1, 0, 1)?, (1, 2 * h, 2 * w))?;
                let rest = resize_nearest(&x.narrow(1, 1, t - 1)?, (2 * (t - 1), 2 * h, 2 * w))?;
                Tensor::cat(&[first, rest], 1)?
            }
            (true, t) if t > 1 => resize_nearest(x, (2 * t, 2 * h, 2 * w))?,
            _ => resize_nearest(x, (t, 2 * h, 2 * w))?,
        };
        self.conv.forward_cl(&x)
    }
}

/// The sizes the encoder and decoder are built from (the VAE config's).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Dims<'a> {
    /// Video channels (in for the encoder, out for the decoder).
    pub video_channels: usize,
    pub latent_channels: usize,
    pub block_out_channels: &'a [usize],
    pub layers_per_block: usize,
    pub groups: usize,
    pub norm_eps: f64,
    /// Leading stages whose down/up sampler also halves/doubles time (`log2` of the ratio).
    pub temporal_levels: usize,
}

/// One encoder stage (`CogVideoXDownBlock3D`).
#[derive(Clone, Debug)]
struct DownBlock3d {
    resnets: Vec<ResnetBlock3d>,
    downsampler: Option<Downsample3d>,
}

/// `CogVideoXEncoder3D`: video chunk `(B, F_c, H, W, C_in)` -> moments `(B, T_c, h, w, 2 Z)`.
#[derive(Clone, Debug)]
pub(crate) struct Encoder3d {
    conv_in: CausalConv3d,
    down_blocks: Vec<DownBlock3d>,
    mid_block: Vec<ResnetBlock3d>,
    norm_out: GroupNorm,
    conv_out: CausalConv3d,
}

impl Encoder3d {
    pub(crate) fn load(vb: VarBuilder, d: &Dims) -> Result<Self> {
        let ch = d.block_out_channels;
        let norm = NormSpec {
            groups: d.groups,
            eps: d.norm_eps,
            zq_channels: None,
        };
        let mut down_blocks = Vec::with_capacity(ch.len());
        let mut c_prev = ch[0];
        for (i, &c) in ch.iter().enumerate() {
            let vb = vb.pp("down_blocks").pp(i);
            let resnets = (0..d.layers_per_block)
                .map(|j| {
                    ResnetBlock3d::load(
                        vb.pp("resnets").pp(j),
                        if j == 0 { c_prev } else { c },
                        c,
                        &norm,
                    )
                })
                .collect::<Result<Vec<_>>>()?;
            let downsampler = (i + 1 < ch.len())
                .then(|| Downsample3d::load(vb.pp("downsamplers.0"), c, i < d.temporal_levels))
                .transpose()?;
            down_blocks.push(DownBlock3d {
                resnets,
                downsampler,
            });
            c_prev = c;
        }
        let c_mid = ch[ch.len() - 1];
        let mid_block = (0..2)
            .map(|j| ResnetBlock3d::load(vb.pp("mid_block.resnets").pp(j), c_mid, c_mid, &norm))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            conv_in: CausalConv3d::load(vb.pp("conv_in"), d.video_channels, ch[0], 3)?,
            down_blocks,
            mid_block,
            // the reference fixes this eps
            norm_out: GroupNorm::load(vb.pp("norm_out"), c_mid, d.groups, 1e-6)?,
            conv_out: CausalConv3d::load(vb.pp("conv_out"), c_mid, 2 * d.latent_channels, 3)?,
        })
    }

    pub(crate) fn forward(&self, x: &Tensor, cache: &mut ConvCache) -> Result<Tensor> {
        // 1. down
        let mut h = self.conv_in.forward(x, cache)?;
        for block in &self.down_blocks {
            for resnet in &block.resnets {
                h = resnet.forward(&h, None, cache)?;
            }
            if let Some(down) = &block.downsampler {
                h = down.forward(&h)?;
            }
        }
        // 2. mid
        for resnet in &self.mid_block {
            h = resnet.forward(&h, None, cache)?;
        }
        // 3. out
        let h = self.norm_out.forward(&h)?.silu()?;
        self.conv_out.forward(&h, cache)
    }
}

/// One decoder stage (`CogVideoXUpBlock3D`).
#[derive(Clone, Debug)]
struct UpBlock3d {
    resnets: Vec<ResnetBlock3d>,
    upsampler: Option<Upsample3d>,
}

/// `CogVideoXDecoder3D`: latent chunk `(B, T_c, h, w, Z)` -> video `(B, F_c, H, W, C_out)`; every
/// norm is a spatial norm conditioned on the chunk's latents.
#[derive(Clone, Debug)]
pub(crate) struct Decoder3d {
    conv_in: CausalConv3d,
    mid_block: Vec<ResnetBlock3d>,
    up_blocks: Vec<UpBlock3d>,
    norm_out: SpatialNorm3d,
    conv_out: CausalConv3d,
}

impl Decoder3d {
    pub(crate) fn load(vb: VarBuilder, d: &Dims) -> Result<Self> {
        let ch: Vec<usize> = d.block_out_channels.iter().rev().copied().collect();
        let z = d.latent_channels;
        let norm = NormSpec {
            groups: d.groups,
            eps: d.norm_eps,
            zq_channels: Some(z),
        };
        let mid_block = (0..2)
            .map(|j| ResnetBlock3d::load(vb.pp("mid_block.resnets").pp(j), ch[0], ch[0], &norm))
            .collect::<Result<Vec<_>>>()?;
        let mut up_blocks = Vec::with_capacity(ch.len());
        let mut c_prev = ch[0];
        for (i, &c) in ch.iter().enumerate() {
            let vb = vb.pp("up_blocks").pp(i);
            let resnets = (0..d.layers_per_block + 1)
                .map(|j| {
                    ResnetBlock3d::load(
                        vb.pp("resnets").pp(j),
                        if j == 0 { c_prev } else { c },
                        c,
                        &norm,
                    )
                })
                .collect::<Result<Vec<_>>>()?;
            let upsampler = (i + 1 < ch.len())
                .then(|| Upsample3d::load(vb.pp("upsamplers.0"), c, i < d.temporal_levels))
                .transpose()?;
            up_blocks.push(UpBlock3d { resnets, upsampler });
            c_prev = c;
        }
        let c_last = ch[ch.len() - 1];
        Ok(Self {
            conv_in: CausalConv3d::load(vb.pp("conv_in"), z, ch[0], 3)?,
            mid_block,
            up_blocks,
            norm_out: SpatialNorm3d::load(vb.pp("norm_out"), c_last, z, d.groups)?,
            conv_out: CausalConv3d::load(vb.pp("conv_out"), c_last, d.video_channels, 3)?,
        })
    }

    pub(crate) fn forward(&self, z: &Tensor, cache: &mut ConvCache) -> Result<Tensor> {
        let mut h = self.conv_in.forward(z, cache)?;
        // 1. mid
        for resnet in &self.mid_block {
            h = resnet.forward(&h, Some(z), cache)?;
        }
        // 2. up
        for block in &self.up_blocks {
            for resnet in &block.resnets {
                h = resnet.forward(&h, Some(z), cache)?;
            }
            if let Some(up) = &block.upsampler {
                h = up.forward(&h)?;
            }
        }
        // 3. out
        let h = self.norm_out.forward(&h, z, cache)?.silu()?;
        self.conv_out.forward(&h, cache)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn max_diff(a: &Tensor, b: &Tensor) -> Result<f32> {
        (a - b)?.abs()?.max_all()?.to_scalar::<f32>()
    }

    #[test]
    fn broadcast_scale_shift_equals_materialised_resize() -> Result<()> {
        let dev = Device::Cpu;
        let x = Tensor::randn(0f32, 1., (2, 4, 4, 6, 3), &dev)?;
        let y = Tensor::randn(0f32, 1., (2, 2, 2, 3, 3), &dev)?;
        let b = Tensor::randn(0f32, 1., (2, 2, 2, 3, 3), &dev)?;
        let got = scale_shift_nearest(&x, &y, &b)?;
        let size = (4, 4, 6);
        let want = ((&x * resize_nearest(&y, size)?)? + resize_nearest(&b, size)?)?;
        assert!(max_diff(&got, &want)? == 0.0);
        // nearest picks floor(i * in / out): frame 3 of 4 reads frame 1 of 2
        let r = resize_nearest(&y, size)?;
        assert!(max_diff(&r.narrow(1, 3, 1)?, &r.narrow(1, 2, 1)?)? == 0.0);
        assert!(max_diff(&r.narrow(1, 2, 1)?, &r.narrow(1, 1, 1)?)? > 0.0);
        Ok(())
    }

    #[test]
    fn causal_conv_in_chunks_equals_one_pass_with_first_frame_padding() -> Result<()> {
        let dev = Device::Cpu;
        let weight = Tensor::randn(0f32, 0.2, (4, 3, 3, 3, 3), &dev)?;
        let conv = CausalConv3d {
            conv: Conv3d::new(weight, None, (1, 1, 1), (0, 1, 1))?,
        };
        let x = Tensor::randn(0f32, 1., (1, 7, 5, 6, 3), &dev)?; // (B, T, H, W, C)
        let whole = conv.forward(&x, &mut ConvCache::default())?;
        // one pass = the conv over [x0, x0, x] without temporal padding
        let first = x.narrow(1, 0, 1)?;
        let pad = Padding3d {
            t: (0, 0),
            h: (1, 1),
            w: (1, 1),
        };
        let want = conv.conv.forward_cl_padded(&[&first, &first, &x], pad)?;
        assert!(max_diff(&whole, &want)? <= 1e-5);
        let mut cache = ConvCache::default();
        let mut outs = Vec::new();
        for (start, len) in [(0, 3), (3, 2), (5, 1), (6, 1)] {
            cache.start_chunk();
            outs.push(conv.forward(&x.narrow(1, start, len)?, &mut cache)?);
        }
        assert!(max_diff(&Tensor::cat(&outs, 1)?, &whole)? <= 1e-5);
        Ok(())
    }
}
