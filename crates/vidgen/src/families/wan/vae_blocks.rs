//! The layers of the Wan VAE (diffusers' `WanEncoder3d` / `WanDecoder3d` and their parts).
//!
//! Everything here works on channels-last activations `(B, T, H, W, C)`: the causal convs are
//! matmuls over channels, and the RMS norm reduces over the contiguous last axis. The frame cache
//! that lets a video be processed chunk by chunk is [`FeatCache`]; each causal conv takes the next
//! slot in the same order as the reference's `feat_idx`.

use candle_core::{DType, Result, Tensor};
use candle_nn::VarBuilder;

use super::vae_ops::{add_inplace, silu_inplace};
use super::vae_resample::{Resample, ResampleMode};
use crate::nn::attention::softmax_last_dim;
use crate::nn::conv3d::{next_cache, CausalConv3d};

/// What one causal conv remembers between chunks (an entry of the reference's `feat_cache`).
#[derive(Clone, Debug, Default)]
pub(crate) enum Slot {
    /// First chunk: nothing seen yet.
    #[default]
    Empty,
    /// An `upsample3d` block that has seen its first chunk (which it passes through unchanged).
    Rep,
    /// The last input frames, `(B, T_c, H, W, C)`.
    Frames(Tensor),
}

/// The frame cache of one chunked pass over a video: one slot per causal conv, visited in order.
#[derive(Debug, Default)]
pub(crate) struct FeatCache {
    slots: Vec<Slot>,
    idx: usize,
}

impl FeatCache {
    /// Rewinds to the first conv, before each chunk.
    pub(crate) fn start_chunk(&mut self) {
        self.idx = 0;
    }

    /// Where the next conv's slot is, for [`Self::rewind_to`].
    pub(crate) fn position(&self) -> usize {
        self.idx
    }

    /// Makes slot `position` the next again: to run the same convs once per frame of a chunk.
    pub(crate) fn rewind_to(&mut self, position: usize) {
        self.idx = position;
    }

    /// The next conv's slot.
    pub(crate) fn next_slot(&mut self) -> &mut Slot {
        if self.idx == self.slots.len() {
            self.slots.push(Slot::Empty);
        }
        self.idx += 1;
        &mut self.slots[self.idx - 1]
    }

    /// Runs a causal conv on chunk `x` with the cached frames in front, and caches `x`'s tail.
    pub(crate) fn conv(&mut self, conv: &CausalConv3d, x: &Tensor) -> Result<Tensor> {
        let slot = self.next_slot();
        let prev = match slot {
            Slot::Frames(t) => Some(t.clone()),
            _ => None,
        };
        let y = conv.forward_cl(x, prev.as_ref())?;
        *slot = Slot::Frames(next_cache(x, prev.as_ref())?);
        Ok(y)
    }
}

/// `WanRMS_norm`: `F.normalize` over channels times `sqrt(C)` and `gamma` (no bias in this VAE).
/// Half-precision inputs are normalised in f32 as in the reference (the gain too, here).
#[derive(Clone, Debug)]
pub(crate) struct RmsNorm {
    /// `(C,)`, f32.
    gamma: Tensor,
}

impl RmsNorm {
    /// `gamma` is stored `(C, 1, 1, 1)` (video) or `(C, 1, 1)` (image) in the checkpoint.
    fn load(vb: VarBuilder, dim: usize, images: bool) -> Result<Self> {
        let gamma = if images {
            vb.get((dim, 1, 1), "gamma")?
        } else {
            vb.get((dim, 1, 1, 1), "gamma")?
        };
        Ok(Self {
            gamma: gamma.flatten_all()?.to_dtype(DType::F32)?,
        })
    }

    /// `(..., C)` -> `(..., C)`.
    ///
    /// `x / max(|x|, 1e-12) * sqrt(C)` is `x / sqrt(mean(x^2))`; a tiny epsilon keeps all-zero
    /// pixels at zero as the reference's clamp does.
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let xf = x.to_dtype(DType::F32)?;
        let normed = if xf.track_op() || self.gamma.track_op() {
            // the fused kernel has no backward pass
            candle_nn::ops::rms_norm_slow(&xf, &self.gamma, 1e-30)?
        } else {
            candle_nn::ops::rms_norm(&xf, &self.gamma, 1e-30)?
        };
        normed.to_dtype(x.dtype())
    }
}

/// `WanResidualBlock`: two (RMS norm, SiLU, causal 3x3x3 conv) steps plus a shortcut.
#[derive(Clone, Debug)]
pub(crate) struct ResidualBlock {
    norm1: RmsNorm,
    conv1: CausalConv3d,
    norm2: RmsNorm,
    conv2: CausalConv3d,
    /// 1x1x1 conv when the channel count changes.
    conv_shortcut: Option<CausalConv3d>,
}

