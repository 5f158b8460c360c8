//! Fused scaled dot-product attention on the CPU: tiled over query and key blocks with an
//! online softmax, so a thread holds one `BQ × BK` score tile and a `BQ × d` accumulator —
//! never the `N × M` matrix — and every block product is a GEMM (the `gemm` crate, which
//! picks AVX-512/AVX2/FMA kernels at run time). Threads split the (batch·head, query block)
//! pairs. f32 ([`attention_f32`], the `gemm` crate) and bf16 ([`attention_bf16`], the bf16
//! dot product of [`super::bf16_gemm`]); [`super::attention`] falls back to the generic candle
//! path for other devices and dtypes, and keeps that path as the test oracle.

use half::bf16;
use rayon::prelude::*;

/// Query rows per tile.
const BQ: usize = 64;
/// Key rows per tile.
const BK: usize = 256;

/// `softmax(q·kᵀ·scale + score_bias) · v` for `bh` independent (batch·head) problems.
///
/// * `q` — `(bh, n, d)` row-major; `k`, `v` — `(bh, m, d)` row-major
/// * `score_bias` — per problem, `m` values added to every row of its scores (a key-padding
///   mask) or `n × m` values, one row per query (a position bias), see [`ScoreBias`]
///
/// Returns `(bh, n, d)`.
pub fn attention_f32(
    q: &[f32],
    k: &[f32],
    v: &[f32],
    score_bias: Option<ScoreBias<'_>>,
    (bh, n, m, d): (usize, usize, usize, usize),
    scale: f32,
) -> Vec<f32> {
    assert_eq!(q.len(), bh * n * d, "q is not (bh, n, d)");
    assert_eq!(k.len(), bh * m * d, "k is not (bh, m, d)");
    assert_eq!(v.len(), bh * m * d, "v is not (bh, m, d)");
    let mut out = vec![0f32; bh * n * d];
    if n == 0 || d == 0 {
        return out;
    }
    per_query_block(&mut out, (n, d), Scratch::new, |scratch, p, row0, dst| {
        let rows = dst.len() / d;
        let q_blk = &q[(p * n + row0) * d..(p * n + row0 + rows) * d];
        let k_p = &k[p * m * d..(p + 1) * m * d];
        let v_p = &v[p * m * d..(p + 1) * m * d];
        let bias = score_bias.as_ref().map(|b| b.rows_from(p, row0));
        tile(scratch, q_blk, k_p, v_p, bias, rows, m, d, scale, dst);
    });
    out
}

/// An additive score bias shaped `(B', H', R, M)` with `B'` 1 or the batch, `H'` 1 or the heads
/// and `R` 1 (the same `M` values for every query: a key-padding mask) or the `n` queries (a
/// position bias), as `values` row-major: problem `p = b·heads + h` reads block
/// `(b mod B')·H' + (h mod H')`.
pub struct ScoreBias<'a> {
    pub values: &'a [f32],
    pub m: usize,
    /// `R`: 1, or the number of queries.
    pub query_rows: usize,
    pub batch_rows: usize,
    pub heads: usize,
    pub per_head: bool,
}

/// The bias rows of one query block: `values[r · stride + j]` is added to score `(r, j)` (a
/// stride of 0 repeats one row).
#[derive(Clone, Copy)]
struct BiasRows<'a> {
    values: &'a [f32],
    stride: usize,
}

impl<'a> BiasRows<'a> {
    /// Columns `k0..k0 + cols` of row `r`.
    fn row(&self, r: usize, k0: usize, cols: usize) -> &'a [f32] {
        &self.values[r * self.stride + k0..r * self.stride + k0 + cols]
    }
}

impl ScoreBias<'_> {
    /// Problem `p`'s bias from query row `row0` on.
    fn rows_from(&self, p: usize, row0: usize) -> BiasRows<'_> {
        let (b, h) = (p / self.heads, p % self.heads);
        let block = if self.per_head {
            (b % self.batch_rows) * self.heads + h
        } else {
            b % self.batch_rows
        };
        let start = block * self.query_rows * self.m;
        let values = &self.values[start..start + self.query_rows * self.m];
        if self.query_rows == 1 {
            BiasRows { values, stride: 0 }
        } else {
            BiasRows {
                values: &values[row0 * self.m..],
                stride: self.m,
            }
        }
    }
}

