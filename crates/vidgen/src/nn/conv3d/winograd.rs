//! The CPU f32 path of [`Conv3d`](super::Conv3d) for 3x3 spatial kernels at spatial stride 1 —
//! every conv of the Wan VAE's residual blocks, its `conv_in` / `conv_out` and the 2D convs after
//! its up-samplers: Winograd's minimal filtering F(2x2, 3x3) (Lavin & Gray, "Fast Algorithms for
//! Convolutional Neural Networks", 2016), with the temporal taps folded into the matmul depth.
//!
//! Each 2x2 block ("tile") of output pixels reads a 4x4 patch `d` of every input frame. In the
//! Winograd domain the 3x3 filter `g` becomes `U = G g Gᵀ` and the patch `V = Bᵀ d B` (both 4x4);
//! the 2x2 outputs are `Aᵀ (U ⊙ V) A`. Summed over input channels and the `kt` frames an output
//! frame reads, the element-wise product becomes 16 independent matmuls (one per position of the
//! 4x4), `(tiles, kt C_in) x (kt C_in, C_out)`: 16 x 4 = 64 multiply-adds per tile and `(dt, c_in,
//! c_out)` instead of 4 x 9 = 144, 2.25x fewer. The transforms themselves are additions only (and
//! halvings in `G`), a few per element, vectorised over channels (the layout is channels-last).
//!
//! Frames of the input are transformed once per call and laid out `(tile, position, frame, C)`, so
//! like the im2col path, the frames one output frame reads are a window of each row: no copy.
//! Tile rows are processed in bands that bound the scratch memory. The filter is transformed per
//! call (a few ms at the largest Wan VAE conv), so the layer keeps a single copy of its weight.
//!
//! Accuracy: F(2x2, 3x3) only adds, subtracts and halves, so its f32 error is that of a direct
//! conv with a different summation order (checked against the im2col path in the tests).

use rayon::prelude::*;

use super::Padding3d;

/// Channels processed together by the transforms (one AVX-512 register of f32).
const LANES: usize = 16;

/// Most floats of transformed input held at once (per band of tile rows): 32 MB.
pub(super) const SCRATCH_BUDGET: usize = 1 << 23;

/// Up to `n` floats of `src` as a lane block, zeros after (a fixed-size copy when the block is
/// full: a variable-length one is a `memmove` call).
#[inline(always)]
fn load(src: &[f32], n: usize) -> [f32; LANES] {
    if n == LANES {
        return src[..LANES].try_into().expect("a full lane block");
    }
    let mut lane = [0f32; LANES];
    lane[..n].copy_from_slice(&src[..n]);
    lane
}

/// Writes the first `n` floats of `lane` to `dst`.
#[inline(always)]
fn store(dst: &mut [f32], lane: &[f32; LANES], n: usize) {
    if n == LANES {
        dst[..LANES].copy_from_slice(lane);
    } else {
        dst[..n].copy_from_slice(&lane[..n]);
    }
}

/// One conv's shapes: input `(T_in, H, W, C)` (the real frames, unpadded), weight rows
/// `(kt, 3, 3, C)`, `C_out` outputs, temporal stride `st` and the zero padding.
#[derive(Clone, Copy, Debug)]
pub(super) struct Shapes {
    pub t_in: usize,
    pub h: usize,
    pub w: usize,
    pub c: usize,
    pub c_out: usize,
    pub kt: usize,
    pub st: usize,
    pub pad: Padding3d,
}

impl Shapes {
    /// `(T', H', W')` of the output.
    pub fn output(&self) -> (usize, usize, usize) {
        let Padding3d { t, h, w } = self.pad;
        let t_out = (self.t_in + t.0 + t.1 - self.kt) / self.st + 1;
        (t_out, self.h + h.0 + h.1 - 2, self.w + w.0 + w.1 - 2)
    }
}

