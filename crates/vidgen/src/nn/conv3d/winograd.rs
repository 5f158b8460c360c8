//! The CPU path of [`Conv3d`](super::Conv3d) for 3x3 spatial kernels at spatial stride 1 —
//! the VAEs' residual-block convs, their `conv_in` / `conv_out` and the 2D convs after their
//! up-samplers (Wan, LTX-Video, CogVideoX): Winograd's minimal filtering F(m x m, 3x3) (Lavin & Gray, "Fast Algorithms
//! for Convolutional Neural Networks", 2016), with the temporal taps folded into the matmul depth.
//!
//! Each m x m block ("tile") of output pixels reads an `(m + 2)²` patch `d` of every input frame.
//! In the Winograd domain the 3x3 filter `g` becomes `U = G g Gᵀ` and the patch `V = Bᵀ d B`; the
//! outputs are `Aᵀ (U ⊙ V) A`. Summed over input channels and the `kt` frames an output frame
//! reads, the element-wise product becomes `(m + 2)²` independent matmuls (one per position),
//! `(tiles, kt C_in) x (kt C_in, C_out)`. Per output pixel and `(dt, c_in, c_out)` that is
//! `(m + 2)² / m²` multiply-adds instead of 9: F(2x2, 3x3) 4 (2.25x fewer), F(4x4, 3x3) 2.25 (4x
//! fewer). The transforms are additions and small constant products, vectorised over channels
//! (the layout is channels-last). F(4x4) wins once a call has enough output pixels to pay for its
//! larger transformed filter (36 positions of `kt C_in x C_out`, built per call); smaller frames
//! take F(2x2).
//!
//! Frames of the input are transformed once per call and laid out `(tile, position, frame, C)`, so
//! like the im2col path, the frames one output frame reads are a window of each row: no copy.
//! Tile rows are processed in bands that bound the scratch memory. The filter is transformed per
//! call, so the layer keeps a single copy of its weight.
//!
//! Accuracy: F(2x2) only adds, subtracts and halves: its f32 error is a direct conv's. F(4x4)'s
//! constants (up to 8 and 1/24) cost about two decimal digits: ~1e-5 relative error in f32
//! (checked in the tests; far below what a VAE's 8-bit output resolves).

use rayon::prelude::*;

use super::Padding3d;

/// Channels processed together by the transforms (one AVX-512 register of f32).
const LANES: usize = 16;

/// Most floats of transformed input held at once (per band of tile rows): 32 MB.
pub(super) const SCRATCH_BUDGET: usize = 1 << 23;

/// Output pixels per call from which F(4x4, 3x3) is faster than F(2x2, 3x3) (measured with
/// `examples/vae_decode_bench.rs conv`: a 32x32 frame is faster in F(2x2), 64x64 in F(4x4)).
const F4_MIN_PIXELS: usize = 48 * 48;

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

/// The three 1-D transforms of F(T x T, 3x3) on patches of `P = T + 2`.
trait Minimal<const T: usize, const P: usize> {
    /// `Bᵀ` on one column of a patch.
    fn b_t(x: [f32; P]) -> [f32; P];
    /// `G` on one column of a filter.
    fn g(x: [f32; 3]) -> [f32; P];
    /// `Aᵀ` on one column of the Winograd-domain product.
    fn a_t(x: [f32; P]) -> [f32; T];
}

/// F(2x2, 3x3): interpolation points 0, ±1, ∞.
struct F2;

impl Minimal<2, 4> for F2 {
    #[inline(always)]
    fn b_t([x0, x1, x2, x3]: [f32; 4]) -> [f32; 4] {
        [x0 - x2, x1 + x2, x2 - x1, x1 - x3]
    }

    #[inline(always)]
    fn g([x0, x1, x2]: [f32; 3]) -> [f32; 4] {
        [x0, 0.5 * (x0 + x1 + x2), 0.5 * (x0 - x1 + x2), x2]
    }