impl ResidualBlock {
    pub(crate) fn load(vb: VarBuilder, in_dim: usize, out_dim: usize) -> Result<Self> {
        let conv3 =
            |vb, c_in, c_out| CausalConv3d::load(vb, c_in, c_out, (3, 3, 3), (1, 1, 1), (1, 1, 1));
        let conv_shortcut = if in_dim != out_dim {
            Some(CausalConv3d::load(
                vb.pp("conv_shortcut"),
                in_dim,
                out_dim,
                (1, 1, 1),
                (1, 1, 1),
                (0, 0, 0),
            )?)
        } else {
            None
        };
        Ok(Self {
            norm1: RmsNorm::load(vb.pp("norm1"), in_dim, false)?,
            conv1: conv3(vb.pp("conv1"), in_dim, out_dim)?,
            norm2: RmsNorm::load(vb.pp("norm2"), out_dim, false)?,
            conv2: conv3(vb.pp("conv2"), out_dim, out_dim)?,
            conv_shortcut,
        })
    }

    /// `(B, T, H, W, C_in)` -> `(B, T, H, W, C_out)`; uses two cache slots.
    pub(crate) fn forward(&self, x: &Tensor, cache: &mut FeatCache) -> Result<Tensor> {
        let shortcut = match &self.conv_shortcut {
            Some(conv) => conv.forward_cl(x, None)?,
            None => x.clone(),
        };
        // norm and conv outputs are fresh tensors: SiLU and the residual add may reuse them
        let h = silu_inplace(self.norm1.forward(x)?)?;
        let h = cache.conv(&self.conv1, &h)?;
        // dropout is the identity at inference
        let h = silu_inplace(self.norm2.forward(&h)?)?;
        let h = cache.conv(&self.conv2, &h)?;
        add_inplace(h, &shortcut)
    }
}

/// `WanAttentionBlock`: single-head self-attention over the pixels of each frame.
#[derive(Clone, Debug)]
pub(crate) struct AttentionBlock {
    norm: RmsNorm,
    /// `(C, 3C)`: the 1x1 `to_qkv` conv as a matmul on channels-last pixels.
    to_qkv_w: Tensor,
    to_qkv_b: Tensor,
    /// `(C, C)`.
    proj_w: Tensor,
    proj_b: Tensor,
}

impl AttentionBlock {
    pub(crate) fn load(vb: VarBuilder, dim: usize) -> Result<Self> {
        let linear = |vb: VarBuilder, c_out: usize| -> Result<(Tensor, Tensor)> {
            // (C_out, C_in, 1, 1) -> (C_in, C_out)
            let w = vb
                .get((c_out, dim, 1, 1), "weight")?
                .reshape((c_out, dim))?
                .t()?
                .contiguous()?;
            Ok((w, vb.get(c_out, "bias")?))
        };
        let (to_qkv_w, to_qkv_b) = linear(vb.pp("to_qkv"), 3 * dim)?;
        let (proj_w, proj_b) = linear(vb.pp("proj"), dim)?;
        Ok(Self {
            norm: RmsNorm::load(vb.pp("norm"), dim, true)?,
            to_qkv_w,
            to_qkv_b,
            proj_w,
            proj_b,
        })
    }

    /// `(B, T, H, W, C)` -> `(B, T, H, W, C)`; frames attend only to themselves.
    pub(crate) fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (b, t, h, w, c) = x.dims5()?;
        let n = h * w;
        let scale = 1.0 / (c as f64).sqrt();
        let normed = self.norm.forward(x)?.reshape((b * t, n, c))?;
        // one frame at a time bounds the (N, N) score matrix
        let frames = (0..b * t)
            .map(|i| {
                let xi = normed.get(i)?; // (N, C)
                let qkv = xi.matmul(&self.to_qkv_w)?.broadcast_add(&self.to_qkv_b)?; // (N, 3C)
                let q = qkv.narrow(1, 0, c)?.contiguous()?;
                let k = qkv.narrow(1, c, c)?.t()?.contiguous()?; // (C, N)
                let v = qkv.narrow(1, 2 * c, c)?.contiguous()?;
                let attn = softmax_last_dim(&(q.matmul(&k)? * scale)?)?; // (N, N)
                attn.matmul(&v)?
                    .matmul(&self.proj_w)?
                    .broadcast_add(&self.proj_b)
            })
            .collect::<Result<Vec<_>>>()?;
        Tensor::stack(&frames, 0)?.reshape((b, t, h, w, c))? + x
    }
}

/// `WanMidBlock`: residual block, attention, residual block.
#[derive(Clone, Debug)]
pub(crate) struct MidBlock {
    resnets: [ResidualBlock; 2],
    attention: AttentionBlock,
}