/// `frames` are the real input frames, each `(H, W, C)`; `w_mat` is the conv's weight as
/// `(kt 3 3 C, C_out)` (rows ordered `(dt, dy, dx, c_in)`), `bias` `(C_out,)`.
///
/// Returns the output `(T', H', W', C_out)`, bias included.
pub(super) fn conv(frames: &[&[f32]], w_mat: &[f32], bias: Option<&[f32]>, s: Shapes) -> Vec<f32> {
    let Shapes {
        t_in,
        c,
        c_out,
        kt,
        st,
        pad,
        ..
    } = s;
    let (t_out, h_out, w_out) = s.output();
    let u = transform_filter(w_mat, kt, c, c_out);
    let frame_len = h_out * w_out * c_out;
    let mut out = vec![0f32; t_out * frame_len];
    let zero_bias = vec![0f32; c_out];
    let bias = bias.unwrap_or(&zero_bias);

    let (tiles_h, tiles_w) = (h_out.div_ceil(2), w_out.div_ceil(2));
    let row_len = 16 * t_in * c; // one tile's transformed input
    let band = (SCRATCH_BUDGET / (tiles_w * row_len).max(1)).clamp(1, tiles_h);
    let mut v = vec![0f32; band * tiles_w * row_len];
    let mut m = vec![0f32; band * tiles_w * 16 * c_out];
    for ty0 in (0..tiles_h).step_by(band) {
        let rows = band.min(tiles_h - ty0);
        let tiles = rows * tiles_w;
        // 1. the input tiles of this band, every real frame, into the Winograd domain
        v[..tiles * row_len]
            .par_chunks_mut(row_len)
            .enumerate()
            .for_each(|(i, dst)| {
                let (ty, tx) = (ty0 + i / tiles_w, i % tiles_w);
                for (f, frame) in frames.iter().enumerate() {
                    transform_input(frame, s, (ty, tx), f, dst);
                }
            });
        // the output rows of this band in each output frame
        let (y0, y1) = (2 * ty0, (2 * (ty0 + rows)).min(h_out));
        for to in 0..t_out {
            let frame_out = &mut out[to * frame_len..(to + 1) * frame_len];
            let band_out = &mut frame_out[y0 * w_out * c_out..y1 * w_out * c_out];
            // input frames of this output in padded time, clipped to the real frames
            let first = to * st;
            let lo = first.max(pad.t.0);
            let hi = (first + kt).min(pad.t.0 + t_in);
            if lo >= hi {
                // every frame it reads is padding
                band_out
                    .par_chunks_mut(c_out)
                    .for_each(|px| px.copy_from_slice(bias));
                continue;
            }
            // 2. the 16 matmuls, (tiles, (hi - lo) C) x ((hi - lo) C, C_out)
            products(
                &v,
                &u,
                &mut m,
                (tiles, (hi - lo) * c, c_out),
                ((lo - pad.t.0) * c, row_len),
                (lo - first) * c,
            );
            // 3. back from the Winograd domain, two output rows per tile row
            band_out
                .par_chunks_mut(2 * w_out * c_out)
                .enumerate()
                .for_each(|(r, dst)| {
                    let tile_row = &m[r * tiles_w * 16 * c_out..(r + 1) * tiles_w * 16 * c_out];
                    transform_output(tile_row, bias, w_out, c_out, dst);
                });
        }
    }
    out
}

/// Bᵀ on one column: `(x0 - x2, x1 + x2, x2 - x1, x1 - x3)`.
#[inline(always)]
fn b_t([x0, x1, x2, x3]: [f32; 4]) -> [f32; 4] {
    [x0 - x2, x1 + x2, x2 - x1, x1 - x3]
}

/// G on one column: `(x0, (x0 + x1 + x2) / 2, (x0 - x1 + x2) / 2, x2)`.
#[inline(always)]
fn g([x0, x1, x2]: [f32; 3]) -> [f32; 4] {
    [x0, 0.5 * (x0 + x1 + x2), 0.5 * (x0 - x1 + x2), x2]
}

/// Aᵀ on one column: `(x0 + x1 + x2, x1 - x2 - x3)`.
#[inline(always)]
fn a_t([x0, x1, x2, x3]: [f32; 4]) -> [f32; 2] {
    [x0 + x1 + x2, x1 - x2 - x3]
}

/// `L X Lᵀ` for a square `X` (`N x N`, row-major) and a 1-D transform `L` (`N -> M`).
#[inline(always)]
fn both_sides<const N: usize, const M: usize>(
    x: [[f32; N]; N],
    l: impl Fn([f32; N]) -> [f32; M],
) -> [[f32; M]; M] {
    let cols: [[f32; M]; N] = std::array::from_fn(|j| l(std::array::from_fn(|i| x[i][j]))); // (L X)ᵀ
    std::array::from_fn(|i| l(std::array::from_fn(|j| cols[j][i])))
}

