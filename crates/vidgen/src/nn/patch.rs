//! Spacetime patchify / unpatchify between latent videos and token sequences.

use candle_core::{bail, Result, Tensor};

/// Cuts a latent video into non-overlapping `(pt, ph, pw)` patches.
///
/// * `x` — `(B, C, T, H, W)`, each of T, H, W divisible by its patch size
///
/// Returns `(B, N, C·pt·ph·pw)` with `N = T/pt · H/ph · W/pw`, token index
/// `(t·H' + h)·W' + w`, features ordered `(c, pt, ph, pw)` — the flattening of a
/// `Conv3d(kernel = stride = patch)` weight, so the patch embedding is one matmul.
pub fn patchify(x: &Tensor, patch: (usize, usize, usize)) -> Result<Tensor> {
    let (b, c, t, h, w) = x.dims5()?;
    let (pt, ph, pw) = patch;
    if t % pt != 0 || h % ph != 0 || w % pw != 0 {
        bail!(
            "cannot cut latents (B, C, T, H, W) = {:?} into {patch:?} patches",
            x.shape()
        )
    }
    let (nt, nh, nw) = (t / pt, h / ph, w / pw);
    // b c (nt pt) (nh ph) (nw pw) -> b (nt nh nw) (c pt ph pw)
    x.reshape((b * c * nt, pt, nh, ph, nw * pw))?
        .permute((0, 2, 1, 3, 4))? // (b c nt) nh pt ph (nw pw)
        .contiguous()?
        .reshape((b, c, nt * nh, pt * ph, nw, pw))?
        .permute((0, 2, 4, 1, 3, 5))? // b (nt nh) nw c (pt ph) pw
        .contiguous()?
        .reshape((b, nt * nh * nw, c * pt * ph * pw))
}

/// Inverse of a patch projection whose features are ordered `(pt, ph, pw, c)` (channels last,
/// as Wan's `proj_out`).
///
/// * `x` — `(B, N, pt·ph·pw·C)` tokens of a `grid = (T', H', W')` patch grid
///
/// Returns `(B, C, T'·pt, H'·ph, W'·pw)`.
pub fn unpatchify(
    x: &Tensor,
    grid: (usize, usize, usize),
    patch: (usize, usize, usize),
) -> Result<Tensor> {
    let (b, n, f) = x.dims3()?;
    let (nt, nh, nw) = grid;
    let (pt, ph, pw) = patch;
    if n != nt * nh * nw || f % (pt * ph * pw) != 0 {
        bail!(
            "cannot unpatchify tokens {:?} onto grid {grid:?} with patch {patch:?}",
            x.shape()
        )
    }
    let c = f / (pt * ph * pw);
    // b (nt nh nw) (pt ph pw c) -> b c (nt pt) (nh ph) (nw pw)
    x.reshape((b * nt, nh, nw, pt, ph * pw * c))?
        .permute((0, 3, 1, 2, 4))? // (b nt) pt nh nw (ph pw c)
        .contiguous()?
        .reshape((b, nt * pt * nh, nw, ph, pw, c))?
        .permute((0, 5, 1, 3, 2, 4))? // b c (nt pt nh) ph nw pw
        .contiguous()?
        .reshape((b, c, nt * pt, nh * ph, nw * pw))
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, IndexOp};

    #[test]
    fn patchify_puts_one_patch_per_token() -> Result<()> {
        let dev = Device::Cpu;
        let x = Tensor::arange(0f32, (2 * 3 * 2 * 4 * 6) as f32, &dev)?.reshape((2, 3, 2, 4, 6))?;
        let tokens = patchify(&x, (1, 2, 2))?;
        assert_eq!(tokens.dims(), &[2, 12, 12]);
        // token (t 1, h 1, w 2) of batch 1: features (c, ph, pw)
        let tok = tokens.i((1, (2 + 1) * 3 + 2))?.to_vec1::<f32>()?;
        let want: Vec<f32> = (0..3)
            .flat_map(|c| (0..2).flat_map(move |ph| (0..2).map(move |pw| (c, ph, pw))))
            .map(|(c, ph, pw)| {
                x.i((1, c, 1, 2 + ph, 4 + pw))
                    .unwrap()
                    .to_scalar::<f32>()
                    .unwrap()
            })
            .collect();
        assert_eq!(tok, want);
        Ok(())
    }

    #[test]
    fn unpatchify_inverts_a_channels_last_patchify() -> Result<()> {
        let dev = Device::Cpu;
        let (pt, ph, pw) = (2, 2, 3);
        let x = Tensor::randn(0f32, 1., (1, 4, 4, 6, 9), &dev)?;
        // channels-last patch features: (c, pt, ph, pw) tokens -> (pt, ph, pw, c)
        let tokens = patchify(&x, (pt, ph, pw))?;
        let n = tokens.dim(1)?;
        let tokens = tokens
            .reshape((1, n, 4, pt * ph * pw))?
            .transpose(2, 3)?
            .reshape((1, n, pt * ph * pw * 4))?;
        let back = unpatchify(&tokens, (2, 3, 3), (pt, ph, pw))?;
        let err = (back - &x)?.abs()?.max_all()?.to_scalar::<f32>()?;
        assert_eq!(err, 0.0);
        Ok(())
    }
}
