//! The Wan VAE's resampling blocks (`WanResample`): 2x spatial up/down-sampling, and in the
//! `3d` modes a causal conv over time that doubles / halves the frames, each with the reference's
//! own frame-cache protocol. Channels-last `(B, T, H, W, C)` throughout.

use candle_core::{Result, Tensor};
use candle_nn::VarBuilder;

use super::vae_blocks::{FeatCache, Slot};
use crate::nn::conv3d::{next_cache, CausalConv3d, Conv3d, Padding3d, CACHE_T};

/// The sampling step of a `WanResample` block (its `mode`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ResampleMode {
    Upsample2d,
    Upsample3d,
    Downsample2d,
    Downsample3d,
}

/// `WanResample`: 2x nearest up-sampling + 3x3 conv (halving channels), or zero-pad + stride-2
/// 3x3 conv; the `3d` modes add a causal conv over time that doubles / halves the frames.
#[derive(Clone, Debug)]
pub(crate) struct Resample {
    /// The 2D conv (`resample.1`): after up-sampling, or strided.
    resample: Spatial,
    /// `time_conv`: `(3, 1, 1)` kernel; `C -> 2C` up, stride 2 down.
    time_conv: Option<CausalConv3d>,
}

impl Resample {
    pub(crate) fn load(vb: VarBuilder, dim: usize, mode: ResampleMode) -> Result<Self> {
        let (resample, time_conv) = match mode {
            ResampleMode::Upsample2d | ResampleMode::Upsample3d => {
                let conv = Conv3d::load_2d(vb.pp("resample.1"), dim, dim / 2, 3, 1, 1)?;
                let conv = Spatial::Up(UpsampleConv::new(&conv)?);
                let time = (mode == ResampleMode::Upsample3d)
                    .then(|| {
                        CausalConv3d::load(
                            vb.pp("time_conv"),
                            dim,
                            2 * dim,
                            (3, 1, 1),
                            (1, 1, 1),
                            (1, 0, 0),
                        )
                    })
                    .transpose()?;
                (conv, time)
            }
            ResampleMode::Downsample2d | ResampleMode::Downsample3d => {
                let conv = Spatial::Down(Conv3d::load_2d(vb.pp("resample.1"), dim, dim, 3, 2, 0)?);
                let time = (mode == ResampleMode::Downsample3d)
                    .then(|| {
                        CausalConv3d::load(
                            vb.pp("time_conv"),
                            dim,
                            dim,
                            (3, 1, 1),
                            (2, 1, 1),
                            (0, 0, 0),
                        )
                    })
                    .transpose()?;
                (conv, time)
            }
        };
        Ok(Self {
            resample,
            time_conv,
        })
    }

    /// Whether it changes the frame count (the `3d` modes).
    pub(crate) fn is_temporal(&self) -> bool {
        self.time_conv.is_some()
    }

    /// `(B, T, H, W, C)` -> up: `(B, T', 2H, 2W, C/2)` with `T' = T` on the first chunk and `2T`
    /// after; down: `(B, T', H/2, W/2, C)` with `T' = T` on the first chunk and `T/2` after.
    pub(crate) fn forward(&self, x: &Tensor, cache: &mut FeatCache) -> Result<Tensor> {
        match &self.resample {
            Spatial::Up(up) => {
                let x = match &self.time_conv {
                    Some(time_conv) => upsample_time(time_conv, x, cache)?,
                    None => x.clone(),
                };
                up.forward(&x)
            }
            Spatial::Down(down) => {
                // nn.ZeroPad2d((0, 1, 0, 1)): one zero column right, one zero row below
                let pad = Padding3d {
                    t: (0, 0),
                    h: (0, 1),
                    w: (0, 1),
                };
                let x = down.forward_cl_padded(&[x], pad)?;
                match &self.time_conv {
                    Some(time_conv) => downsample_time(time_conv, &x, cache),
                    None => Ok(x),
                }
            }
        }
    }
}