    #[inline(always)]
    fn a_t([x0, x1, x2, x3]: [f32; 4]) -> [f32; 2] {
        [x0 + x1 + x2, x1 - x2 - x3]
    }
}

/// F(4x4, 3x3): interpolation points 0, ±1, ±2, ∞.
struct F4;

impl Minimal<4, 6> for F4 {
    #[inline(always)]
    fn b_t([x0, x1, x2, x3, x4, x5]: [f32; 6]) -> [f32; 6] {
        [
            4.0 * x0 - 5.0 * x2 + x4,
            x3 + x4 - 4.0 * (x1 + x2),
            x4 - x3 + 4.0 * (x1 - x2),
            x4 - x2 + 2.0 * (x3 - x1),
            x4 - x2 + 2.0 * (x1 - x3),
            4.0 * x1 - 5.0 * x3 + x5,
        ]
    }

    #[inline(always)]
    fn g([x0, x1, x2]: [f32; 3]) -> [f32; 6] {
        const SIXTH: f32 = 1.0 / 6.0;
        [
            0.25 * x0,
            -SIXTH * (x0 + x1 + x2),
            -SIXTH * (x0 - x1 + x2),
            x0 / 24.0 + x1 / 12.0 + x2 / 6.0,
            x0 / 24.0 - x1 / 12.0 + x2 / 6.0,
            x2,
        ]
    }

    #[inline(always)]
    fn a_t([x0, x1, x2, x3, x4, x5]: [f32; 6]) -> [f32; 4] {
        let (p12, m12, p34, m34) = (x1 + x2, x1 - x2, x3 + x4, x3 - x4);
        [
            x0 + p12 + p34,
            m12 + 2.0 * m34,
            p12 + 4.0 * p34,
            m12 + 8.0 * m34 + x5,
        ]
    }
}

/// `L X Lᵀ` for a square `X` (`N x N`) and a 1-D transform `L` (`N -> M`).
#[inline(always)]
fn both_sides<const N: usize, const M: usize>(
    x: [[f32; N]; N],
    l: impl Fn([f32; N]) -> [f32; M],
) -> [[f32; M]; M] {
    let cols: [[f32; M]; N] = std::array::from_fn(|j| l(std::array::from_fn(|i| x[i][j]))); // (L X)ᵀ
    std::array::from_fn(|i| l(std::array::from_fn(|j| cols[j][i])))
}

/// Whether the CPU has AVX2 and FMA (the transforms' loops are compiled for them too; the crate
/// builds for baseline x86-64).
fn has_avx2() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// `frames` are the real input frames, each `(H, W, C)`; `w_mat` is the conv's weight as
/// `(kt 3 3 C, C_out)` (rows ordered `(dt, dy, dx, c_in)`), `bias` `(C_out,)`.
///
/// Returns the output `(T', H', W', C_out)`, bias included.
pub(super) fn conv(frames: &[&[f32]], w_mat: &[f32], bias: Option<&[f32]>, s: Shapes) -> Vec<f32> {
    let (t_out, h_out, w_out) = s.output();
    if t_out * h_out * w_out >= F4_MIN_PIXELS {
        conv_with::<F4, 4, 6>(frames, w_mat, bias, s)
    } else {
        conv_with::<F2, 2, 4>(frames, w_mat, bias, s)
    }
}