/// Runs `f(scratch, problem, first row, rows of out)` for every (problem, query block) of
/// `out` (`bh` problems of `n` rows of `d`) in parallel: each task owns its block's rows, and
/// each thread one scratch from `init(d)`.
fn per_query_block<T: Send, S>(
    out: &mut [T],
    (n, d): (usize, usize),
    init: impl Fn(usize) -> S + Sync + Send,
    f: impl Fn(&mut S, usize, usize, &mut [T]) + Sync + Send,
) {
    out.par_chunks_mut(n * d)
        .enumerate()
        .flat_map(|(p, problem)| {
            problem
                .par_chunks_mut(BQ * d)
                .enumerate()
                .map(move |(block, rows)| (p, block * BQ, rows))
        })
        .for_each_init(|| init(d), |s, (p, row0, rows)| f(s, p, row0, rows));
}

/// Per-thread buffers.
struct Scratch {
    scores: Vec<f32>,
    acc: Vec<f32>,
    max: Vec<f32>,
    sum: Vec<f32>,
}

impl Scratch {
    fn new(d: usize) -> Self {
        Self {
            scores: vec![0.0; BQ * BK],
            acc: vec![0.0; BQ * d],
            max: vec![0.0; BQ],
            sum: vec![0.0; BQ],
        }
    }

    /// Empty accumulator, running maxima and sums for a block of `rows` query rows.
    fn start(&mut self, rows: usize, d: usize) {
        self.acc[..rows * d].fill(0.0);
        self.max[..rows].fill(f32::NEG_INFINITY);
        self.sum[..rows].fill(0.0);
    }

    /// The block's output: each accumulator row over its softmax sum (rows whose keys were
    /// all masked out: zero), through `convert`.
    fn finish<T>(&self, rows: usize, d: usize, dst: &mut [T], convert: impl Fn(f32) -> T) {
        for r in 0..rows {
            let inv = if self.sum[r] > 0.0 {
                1.0 / self.sum[r]
            } else {
                0.0
            };
            for (o, a) in dst[r * d..(r + 1) * d]
                .iter_mut()
                .zip(&self.acc[r * d..(r + 1) * d])
            {
                *o = convert(a * inv);
            }
        }
    }
}

/// One query block against all keys: online softmax over key tiles.
#[allow(clippy::too_many_arguments)]
fn tile(
    s: &mut Scratch,
    q: &[f32],
    k: &[f32],
    v: &[f32],
    bias: Option<BiasRows<'_>>,
    rows: usize,
    m: usize,
    d: usize,
    scale: f32,
    dst: &mut [f32],
) {
    s.start(rows, d);
    let mut k0 = 0;
    while k0 < m {
        let cols = BK.min(m - k0);
        let scores = &mut s.scores[..rows * cols];
        let acc = &mut s.acc[..rows * d];
        // scores = scale · q · k_tileᵀ   (rows × cols)
        unsafe {
            gemm::gemm(
                rows,
                cols,
                d,
                scores.as_mut_ptr(),
                1,
                cols as isize,
                false,
                q.as_ptr(),
                1,
                d as isize,
                k.as_ptr().add(k0 * d),
                d as isize,
                1,
                0.0,
                scale,
                false,
                false,
                false,
                gemm::Parallelism::None,
            );
        }
        let tile_bias = bias.map(|b| (b, k0));
        online_softmax(
            &mut s.max, &mut s.sum, scores, cols, cols, tile_bias, acc, d,
        );
        // acc += p · v_tile   (rows × d)
        unsafe {
            gemm::gemm(
                rows,
                d,
                cols,
                acc.as_mut_ptr(),
                1,
                d as isize,
                true,
                scores.as_ptr(),
                1,
                cols as isize,
                v.as_ptr().add(k0 * d),
                1,
                d as isize,
                1.0,
                1.0,
                false,
                false,
                false,
                gemm::Parallelism::None,
            );
        }
        k0 += cols;
    }
    s.finish(rows, d, dst, |x| x);
}