impl MidBlock {
    pub(crate) fn load(vb: VarBuilder, dim: usize) -> Result<Self> {
        Ok(Self {
            resnets: [
                ResidualBlock::load(vb.pp("resnets.0"), dim, dim)?,
                ResidualBlock::load(vb.pp("resnets.1"), dim, dim)?,
            ],
            attention: AttentionBlock::load(vb.pp("attentions.0"), dim)?,
        })
    }

    /// `(B, T, H, W, C)` -> same shape.
    pub(crate) fn forward(&self, x: &Tensor, cache: &mut FeatCache) -> Result<Tensor> {
        let x = self.resnets[0].forward(x, cache)?;
        let x = self.attention.forward(&x)?;
        self.resnets[1].forward(&x, cache)
    }
}

/// One entry of the encoder's flat `down_blocks` list.
#[derive(Clone, Debug)]
pub(crate) enum DownLayer {
    Residual(ResidualBlock),
    Attention(AttentionBlock),
    Resample(Resample),
}

/// `WanEncoder3d` (Wan2.1 layout): conv_in, residual (+attention) and downsampling layers, mid
/// block, RMS norm, SiLU, conv_out to `2 Z` channels (mean and log-variance).
#[derive(Clone, Debug)]
pub(crate) struct Encoder3d {
    conv_in: CausalConv3d,
    down_blocks: Vec<DownLayer>,
    mid_block: MidBlock,
    norm_out: RmsNorm,
    conv_out: CausalConv3d,
}

/// The encoder's and decoder's sizes, from the VAE config.
pub(crate) struct Dims<'a> {
    pub in_channels: usize,
    pub base: usize,
    pub z: usize,
    pub dim_mult: &'a [usize],
    pub num_res_blocks: usize,
    pub attn_scales: &'a [f64],
    /// Per stage but the last: does it halve (encoder) / double (decoder) the frames?
    pub temporal: &'a [bool],
}

impl Encoder3d {
    pub(crate) fn load(vb: VarBuilder, d: &Dims) -> Result<Self> {
        let conv3 =
            |vb, c_in, c_out| CausalConv3d::load(vb, c_in, c_out, (3, 3, 3), (1, 1, 1), (1, 1, 1));
        let dims: Vec<usize> = std::iter::once(1)
            .chain(d.dim_mult.iter().copied())
            .map(|m| m * d.base)
            .collect();
        let mut down_blocks = Vec::new();
        let mut scale = 1.0;
        let vbd = vb.pp("down_blocks");
        for (i, pair) in dims.windows(2).enumerate() {
            let (mut in_dim, out_dim) = (pair[0], pair[1]);
            for _ in 0..d.num_res_blocks {
                let idx = down_blocks.len();
                down_blocks.push(DownLayer::Residual(ResidualBlock::load(
                    vbd.pp(idx),
                    in_dim,
                    out_dim,
                )?));
                if d.attn_scales.contains(&scale) {
                    let idx = down_blocks.len();
                    down_blocks.push(DownLayer::Attention(AttentionBlock::load(
                        vbd.pp(idx),
                        out_dim,
                    )?));
                }
                in_dim = out_dim;
            }
            if i != d.dim_mult.len() - 1 {
                let mode = if d.temporal[i] {
                    ResampleMode::Downsample3d
                } else {
                    ResampleMode::Downsample2d
                };
                let idx = down_blocks.len();
                down_blocks.push(DownLayer::Resample(Resample::load(
                    vbd.pp(idx),
                    out_dim,
                    mode,
                )?));
                scale /= 2.0;
            }
        }
        let out_dim = *dims.last().unwrap_or(&d.base);
        Ok(Self {
            conv_in: conv3(vb.pp("conv_in"), d.in_channels, dims[0])?,
            down_blocks,
            mid_block: MidBlock::load(vb.pp("mid_block"), out_dim)?,
            norm_out: RmsNorm::load(vb.pp("norm_out"), out_dim, false)?,
            conv_out: conv3(vb.pp("conv_out"), out_dim, 2 * d.z)?,
        })
    }

    /// One chunk `(B, T, H, W, C_in)` -> `(B, T', H/8, W/8, 2Z)` (`T' = 1` per 1 or 4 frames).
    pub(crate) fn forward(&self, x: &Tensor, cache: &mut FeatCache) -> Result<Tensor> {
        let mut x = cache.conv(&self.conv_in, x)?;
        for layer in &self.down_blocks {
            x = match layer {
                DownLayer::Residual(block) => block.forward(&x, cache)?,
                DownLayer::Attention(block) => block.forward(&x)?,
                DownLayer::Resample(block) => block.forward(&x, cache)?,
            };
        }
        let x = self.mid_block.forward(&x, cache)?;
        let x = silu_inplace(self.norm_out.forward(&x)?)?;
        cache.conv(&self.conv_out, &x)
    }
}