/// [`conv`] in F(T x T, 3x3), patches of `P = T + 2`.
fn conv_with<W: Minimal<T, P>, const T: usize, const P: usize>(
    frames: &[&[f32]],
    w_mat: &[f32],
    bias: Option<&[f32]>,
    s: Shapes,
) -> Vec<f32> {
    let Shapes {
        t_in,
        c,
        c_out,
        kt,
        st,
        pad,
        ..
    } = s;
    let pos = P * P;
    let (t_out, h_out, w_out) = s.output();
    let avx2 = has_avx2();
    let u = transform_filter::<W, T, P>(w_mat, kt, c, c_out, avx2);
    let frame_len = h_out * w_out * c_out;
    let mut out = vec![0f32; t_out * frame_len];
    let zero_bias = vec![0f32; c_out];
    let bias = bias.unwrap_or(&zero_bias);

    let (tiles_h, tiles_w) = (h_out.div_ceil(T), w_out.div_ceil(T));
    let row_len = pos * t_in * c; // one tile's transformed input
    let band = (SCRATCH_BUDGET / (tiles_w * row_len).max(1)).clamp(1, tiles_h);
    let mut v = vec![0f32; band * tiles_w * row_len];
    let mut m = vec![0f32; band * tiles_w * pos * c_out];
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
                    transform_input::<W, T, P>(frame, s, (ty, tx), f, dst, avx2);
                }
            });
        // the output rows of this band in each output frame
        let (y0, y1) = (T * ty0, (T * (ty0 + rows)).min(h_out));
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
            // 2. one matmul per position, (tiles, (hi - lo) C) x ((hi - lo) C, C_out)
            products(
                &v,
                &u,
                &mut m,
                (pos, tiles, (hi - lo) * c, c_out),
                ((lo - pad.t.0) * c, row_len),
                (lo - first) * c,
            );
            // 3. back from the Winograd domain, T output rows per tile row
            let tile_row_len = tiles_w * pos * c_out;
            band_out
                .par_chunks_mut(T * w_out * c_out)
                .enumerate()
                .for_each(|(r, dst)| {
                    let tile_row = &m[r * tile_row_len..(r + 1) * tile_row_len];
                    transform_output::<W, T, P>(tile_row, bias, w_out, c_out, dst, avx2);
                });
        }
    }
    out
}