/// One key tile of the online softmax: adds the bias (its columns from `k0`) to each of the
/// `rows` score rows (`cols` scores at stride `ld`), turns them into `exp(score − running
/// max)`, and rescales the running sums and the `d`-wide accumulator rows to the new maxima.
#[allow(clippy::too_many_arguments)]
fn online_softmax(
    max: &mut [f32],
    sum: &mut [f32],
    scores: &mut [f32],
    ld: usize,
    cols: usize,
    bias: Option<(BiasRows<'_>, usize)>,
    acc: &mut [f32],
    d: usize,
) {
    let rows = acc.len() / d.max(1);
    for r in 0..rows {
        let row = &mut scores[r * ld..r * ld + cols];
        let bias_row = bias.map(|(b, k0)| b.row(r, k0, cols));
        let tile_max = add_bias_max(row, bias_row);
        let old = max[r];
        let new = old.max(tile_max);
        if new == f32::NEG_INFINITY {
            // every key so far masked out entirely: nothing to add
            row.fill(0.0);
            continue;
        }
        let correction = if old == f32::NEG_INFINITY {
            0.0
        } else {
            (old - new).exp()
        };
        let row_sum = exp_sub_sum(row, new);
        sum[r] = sum[r] * correction + row_sum;
        max[r] = new;
        if correction != 1.0 {
            for a in &mut acc[r * d..(r + 1) * d] {
                *a *= correction;
            }
        }
    }
}

/// Adds `bias` (if any) to `row` in place and returns the row's maximum (−∞ for an empty or
/// all-masked row). Vectorised: AVX2 where the CPU has it.
fn add_bias_max(row: &mut [f32], bias: Option<&[f32]>) -> f32 {
    #[cfg(target_arch = "x86_64")]
    {
        if is_x86_feature_detected!("avx2") {
            // SAFETY: the feature was just detected.
            return unsafe { add_bias_max_avx2(row, bias) };
        }
    }
    add_bias_max_generic(row, bias)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn add_bias_max_avx2(row: &mut [f32], bias: Option<&[f32]>) -> f32 {
    add_bias_max_generic(row, bias)
}

#[inline(always)]
fn add_bias_max_generic(row: &mut [f32], bias: Option<&[f32]>) -> f32 {
    if let Some(bias) = bias {
        for (x, b) in row.iter_mut().zip(bias) {
            *x += b;
        }
    }
    // 8 running maxima, so the loop vectorises (one is a serial chain); a plain comparison
    // rather than `f32::max`, whose NaN rule does not vectorise (a NaN score stays out of the
    // maximum either way)
    let mut lanes = [f32::NEG_INFINITY; 8];
    let mut chunks = row.chunks_exact(8);
    for chunk in &mut chunks {
        for (l, &x) in lanes.iter_mut().zip(chunk) {
            *l = if x > *l { x } else { *l };
        }
    }
    let tail = chunks.remainder().iter();
    lanes
        .iter()
        .chain(tail)
        .fold(f32::NEG_INFINITY, |m, &x| if x > m { x } else { m })
}

/// [`attention_f32`] for bf16 `q`, `k`, `v` on the bf16 dot product ([`super::bf16_gemm`],
/// which the caller checks is available; `d` even): both block products take bf16 operands
/// with f32 accumulation (the probabilities rounded to bf16 for the second, as in PyTorch's
/// bf16 attention); softmax and the accumulator stay f32. Returns `(bh, n, d)` bf16.
pub fn attention_bf16(
    q: &[bf16],
    k: &[bf16],
    v: &[bf16],
    score_bias: Option<ScoreBias<'_>>,
    (bh, n, m, d): (usize, usize, usize, usize),
    scale: f32,
) -> Vec<bf16> {
    use super::bf16_gemm::{product_f32, Panels};
    assert!(d % 2 == 0, "attention_bf16 needs an even head dim, got {d}");
    assert_eq!(q.len(), bh * n * d, "q is not (bh, n, d)");
    assert_eq!(k.len(), bh * m * d, "k is not (bh, m, d)");
    assert_eq!(v.len(), bh * m * d, "v is not (bh, m, d)");
    let mut out = vec![bf16::ZERO; bh * n * d];
    if n == 0 || d == 0 {
        return out;
    }
    // keys as (m outputs × d terms), values as (d outputs × m terms), once per problem
    let packed: Vec<(Panels, Panels)> = (0..bh)
        .into_par_iter()
        .map(|p| {
            let (k_p, v_p) = (
                &k[p * m * d..(p + 1) * m * d],
                &v[p * m * d..(p + 1) * m * d],
            );
            (
                Panels::from_rows(k_p, m, d),
                Panels::from_columns(v_p, m, d),
            )
        })
        .collect();
    let init = |d| (Scratch::new(d), vec![bf16::ZERO; BQ * BK]);
    per_query_block(&mut out, (n, d), init, |(s, probs), p, row0, dst| {
        let rows = dst.len() / d;
        let q_blk = &q[(p * n + row0) * d..(p * n + row0 + rows) * d];
        let (keys, values) = &packed[p];
        let bias = score_bias.as_ref().map(|b| b.rows_from(p, row0));
        s.start(rows, d);
        let mut k0 = 0;
        while k0 < m {
            let cols = BK.min(m - k0);
            // scores = scale · q · k_tileᵀ   (rows × cols, stride BK)
            let scores = &mut s.scores[..rows * BK];
            product_f32(
                q_blk,
                d,
                rows,
                keys,
                (k0, cols),
                (0, d / 2),
                scores,
                BK,
                (scale, false),
            );
            let tile_bias = bias.map(|b| (b, k0));
            let acc = &mut s.acc[..rows * d];
            online_softmax(&mut s.max, &mut s.sum, scores, BK, cols, tile_bias, acc, d);
            // acc += p · v_tile, p rounded to bf16 (an odd tail padded with a zero)
            let pairs = cols.div_ceil(2);
            for r in 0..rows {
                let (src, dst) = (&scores[r * BK..r * BK + cols], &mut probs[r * BK..]);
                super::fused::round_to_bf16(src, &mut dst[..cols]);
                dst[cols..2 * pairs].fill(bf16::ZERO);
            }
            product_f32(
                probs,
                BK,
                rows,
                values,
                (0, d),
                (k0 / 2, pairs),
                acc,
                d,
                (1.0, true),
            );
            k0 += cols;
        }
        s.finish(rows, d, dst, super::fused::round_bf16);
    });
    out
}

/// `row[j] = exp(row[j] − max)` in place; returns the sum. With AVX2 and FMA where the CPU has
/// them (the loop vectorises to 8 lanes), else the baseline build.
fn exp_sub_sum(row: &mut [f32], max: f32) -> f32 {
    #[cfg(target_arch = "x86_64")]
    {
        if is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") {
            // SAFETY: the features were just detected.
            return unsafe { exp_sub_sum_avx2(row, max) };
        }
    }
    exp_sub_sum_generic(row, max)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn exp_sub_sum_avx2(row: &mut [f32], max: f32) -> f32 {
    exp_sub_sum_generic(row, max)
}

#[inline(always)]
fn exp_sub_sum_generic(row: &mut [f32], max: f32) -> f32 {
    let mut sum = [0f32; 8];
    let mut chunks = row.chunks_exact_mut(8);
    for chunk in &mut chunks {
        for (x, s) in chunk.iter_mut().zip(sum.iter_mut()) {
            *x = fast_exp(*x - max);
            *s += *x;
        }
    }
    let mut total: f32 = sum.iter().sum();
    for x in chunks.into_remainder() {
        *x = fast_exp(*x - max);
        total += *x;
    }
    total
}

/// `e^x` for `x ≤ 0` (softmax arguments after subtracting the row max): `2^(x·log2 e)` split
/// into the nearest integer power `n` (built in the exponent bits) and `2^f`, `|f| ≤ 1/2`, by
/// its degree-6 Taylor polynomial: relative error under 1e-6 on [−10, 0] (the rounding of
/// `x·log2 e` in f32 dominates), 1e-5 down to −87, and `2^-125` below.
/// Branch-free and cast-free so the loop vectorises: `n` is rounded by adding 1.5·2²³, which
/// leaves it in the sum's low mantissa bits (a float-to-int `as` cast saturates, and its
/// checks made the compiler convert lane by lane, three quarters of this function's time).
#[inline(always)]
pub(crate) fn fast_exp(x: f32) -> f32 {
    /// 1.5·2²³: for |t| < 2²², `t + ROUND` is `ROUND + round(t)` exactly.
    const ROUND: f32 = 12_582_912.0;
    // a comparison, not `f32::max` (whose NaN rule costs two more instructions per vector);
    // a NaN `x` gives e^-87 either way
    let x = if x > -87.0 { x } else { -87.0 };
    let t = x * std::f32::consts::LOG2_E;
    let shifted = t + ROUND;
    let f = t - (shifted - ROUND); // [-1/2, 1/2]
    let p = 1.540_353_e-4_f32;
    let p = p.mul_add(f, 1.333_355_8e-3);
    let p = p.mul_add(f, 9.618_129e-3);
    let p = p.mul_add(f, 5.550_411e-2);
    let p = p.mul_add(f, 2.402_265e-1);
    let p = p.mul_add(f, std::f32::consts::LN_2);
    let p = p.mul_add(f, 1.0);
    // round(t) + 127 in the exponent field: round(t) is in [-126, 0] for x in [-87, 0]
    let n = shifted.to_bits().wrapping_sub(ROUND.to_bits());
    p * f32::from_bits(n.wrapping_add(127) << 23)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fast_exp_is_close_to_exp() {
        // relative error: under 1e-6 where softmax weights matter; the f32 product x·log2(e)
        // limits it to ~1e-5 for the negligible weights near e^-87
        for (lo, bound) in [(-10.0f32, 1e-6f32), (-87.0, 1e-5)] {
            let mut worst = 0f32;
            for i in 0..=100_000 {
                let x = lo * i as f32 / 100_000.0;
                let (got, want) = (fast_exp(x), x.exp());
                worst = worst.max(((got - want) / want).abs());
            }
            assert!(worst < bound, "[{lo}, 0]: relative error {worst}");
        }
        assert_eq!(fast_exp(-200.0), fast_exp(-87.0));
    }
}