/// A function whose body is `$generic`, compiled for AVX2 too and dispatched on the CPU it runs on
/// (the crate builds for baseline x86-64; the transforms are lane-wise loops the compiler widens).
macro_rules! avx2_dispatch {
    ($(#[$doc:meta])* fn $name:ident($($arg:ident: $ty:ty),*) => $generic:ident) => {
        $(#[$doc])*
        fn $name($($arg: $ty),*) {
            #[cfg(target_arch = "x86_64")]
            {
                #[target_feature(enable = "avx2,fma")]
                unsafe fn avx2($($arg: $ty),*) {
                    $generic($($arg),*)
                }
                if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
                    // SAFETY: the features were just detected.
                    return unsafe { avx2($($arg),*) };
                }
            }
            $generic($($arg),*)
        }
    };
}

/// `U = G g Gᵀ` for every `(dt, c_in)` row of the weight: `w_mat` `(kt 3 3 C_in, C_out)` ordered
/// `(dt, dy, dx, c_in)` -> `(kt C_in, 16, C_out)`.
fn transform_filter(w_mat: &[f32], kt: usize, c_in: usize, c_out: usize) -> Vec<f32> {
    let mut u = vec![0f32; kt * c_in * 16 * c_out];
    u.par_chunks_mut(16 * c_out)
        .enumerate()
        .for_each(|(r, dst)| filter_row(w_mat, r, c_in, c_out, dst));
    u
}

avx2_dispatch! {
    /// Row `r = (dt, c_in)` of [`transform_filter`] into `dst` `(16, C_out)`.
    fn filter_row(w_mat: &[f32], r: usize, c_in: usize, c_out: usize, dst: &mut [f32]) => filter_row_generic
}

#[inline(always)]
fn filter_row_generic(w_mat: &[f32], r: usize, c_in: usize, c_out: usize, dst: &mut [f32]) {
    let (dt, ci) = (r / c_in, r % c_in);
    for o0 in (0..c_out).step_by(LANES) {
        let n = LANES.min(c_out - o0);
        // tap k = (dy, dx): weight row (dt, dy, dx, ci), outputs o0 ..
        let mut taps = [[0f32; LANES]; 9];
        for (k, tap) in taps.iter_mut().enumerate() {
            *tap = load(&w_mat[((dt * 9 + k) * c_in + ci) * c_out + o0..], n);
        }
        let mut out = [[0f32; LANES]; 16];
        for l in 0..LANES {
            let u = both_sides(
                std::array::from_fn(|i| std::array::from_fn(|j| taps[i * 3 + j][l])),
                g,
            );
            for k in 0..16 {
                out[k][l] = u[k / 4][k % 4];
            }
        }
        for (k, lane) in out.iter().enumerate() {
            store(&mut dst[k * c_out + o0..], lane, n);
        }
    }
}

avx2_dispatch! {
    /// `V = Bᵀ d B` of tile `(ty, tx)` of input frame `f` into `dst` `(16, T_in, C)` at frame `f`.
    fn transform_input(frame: &[f32], s: Shapes, tile: (usize, usize), f: usize, dst: &mut [f32]) => transform_input_generic
}

#[inline(always)]
fn transform_input_generic(
    frame: &[f32],
    s: Shapes,
    (ty, tx): (usize, usize),
    f: usize,
    dst: &mut [f32],
) {
    let Shapes { h, w, c, t_in, .. } = s;
    let (pad_top, pad_left) = (s.pad.h.0, s.pad.w.0);
    // the 16 input pixels of the 4x4 patch (None outside the frame: zero padding)
    let px: [Option<&[f32]>; 16] = std::array::from_fn(|k| {
        let iy = (2 * ty + k / 4).wrapping_sub(pad_top);
        let ix = (2 * tx + k % 4).wrapping_sub(pad_left);
        // negative coordinates wrapped to huge ones: both checks catch them
        (iy < h && ix < w).then(|| &frame[(iy * w + ix) * c..(iy * w + ix + 1) * c])
    });
    for c0 in (0..c).step_by(LANES) {
        let n = LANES.min(c - c0);
        let mut d = [[0f32; LANES]; 16];
        for (lane, p) in d.iter_mut().zip(&px) {
            if let Some(p) = p {
                *lane = load(&p[c0..], n);
            }
        }
        let mut v = [[0f32; LANES]; 16];
        for l in 0..LANES {
            let vl = both_sides(
                std::array::from_fn(|i| std::array::from_fn(|j| d[i * 4 + j][l])),
                b_t,
            );
            for k in 0..16 {
                v[k][l] = vl[k / 4][k % 4];
            }
        }
        for (k, lane) in v.iter().enumerate() {
            store(&mut dst[(k * t_in + f) * c + c0..], lane, n);
        }
    }
}

/// The 16 Winograd-domain matmuls `m[tile, p, :] = v[tile, p, window] · u[window rows, p, :]`:
/// `v` rows of `v_row` floats with the window at `v_off` within each position's `(T_in C)`, `u`
/// rows from `u_row0`, `(tiles, k, C_out)` their sizes.
fn products(
    v: &[f32],
    u: &[f32],
    m: &mut [f32],
    (tiles, k, c_out): (usize, usize, usize),
    (v_off, v_row): (usize, usize),
    u_row0: usize,
) {
    let pos_len = v_row / 16; // (T_in C) floats per position
    assert!(tiles * v_row <= v.len() && (u_row0 + k) * 16 * c_out <= u.len());
    assert!(v_off + k <= pos_len && tiles * 16 * c_out <= m.len());
    // more tasks than the 16 positions when there are more threads, splitting the tiles
    let splits = (2 * rayon::current_num_threads()).div_ceil(16).min(tiles);
    let chunk = tiles.div_ceil(splits);
    let (v_ptr, u_ptr, m_ptr) = (
        v.as_ptr() as usize,
        u.as_ptr() as usize,
        m.as_mut_ptr() as usize,
    );
    (0..16 * splits).into_par_iter().for_each(|task| {
        let (p, part) = (task % 16, task / 16);
        let t0 = part * chunk;
        let rows = chunk.min(tiles.saturating_sub(t0));
        if rows == 0 {
            return;
        }
        // SAFETY: the asserts above keep every read in `v`/`u` and every write in `m`; tasks
        // write disjoint (tile, position) blocks of `m`.
        unsafe {
            gemm::gemm(
                rows,
                c_out,
                k,
                (m_ptr as *mut f32).add((t0 * 16 + p) * c_out),
                1,
                (16 * c_out) as isize,
                false,
                (v_ptr as *const f32).add(t0 * v_row + p * pos_len + v_off),
                1,
                v_row as isize,
                (u_ptr as *const f32).add(u_row0 * 16 * c_out + p * c_out),
                1,
                (16 * c_out) as isize,
                0.0,
                1.0,
                false,
                false,
                false,
                gemm::Parallelism::None,
            );
        }
    });
}

avx2_dispatch! {
    /// `Y = Aᵀ m A + bias` for one row of tiles (`m` `(tiles_w, 16, C_out)`) into `dst`, one or
    /// two output rows of `w_out` pixels.
    fn transform_output(m: &[f32], bias: &[f32], w_out: usize, c_out: usize, dst: &mut [f32]) => transform_output_generic
}

#[inline(always)]
fn transform_output_generic(m: &[f32], bias: &[f32], w_out: usize, c_out: usize, dst: &mut [f32]) {
    let out_rows = dst.len() / (w_out * c_out);
    for (tx, tile) in m.chunks_exact(16 * c_out).enumerate() {
        for c0 in (0..c_out).step_by(LANES) {
            let n = LANES.min(c_out - c0);
            let mut mk = [[0f32; LANES]; 16];
            for (k, lane) in mk.iter_mut().enumerate() {
                *lane = load(&tile[k * c_out + c0..], n);
            }
            let b = load(&bias[c0..], n);
            let mut y = [[0f32; LANES]; 4];
            for l in 0..LANES {
                let yl = both_sides(
                    std::array::from_fn(|i| std::array::from_fn(|j| mk[i * 4 + j][l])),
                    a_t,
                );
                for k in 0..4 {
                    y[k][l] = yl[k / 2][k % 2] + b[l];
                }
            }
            for (k, lane) in y.iter().enumerate() {
                let (i, x) = (k / 2, 2 * tx + k % 2);
                if i < out_rows && x < w_out {
                    store(&mut dst[(i * w_out + x) * c_out + c0..], lane, n);
                }
            }
        }
    }
}