/// `U = G g Gᵀ` for every `(dt, c_in)` row of the weight: `w_mat` `(kt 3 3 C_in, C_out)` ordered
/// `(dt, dy, dx, c_in)` -> `(kt C_in, P², C_out)`.
fn transform_filter<W: Minimal<T, P>, const T: usize, const P: usize>(
    w_mat: &[f32],
    kt: usize,
    c_in: usize,
    c_out: usize,
    avx2: bool,
) -> Vec<f32> {
    let mut u = vec![0f32; kt * c_in * P * P * c_out];
    u.par_chunks_mut(P * P * c_out)
        .enumerate()
        .for_each(|(r, dst)| {
            #[cfg(target_arch = "x86_64")]
            if avx2 {
                // SAFETY: the caller detected the features.
                return unsafe { filter_row_avx2::<W, T, P>(w_mat, r, c_in, c_out, dst) };
            }
            let _ = avx2;
            filter_row::<W, T, P>(w_mat, r, c_in, c_out, dst)
        });
    u
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn filter_row_avx2<W: Minimal<T, P>, const T: usize, const P: usize>(
    w_mat: &[f32],
    r: usize,
    c_in: usize,
    c_out: usize,
    dst: &mut [f32],
) {
    filter_row::<W, T, P>(w_mat, r, c_in, c_out, dst)
}

/// Row `r = (dt, c_in)` of [`transform_filter`] into `dst` `(P², C_out)`.
#[inline(always)]
fn filter_row<W: Minimal<T, P>, const T: usize, const P: usize>(
    w_mat: &[f32],
    r: usize,
    c_in: usize,
    c_out: usize,
    dst: &mut [f32],
) {
    let (dt, ci) = (r / c_in, r % c_in);
    for o0 in (0..c_out).step_by(LANES) {
        let n = LANES.min(c_out - o0);
        // tap (dy, dx): weight row (dt, dy, dx, ci), outputs o0 ..
        let mut taps = [[[0f32; LANES]; 3]; 3];
        for (dy, row) in taps.iter_mut().enumerate() {
            for (dx, tap) in row.iter_mut().enumerate() {
                let at = ((dt * 9 + dy * 3 + dx) * c_in + ci) * c_out + o0;
                *tap = load(&w_mat[at..], n);
            }
        }
        let mut out = [[[0f32; LANES]; P]; P];
        for l in 0..LANES {
            let u = both_sides(
                std::array::from_fn(|i| std::array::from_fn(|j| taps[i][j][l])),
                W::g,
            );
            for (i, row) in u.iter().enumerate() {
                for (j, x) in row.iter().enumerate() {
                    out[i][j][l] = *x;
                }
            }
        }
        for (k, lane) in out.iter().flatten().enumerate() {
            store(&mut dst[k * c_out + o0..], lane, n);
        }
    }
}

/// `V = Bᵀ d B` of tile `(ty, tx)` of input frame `f` into `dst` `(P², T_in, C)` at frame `f`.
#[inline(always)]
fn transform_input<W: Minimal<T, P>, const T: usize, const P: usize>(
    frame: &[f32],
    s: Shapes,
    tile: (usize, usize),
    f: usize,
    dst: &mut [f32],
    avx2: bool,
) {
    #[cfg(target_arch = "x86_64")]
    if avx2 {
        // SAFETY: the caller detected the features.
        return unsafe { input_tile_avx2::<W, T, P>(frame, s, tile, f, dst) };
    }
    let _ = avx2;
    input_tile::<W, T, P>(frame, s, tile, f, dst)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn input_tile_avx2<W: Minimal<T, P>, const T: usize, const P: usize>(
    frame: &[f32],
    s: Shapes,
    tile: (usize, usize),
    f: usize,
    dst: &mut [f32],
) {
    input_tile::<W, T, P>(frame, s, tile, f, dst)
}

#[inline(always)]
fn input_tile<W: Minimal<T, P>, const T: usize, const P: usize>(
    frame: &[f32],
    s: Shapes,
    (ty, tx): (usize, usize),
    f: usize,
    dst: &mut [f32],
) {
    let Shapes { h, w, c, t_in, .. } = s;
    let (pad_top, pad_left) = (s.pad.h.0, s.pad.w.0);
    // the input pixels of the P x P patch (None outside the frame: zero padding)
    let px: [[Option<&[f32]>; P]; P] = std::array::from_fn(|i| {
        std::array::from_fn(|j| {
            let iy = (T * ty + i).wrapping_sub(pad_top);
            let ix = (T * tx + j).wrapping_sub(pad_left);
            // negative coordinates wrapped to huge ones: both checks catch them
            (iy < h && ix < w).then(|| &frame[(iy * w + ix) * c..(iy * w + ix + 1) * c])
        })
    });
    for c0 in (0..c).step_by(LANES) {
        let n = LANES.min(c - c0);
        let mut d = [[[0f32; LANES]; P]; P];
        for (drow, prow) in d.iter_mut().zip(&px) {
            for (lane, p) in drow.iter_mut().zip(prow) {
                if let Some(p) = p {
                    *lane = load(&p[c0..], n);
                }
            }
        }
        let mut v = [[[0f32; LANES]; P]; P];
        for l in 0..LANES {
            let vl = both_sides(
                std::array::from_fn(|i| std::array::from_fn(|j| d[i][j][l])),
                W::b_t,
            );
            for (i, row) in vl.iter().enumerate() {
                for (j, x) in row.iter().enumerate() {
                    v[i][j][l] = *x;
                }
            }
        }
        for (k, lane) in v.iter().flatten().enumerate() {
            store(&mut dst[(k * t_in + f) * c + c0..], lane, n);
        }
    }
}

/// The `pos` Winograd-domain matmuls `m[tile, p, :] = v[tile, p, window] · u[window rows, p, :]`:
/// `v` rows of `v_row` floats with the window at `v_off` within each position's `(T_in C)`, `u`
/// rows from `u_row0`, `(pos, tiles, k, C_out)` their sizes.
fn products(
    v: &[f32],
    u: &[f32],
    m: &mut [f32],
    (pos, tiles, k, c_out): (usize, usize, usize, usize),
    (v_off, v_row): (usize, usize),
    u_row0: usize,
) {
    let pos_len = v_row / pos; // (T_in C) floats per position
    assert!(tiles * v_row <= v.len() && (u_row0 + k) * pos * c_out <= u.len());
    assert!(v_off + k <= pos_len && tiles * pos * c_out <= m.len());
    // more tasks than the positions when there are more threads, splitting the tiles
    let splits = (2 * rayon::current_num_threads()).div_ceil(pos).min(tiles);
    let chunk = tiles.div_ceil(splits);
    let (v_ptr, u_ptr, m_ptr) = (
        v.as_ptr() as usize,
        u.as_ptr() as usize,
        m.as_mut_ptr() as usize,
    );
    (0..pos * splits).into_par_iter().for_each(|task| {
        let (p, part) = (task % pos, task / pos);
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
                (m_ptr as *mut f32).add((t0 * pos + p) * c_out),
                1,
                (pos * c_out) as isize,
                false,
                (v_ptr as *const f32).add(t0 * v_row + p * pos_len + v_off),
                1,
                v_row as isize,
                (u_ptr as *const f32).add(u_row0 * pos * c_out + p * c_out),
                1,
                (pos * c_out) as isize,
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

/// `Y = Aᵀ m A + bias` for one row of tiles (`m` `(tiles_w, P², C_out)`) into `dst`, up to `T`
/// output rows of `w_out` pixels.
#[inline(always)]
fn transform_output<W: Minimal<T, P>, const T: usize, const P: usize>(
    m: &[f32],
    bias: &[f32],
    w_out: usize,
    c_out: usize,
    dst: &mut [f32],
    avx2: bool,
) {
    #[cfg(target_arch = "x86_64")]
    if avx2 {
        // SAFETY: the caller detected the features.
        return unsafe { output_row_avx2::<W, T, P>(m, bias, w_out, c_out, dst) };
    }
    let _ = avx2;
    output_row::<W, T, P>(m, bias, w_out, c_out, dst)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn output_row_avx2<W: Minimal<T, P>, const T: usize, const P: usize>(
    m: &[f32],
    bias: &[f32],
    w_out: usize,
    c_out: usize,
    dst: &mut [f32],
) {
    output_row::<W, T, P>(m, bias, w_out, c_out, dst)
}

#[inline(always)]
fn output_row<W: Minimal<T, P>, const T: usize, const P: usize>(
    m: &[f32],
    bias: &[f32],
    w_out: usize,
    c_out: usize,
    dst: &mut [f32],
) {
    let out_rows = dst.len() / (w_out * c_out);
    for (tx, tile) in m.chunks_exact(P * P * c_out).enumerate() {
        for c0 in (0..c_out).step_by(LANES) {
            let n = LANES.min(c_out - c0);
            let mut mk = [[[0f32; LANES]; P]; P];
            for (k, lane) in mk.iter_mut().flatten().enumerate() {
                *lane = load(&tile[k * c_out + c0..], n);
            }
            let b = load(&bias[c0..], n);
            let mut y = [[[0f32; LANES]; T]; T];
            for l in 0..LANES {
                let yl = both_sides(
                    std::array::from_fn(|i| std::array::from_fn(|j| mk[i][j][l])),
                    W::a_t,
                );
                for (i, row) in yl.iter().enumerate() {
                    for (j, x) in row.iter().enumerate() {
                        y[i][j][l] = x + b[l];
                    }
                }
            }
            for (i, row) in y.iter().enumerate().take(out_rows) {
                for (j, lane) in row.iter().enumerate() {
                    let x = T * tx + j;
                    if x < w_out {
                        store(&mut dst[(i * w_out + x) * c_out + c0..], lane, n);
                    }
                }
            }
        }
    }
}