/// `WanUpBlock`: `num_res_blocks + 1` residual blocks, then an optional up-sampler.
#[derive(Clone, Debug)]
pub(crate) struct UpBlock {
    resnets: Vec<ResidualBlock>,
    upsampler: Option<Resample>,
}

impl UpBlock {
    fn forward(&self, x: &Tensor, cache: &mut FeatCache) -> Result<Tensor> {
        let mut x = x.clone();
        for resnet in &self.resnets {
            x = resnet.forward(&x, cache)?;
        }
        match &self.upsampler {
            Some(up) => up.forward(&x, cache),
            None => Ok(x),
        }
    }
}

/// `WanDecoder3d` (Wan2.1 layout): conv_in, mid block, up blocks, RMS norm, SiLU, conv_out.
#[derive(Clone, Debug)]
pub(crate) struct Decoder3d {
    conv_in: CausalConv3d,
    mid_block: MidBlock,
    up_blocks: Vec<UpBlock>,
    norm_out: RmsNorm,
    conv_out: CausalConv3d,
}

impl Decoder3d {
    /// `d.in_channels` is the decoder's output channel count here.
    pub(crate) fn load(vb: VarBuilder, d: &Dims) -> Result<Self> {
        let conv3 =
            |vb, c_in, c_out| CausalConv3d::load(vb, c_in, c_out, (3, 3, 3), (1, 1, 1), (1, 1, 1));
        let last = *d.dim_mult.last().unwrap_or(&1);
        let dims: Vec<usize> = std::iter::once(last)
            .chain(d.dim_mult.iter().rev().copied())
            .map(|m| m * d.base)
            .collect();
        let mut up_blocks = Vec::new();
        for (i, pair) in dims.windows(2).enumerate() {
            // Wan2.1: every up-sampler before this block halved the channels
            let in_dim = if i > 0 { pair[0] / 2 } else { pair[0] };
            let out_dim = pair[1];
            let vbu = vb.pp("up_blocks").pp(i);
            let resnets = (0..=d.num_res_blocks)
                .map(|j| {
                    ResidualBlock::load(
                        vbu.pp("resnets").pp(j),
                        if j == 0 { in_dim } else { out_dim },
                        out_dim,
                    )
                })
                .collect::<Result<Vec<_>>>()?;
            let upsampler = if i != d.dim_mult.len() - 1 {
                let mode = if d.temporal[i] {
                    ResampleMode::Upsample3d
                } else {
                    ResampleMode::Upsample2d
                };
                Some(Resample::load(vbu.pp("upsamplers.0"), out_dim, mode)?)
            } else {
                None
            };
            up_blocks.push(UpBlock { resnets, upsampler });
        }
        let out_dim = *dims.last().unwrap_or(&d.base);
        Ok(Self {
            conv_in: conv3(vb.pp("conv_in"), d.z, dims[0])?,
            mid_block: MidBlock::load(vb.pp("mid_block"), dims[0])?,
            up_blocks,
            norm_out: RmsNorm::load(vb.pp("norm_out"), out_dim, false)?,
            conv_out: conv3(vb.pp("conv_out"), out_dim, d.in_channels)?,
        })
    }

    /// One latent frame `(B, 1, h, w, Z)` -> `(B, F', 8h, 8w, C_out)`: `F' = 1` for the first
    /// chunk, 4 after (with Wan2.1's two temporal up-samplers). Not clamped.
    ///
    /// After the last temporal up-sampler nothing mixes frames except the causal convs, whose
    /// caches carry the frames before: those blocks run one frame at a time (the same
    /// arithmetic, per output frame, as the whole chunk at once), so the largest activations,
    /// at full resolution, are one frame's instead of four.
    pub(crate) fn forward(&self, x: &Tensor, cache: &mut FeatCache) -> Result<Tensor> {
        let x = cache.conv(&self.conv_in, x)?;
        let mut x = self.mid_block.forward(&x, cache)?;
        let split = self
            .up_blocks
            .iter()
            .rposition(|b| b.upsampler.as_ref().is_some_and(Resample::is_temporal))
            .map_or(0, |i| i + 1);
        for block in &self.up_blocks[..split] {
            x = block.forward(&x, cache)?;
        }
        let tail = cache.position();
        let frames = (0..x.dim(1)?)
            .map(|f| {
                cache.rewind_to(tail);
                let mut x = x.narrow(1, f, 1)?.contiguous()?;
                for block in &self.up_blocks[split..] {
                    x = block.forward(&x, cache)?;
                }
                let x = silu_inplace(self.norm_out.forward(&x)?)?;
                cache.conv(&self.conv_out, &x)
            })
            .collect::<Result<Vec<_>>>()?;
        Tensor::cat(&frames, 1)
    }
}