/// The `upsample3d` time step. The first chunk passes through (one latent frame gives one
/// frame); later chunks go through `time_conv` (zeros in front the first time, cached frames
/// after), whose `2C` outputs are the two frames each input frame becomes.
fn upsample_time(time_conv: &CausalConv3d, x: &Tensor, cache: &mut FeatCache) -> Result<Tensor> {
    let slot = cache.next_slot();
    let y = match std::mem::take(slot) {
        Slot::Empty => {
            *slot = Slot::Rep;
            return Ok(x.clone());
        }
        Slot::Rep => {
            let t = x.dim(1)?;
            let tail = x.narrow(1, t.saturating_sub(CACHE_T), t.min(CACHE_T))?;
            // the reference caches a zero frame in front of a lone frame here
            *slot = Slot::Frames(if t < CACHE_T {
                Tensor::cat(&[&tail.zeros_like()?, &tail], 1)?
            } else {
                tail.force_contiguous()?
            });
            time_conv.forward_cl(x, None)?
        }
        Slot::Frames(prev) => {
            *slot = Slot::Frames(next_cache(x, Some(&prev))?);
            time_conv.forward_cl(x, Some(&prev))?
        }
    };
    let (b, t, h, w, c2) = y.dims5()?;
    let c = c2 / 2;
    // b t h w (s c) -> b (t s) h w c: channel block s is output frame 2t + s
    y.reshape((b, t, h, w, 2, c))?
        .permute((0, 1, 4, 2, 3, 5))?
        .contiguous()?
        .reshape((b, 2 * t, h, w, c))
}

/// The `downsample3d` time step: the first chunk passes through; later chunks are convolved
/// (kernel 3, stride 2, no padding) with the previous chunk's last frame in front.
fn downsample_time(time_conv: &CausalConv3d, x: &Tensor, cache: &mut FeatCache) -> Result<Tensor> {
    let slot = cache.next_slot();
    let t = x.dim(1)?;
    let last = x.narrow(1, t - 1, 1)?.force_contiguous()?;
    match std::mem::replace(slot, Slot::Frames(last)) {
        Slot::Frames(prev) => {
            let tp = prev.dim(1)?;
            let prev_last = prev.narrow(1, tp - 1, 1)?;
            time_conv
                .conv()
                .forward_cl_padded(&[&prev_last, x], Padding3d::default())
        }
        _ => Ok(x.clone()),
    }
}

/// Nearest-neighbour 2x up-sampling of `(B, T, H, W, C)` to `(B, T, 2H, 2W, C)` (for a factor of
/// two, PyTorch's `nearest-exact` picks the same pixels); the reference path of the tests.
#[cfg(test)]
fn upsample_nearest2x(x: &Tensor) -> Result<Tensor> {
    let (b, t, h, w, c) = x.dims5()?;
    // (b t h) w 1 c -> (b t h) w 2 c: repeat each pixel along w
    let x = x.reshape((b * t * h, w, 1, c))?;
    let x = Tensor::cat(&[&x, &x], 2)?;
    // (b t h) 1 (w 2 c) -> (b t h) 2 (w 2 c): repeat each row
    let x = x.reshape((b * t * h, 1, 2 * w * c))?;
    Tensor::cat(&[&x, &x], 1)?.reshape((b, t, 2 * h, 2 * w, c))
}

/// The spatial part of a resample block.
#[derive(Clone, Debug)]
enum Spatial {
    /// 2x nearest up-sampling then a 3x3 conv with padding 1.
    Up(UpsampleConv),
    /// Zero-pad right and below, then a 3x3 conv with stride 2.
    Down(Conv3d),
}

/// A 2x nearest up-sampling followed by a 3x3 conv (padding 1), computed without up-sampling:
/// each of the four output pixel phases `(a, b)` (row parity, column parity) only ever sees two
/// distinct input rows and columns, so it is a 2x2 conv of the low-resolution input whose taps are
/// sums of the 3x3 taps. 16 instead of 36 multiply-adds per input pixel and channel pair, and no
/// 4x-sized up-sampled copy.
#[derive(Clone, Debug)]
struct UpsampleConv {
    /// Phase `2a + b`: `(C_out, C_in, 1, 2, 2)` conv.
    phases: Vec<Conv3d>,
}

impl UpsampleConv {
    /// From the 3x3 conv `(C_out, C_in, 1, 3, 3)` that follows the up-sampling.
    fn new(conv: &Conv3d) -> Result<Self> {
        let w = &conv.weight()?;
        // phase 0 reads input rows (y-1, y) with taps (0, 1+2); phase 1 rows (y, y+1) with (0+1, 2)
        let fold = |w: &Tensor, axis: usize, phase: usize| -> Result<Tensor> {
            let tap = |i: usize| w.narrow(axis, i, 1);
            let (first, second) = if phase == 0 {
                (tap(0)?, (tap(1)? + tap(2)?)?)
            } else {
                ((tap(0)? + tap(1)?)?, tap(2)?)
            };
            Tensor::cat(&[&first, &second], axis)
        };
        let mut phases = Vec::with_capacity(4);
        for a in 0..2 {
            let rows = fold(w, 3, a)?;
            for b in 0..2 {
                let k = fold(&rows, 4, b)?.contiguous()?;
                phases.push(Conv3d::new(k, conv.bias().cloned(), (1, 1, 1), (0, 0, 0))?);
            }
        }
        Ok(Self { phases })
    }

    /// `(B, T, H, W, C_in)` -> `(B, T, 2H, 2W, C_out)`.
    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (b, t, h, w, _) = x.dims5()?;
        let mut rows = Vec::with_capacity(2);
        for a in 0..2 {
            let mut cols = Vec::with_capacity(2);
            for bp in 0..2 {
                // phase (a, b) pads the side its second tap reaches past
                let pad = Padding3d {
                    t: (0, 0),
                    h: (1 - a, a),
                    w: (1 - bp, bp),
                };
                let y = self.phases[2 * a + bp].forward_cl_padded(&[x], pad)?;
                let c = y.dim(4)?;
                cols.push(y.reshape((b * t * h * w, 1, c))?);
            }
            // (b t h w) [b'] c -> (b t h) 1 (w b' c): output row 2y + a
            let row = Tensor::cat(&cols, 1)?;
            let c = row.dim(2)?;
            rows.push(row.reshape((b * t * h, 1, 2 * w * c))?);
        }
        // (b t h) [a] (w b' c) -> b t (h a) (w b') c
        let c = rows[0].dim(2)? / (2 * w);
        Tensor::cat(&rows, 1)?.reshape((b, t, 2 * h, 2 * w, c))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, D};

    #[test]
    fn subpixel_conv_equals_upsample_then_conv() -> Result<()> {
        let dev = Device::Cpu;
        let x = Tensor::randn(0f32, 1.0, (2, 3, 5, 7, 6), &dev)?; // (B, T, H, W, C)
        let w = Tensor::randn(0f32, 1.0, (4, 6, 1, 3, 3), &dev)?;
        let bias = Tensor::randn(0f32, 1.0, 4, &dev)?;
        let conv = Conv3d::new(w, Some(bias), (1, 1, 1), (0, 1, 1))?;
        let want = conv.forward_cl(&upsample_nearest2x(&x)?)?;
        let got = UpsampleConv::new(&conv)?.forward(&x)?;
        assert_eq!(got.dims(), &[2, 3, 10, 14, 4]);
        let diff = (got - want)?
            .abs()?
            .flatten_all()?
            .max(D::Minus1)?
            .to_scalar::<f32>()?;
        // values reach ~20; the folded taps sum in another order
        assert!(diff < 1e-4, "max abs diff {diff}");
        Ok(())
    }
}
