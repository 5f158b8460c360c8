//! The bf16 linear layer of the CPU on the AVX-512 BF16 dot product (`vdpbf16ps`: 32 bf16
//! products summed pairwise into 16 f32 lanes per instruction, twice the f32 FMA rate).
//! candle 0.11 runs bf16 matmuls on the CPU by widening to f32 (slower than f32 itself); this
//! computes `y = x·Wᵀ + b` from the bf16 operands directly, accumulating in f32 and rounding
//! the output once, as PyTorch's oneDNN path does.
//!
//! `W` (`(n, k)`, the checkpoint's layout) is packed per call into column panels of [`NR`]
//! outputs whose `k` pairs are interleaved (the operand layout of `vdpbf16ps`); rows of `x` are
//! read in place, one `k` pair broadcast at a time. A register tile is [`MR`] rows × [`NR`]
//! columns (24 zmm accumulators). Threads split (panel, row block) pairs.

use half::bf16;
use rayon::prelude::*;

/// Output columns per panel: two zmm registers of 16 f32.
const NR: usize = 32;
/// Rows per register tile.
const MR: usize = 12;

/// Whether this CPU has the instructions ([`linear`] panics without them).
pub fn available() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        is_x86_feature_detected!("avx512f")
            && is_x86_feature_detected!("avx512bw")
            && is_x86_feature_detected!("avx512vl")
            && is_x86_feature_detected!("avx512bf16")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// `x·Wᵀ + bias` for `x` `(m, k)` and `w` `(n, k)` (row-major bf16, `k` even), `bias` `n`
/// values: `(m, n)` bf16, rounded to nearest even from the f32 accumulators. Packs `w` for
/// this call; a layer called many times packs once ([`Panels::from_rows`]) and calls
/// [`linear_packed`].
pub fn linear(
    x: &[bf16],
    w: &[bf16],
    bias: Option<&[f32]>,
    (m, n, k): (usize, usize, usize),
) -> Vec<bf16> {
    assert!(available(), "bf16_gemm::linear needs AVX-512 BF16");
    assert!(k % 2 == 0, "bf16_gemm::linear needs an even k, got {k}");
    assert_eq!(w.len(), n * k, "w is not (n, k)");
    linear_packed(x, &Panels::from_rows(w, n, k), bias, m)
}

/// [`linear`] against a weight packed beforehand: `x` `(m, k)` with `k` the packed rows'
/// length (even).
pub fn linear_packed(x: &[bf16], w: &Panels, bias: Option<&[f32]>, m: usize) -> Vec<bf16> {
    assert!(available(), "bf16_gemm::linear needs AVX-512 BF16");
    let (n, k, pairs) = (w.n, w.k, w.pairs);
    assert!(k % 2 == 0, "bf16_gemm::linear needs an even k, got {k}");
    assert_eq!(x.len(), m * k, "x is not (m, k)");
    if let Some(b) = bias {
        assert_eq!(b.len(), n, "bias is not (n,)");
    }
    if m == 0 || n == 0 {
        return vec![bf16::ZERO; m * n];
    }
    let panels = n.div_ceil(NR);
    // enough tasks for every thread even when the panels are few: split the rows too
    let threads = rayon::current_num_threads().max(1);
    let row_splits = (4 * threads).div_ceil(panels).min(m.div_ceil(MR)).max(1);
    let rows_per_task = m.div_ceil(row_splits).div_ceil(MR) * MR;
    let tasks: Vec<(usize, usize)> = (0..panels)
        .flat_map(|p| (0..m).step_by(rows_per_task).map(move |r| (p, r)))
        .collect();
    // every element is written below (the tasks tile all rows × all panels, and a tile stores
    // all its columns), so the buffer is not zeroed first: zeroing was 1-2 % of a bf16 forward
    let mut out: Vec<bf16> = Vec::with_capacity(m * n);
    let out_ptr = SendPtr(out.as_mut_ptr());
    tasks.par_iter().for_each(|&(p, row0)| {
        let rows = rows_per_task.min(m - row0);
        let col0 = p * NR;
        let cols = NR.min(n - col0);
        let mut b = [0f32; NR];
        if let Some(bias) = bias {
            b[..cols].copy_from_slice(&bias[col0..col0 + cols]);
        }
        let panel = &w.data[p * pairs * NR..(p + 1) * pairs * NR];
        let mut r = row0;
        while r < row0 + rows {
            let tile_rows = MR.min(row0 + rows - r);
            let tile = Tile {
                x: x[r * k..(r + tile_rows) * k].as_ptr(),
                ld_x: k,
                pairs,
                panel: panel.as_ptr(),
                // SAFETY: tasks cover disjoint (row, column) blocks of `out`'s allocation; the
                // tile writes rows r..r + tile_rows, columns col0..col0 + cols, all inside it
                out: Out::Bf16 {
                    ptr: unsafe { out_ptr.get().add(r * n + col0) },
                    bias: b,
                },
                ld_out: n,
                cols,
            };
            // SAFETY: `available()` was checked above; the operands hold the rows and pairs
            unsafe { tile.run(tile_rows) };
            r += tile_rows;
        }
    });
    // SAFETY: the loop above wrote all m · n elements (see the comment at the allocation)
    unsafe { out.set_len(m * n) };
    out
}

/// Two bf16 as the u32 lane `vdpbf16ps` reads: `lo` in the low half.
fn pair_bits(lo: bf16, hi: bf16) -> u32 {
    lo.to_bits() as u32 | (hi.to_bits() as u32) << 16
}

/// A right-hand operand packed once for many [`product_f32`] calls: `n` outputs of `k` terms
/// (an odd `k` padded with a zero), in panels of [`NR`] outputs × `k / 2` pairs.
pub struct Panels {
    data: Vec<u32>,
    pairs: usize,
    n: usize,
    k: usize,
}

impl std::fmt::Debug for Panels {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Panels({} × {}, bf16 pairs)", self.n, self.k)
    }
}

impl Panels {
    /// From `(n, k)` row-major: each output's terms contiguous (a linear layer's weight,
    /// attention's keys). Panels are packed in parallel.
    pub fn from_rows(w: &[bf16], n: usize, k: usize) -> Self {
        assert_eq!(w.len(), n * k, "not (n, k)");
        let pairs = k.div_ceil(2);
        let mut data = vec![0u32; n.div_ceil(NR) * pairs * NR];
        // panel p, pair q, column j: the u32 of (w[c][2q], w[c][2q + 1]), c = p NR + j
        data.par_chunks_mut(pairs * NR)
            .enumerate()
            .for_each(|(p, panel)| {
                let cols = NR.min(n - p * NR);
                let rows: [&[bf16]; NR] = std::array::from_fn(|j| {
                    let j = j.min(cols - 1); // rows past `cols` are never stored
                    &w[(p * NR + j) * k..(p * NR + j + 1) * k]
                });
                // a transpose of (cols × pairs) u32 into (pairs × NR): in blocks of BLOCK pairs,
                // read along each row and written along each output pair (several times faster
                // than element by element, which was ~10 % of a bf16 linear)
                const BLOCK: usize = 16;
                let full = if cols == NR { k / 2 / BLOCK * BLOCK } else { 0 };
                for q0 in (0..full).step_by(BLOCK) {
                    let mut tile = [[0u32; BLOCK]; NR];
                    for (t, row) in tile.iter_mut().zip(&rows) {
                        let src = &row[2 * q0..2 * (q0 + BLOCK)];
                        *t = std::array::from_fn(|i| pair_bits(src[2 * i], src[2 * i + 1]));
                    }
                    for (i, dst) in panel[q0 * NR..(q0 + BLOCK) * NR]
                        .chunks_exact_mut(NR)
                        .enumerate()
                    {
                        for (d, t) in dst.iter_mut().zip(&tile) {
                            *d = t[i];
                        }
                    }
                }
                for (j, row) in rows.iter().enumerate().take(cols) {
                    for q in full..pairs {
                        let hi = row.get(2 * q + 1).copied().unwrap_or(bf16::ZERO);
                        panel[q * NR + j] = pair_bits(row[2 * q], hi);
                    }
                }
            });
        Self { data, pairs, n, k }
    }

    /// `(outputs, terms)`: the `(n, k)` of [`Panels::from_rows`].
    pub fn dims(&self) -> (usize, usize) {
        (self.n, self.k)
    }

    /// Back to `(n, k)` row-major (the inverse of [`Panels::from_rows`]).
    pub fn to_rows(&self) -> Vec<bf16> {
        let (n, k, pairs) = (self.n, self.k, self.pairs);
        let mut w = vec![bf16::ZERO; n * k];
        for (c, row) in w.chunks_exact_mut(k.max(1)).enumerate().take(n) {
            let panel = &self.data[(c / NR) * pairs * NR..];
            for (q, pair) in row.chunks_mut(2).enumerate() {
                let bits = panel[q * NR + c % NR];
                pair[0] = bf16::from_bits(bits as u16);
                if let Some(hi) = pair.get_mut(1) {
                    *hi = bf16::from_bits((bits >> 16) as u16);
                }
            }
        }
        w
    }

    /// From `(k, n)` row-major: each term's outputs contiguous (attention's values, `B = vᵀ`).
    pub fn from_columns(v: &[bf16], k: usize, n: usize) -> Self {
        assert_eq!(v.len(), k * n, "not (k, n)");
        let pairs = k.div_ceil(2);
        let mut data = vec![0u32; n.div_ceil(NR) * pairs * NR];
        for q in 0..pairs {
            let lo = &v[2 * q * n..(2 * q + 1) * n];
            let hi = v.get((2 * q + 1) * n..(2 * q + 2) * n);
            for c in 0..n {
                let h = hi.map_or(bf16::ZERO, |h| h[c]);
                data[(c / NR) * pairs * NR + q * NR + c % NR] = pair_bits(lo[c], h);
            }
        }
        Self { data, pairs, n, k }
    }
}

/// `out = alpha · x · Bᵀ` (`+ out` with `accumulate`) on one thread, over `B`'s outputs
/// `col0..col0 + cols` (`col0` a multiple of [`NR`]) and its term pairs `pair0..pair0 + pairs`:
/// `x` holds `rows` rows at stride `ld_x` whose first `2 · pairs` values are those terms (an odd
/// last term padded with a zero), `out` `rows` rows of `cols` at stride `ld_out`.
#[allow(clippy::too_many_arguments)]
pub fn product_f32(
    x: &[bf16],
    ld_x: usize,
    rows: usize,
    b: &Panels,
    (col0, cols): (usize, usize),
    (pair0, pairs): (usize, usize),
    out: &mut [f32],
    ld_out: usize,
    (alpha, accumulate): (f32, bool),
) {
    assert!(available(), "bf16_gemm::product_f32 needs AVX-512 BF16");
    assert!(
        col0 % NR == 0 && col0 + cols <= b.n,
        "columns out of the operand"
    );
    assert!(pair0 + pairs <= b.pairs, "pairs out of the operand");
    assert!(
        rows == 0 || (rows - 1) * ld_x + 2 * pairs <= x.len(),
        "x too short"
    );
    assert!(
        rows == 0 || (rows - 1) * ld_out + cols <= out.len(),
        "out too short"
    );
    let mut r = 0;
    while r < rows {
        let tile_rows = MR.min(rows - r);
        let mut c = 0;
        while c < cols {
            let panel = (col0 + c) / NR;
            let tile = Tile {
                x: x[r * ld_x..].as_ptr(),
                ld_x,
                pairs,
                panel: b.data[(panel * b.pairs + pair0) * NR..].as_ptr(),
                out: Out::F32 {
                    // SAFETY: inside `out` by the asserts above
                    ptr: unsafe { out.as_mut_ptr().add(r * ld_out + c) },
                    alpha,
                    accumulate,
                },
                ld_out,
                cols: NR.min(cols - c),
            };
            // SAFETY: `available()` was checked; the asserts bound every read and write
            unsafe { tile.run(tile_rows) };
            c += NR;
        }
        r += tile_rows;
    }
}

struct SendPtr(*mut bf16);
// SAFETY: only used to hand disjoint output blocks to rayon tasks.
unsafe impl Sync for SendPtr {}
impl SendPtr {
    fn get(&self) -> *mut bf16 {
        self.0
    }
}

/// One register tile's operands: up to [`MR`] rows of `x` (row stride `ld_x`, starting at its
/// first pair) against `pairs` pairs of one packed panel (starting at the same pair).
struct Tile {
    x: *const bf16,
    ld_x: usize,
    pairs: usize,
    panel: *const u32,
    out: Out,
    ld_out: usize,
    cols: usize,
}

/// Where a tile's `cols` columns go.
enum Out {
    /// `acc + bias`, rounded to bf16.
    Bf16 { ptr: *mut bf16, bias: [f32; NR] },
    /// `alpha · acc`, added to what is there with `accumulate`.
    F32 {
        ptr: *mut f32,
        alpha: f32,
        accumulate: bool,
    },
}

impl Tile {
    /// # Safety
    /// The CPU has AVX-512 F/BW/VL/BF16; `out` is valid for `rows` rows of `cols` values at
    /// stride `ld_out`.
    unsafe fn run(&self, rows: usize) {
        #[cfg(target_arch = "x86_64")]
        match rows {
            12 => self.kernel::<12>(),
            11 => self.kernel::<11>(),
            10 => self.kernel::<10>(),
            9 => self.kernel::<9>(),
            8 => self.kernel::<8>(),
            7 => self.kernel::<7>(),
            6 => self.kernel::<6>(),
            5 => self.kernel::<5>(),
            4 => self.kernel::<4>(),
            3 => self.kernel::<3>(),
            2 => self.kernel::<2>(),
            1 => self.kernel::<1>(),
            _ => unreachable!("tiles hold 1..=MR rows"),
        }
        #[cfg(not(target_arch = "x86_64"))]
        unreachable!("bf16_gemm::available() is false off x86_64 ({rows} rows)")
    }

    #[cfg(target_arch = "x86_64")]
    #[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16")]
    unsafe fn kernel<const R: usize>(&self) {
        use std::arch::x86_64::*;
        let mut acc = [[_mm512_setzero_ps(); 2]; R];
        for q in 0..self.pairs {
            let b0: __m512bh =
                std::mem::transmute(_mm512_loadu_si512(self.panel.add(q * NR).cast()));
            let b1: __m512bh =
                std::mem::transmute(_mm512_loadu_si512(self.panel.add(q * NR + 16).cast()));
            for (r, acc) in acc.iter_mut().enumerate() {
                let pair = self
                    .x
                    .add(r * self.ld_x + 2 * q)
                    .cast::<i32>()
                    .read_unaligned();
                let a: __m512bh = std::mem::transmute(_mm512_set1_epi32(pair));
                acc[0] = _mm512_dpbf16_ps(acc[0], a, b0);
                acc[1] = _mm512_dpbf16_ps(acc[1], a, b1);
            }
        }
        // columns of the two halves that exist
        let masks = [
            mask16(self.cols.min(16)),
            mask16(self.cols.saturating_sub(16)),
        ];
        match &self.out {
            Out::Bf16 { ptr, bias } => {
                let bias = [
                    _mm512_loadu_ps(bias.as_ptr()),
                    _mm512_loadu_ps(bias.as_ptr().add(16)),
                ];
                for (r, acc) in acc.iter().enumerate() {
                    let dst = ptr.add(r * self.ld_out);
                    for h in 0..2 {
                        if masks[h] == 0 {
                            continue;
                        }
                        let y: __m256i =
                            std::mem::transmute(_mm512_cvtneps_pbh(_mm512_add_ps(acc[h], bias[h])));
                        _mm256_mask_storeu_epi16(dst.add(16 * h).cast(), masks[h], y);
                    }
                }
            }
            Out::F32 {
                ptr,
                alpha,
                accumulate,
            } => {
                let alpha = _mm512_set1_ps(*alpha);
                for (r, acc) in acc.iter().enumerate() {
                    let dst = ptr.add(r * self.ld_out);
                    for h in 0..2 {
                        if masks[h] == 0 {
                            continue;
                        }
                        let d = dst.add(16 * h);
                        let mut y = _mm512_mul_ps(acc[h], alpha);
                        if *accumulate {
                            y = _mm512_add_ps(y, _mm512_maskz_loadu_ps(masks[h], d));
                        }
                        _mm512_mask_storeu_ps(d, masks[h], y);
                    }
                }
            }
        }
    }
}

/// The first `n` (≤ 16) lanes.
fn mask16(n: usize) -> u16 {
    if n >= 16 {
        u16::MAX
    } else {
        (1u16 << n) - 1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reference(
        x: &[bf16],
        w: &[bf16],
        bias: Option<&[f32]>,
        (m, n, k): (usize, usize, usize),
    ) -> Vec<f32> {
        let mut out = vec![0f32; m * n];
        for i in 0..m {
            for j in 0..n {
                let mut s = bias.map_or(0.0, |b| b[j]) as f64;
                for l in 0..k {
                    s += x[i * k + l].to_f64() * w[j * k + l].to_f64();
                }
                out[i * n + j] = s as f32;
            }
        }
        out
    }

    #[test]
    fn packing_round_trips_and_packed_products_match() {
        if !available() {
            eprintln!("skipped: this CPU has no AVX-512 BF16");
            return;
        }
        for (m, n, k) in [(5, 33, 6), (13, 64, 34), (1, 7, 130)] {
            let w: Vec<bf16> = (0..n * k)
                .map(|i| bf16::from_f32(i as f32 * 0.25 - 3.0))
                .collect();
            let x: Vec<bf16> = (0..m * k)
                .map(|i| bf16::from_f32((i % 7) as f32 - 3.0))
                .collect();
            let packed = Panels::from_rows(&w, n, k);
            assert_eq!(packed.dims(), (n, k));
            assert_eq!(packed.to_rows(), w, "({n}, {k}) round trip");
            let once = linear(&x, &w, None, (m, n, k));
            assert_eq!(linear_packed(&x, &packed, None, m), once);
            assert_eq!(linear_packed(&x, &packed, None, m), once, "reused");
        }
    }

    #[test]
    fn matches_a_wide_reference_on_ragged_shapes() {
        if !available() {
            eprintln!("skipped: this CPU has no AVX-512 BF16");
            return;
        }
        let mut seed = 1u32;
        let mut rand = move || {
            seed = seed.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
            (seed >> 8) as f32 / (1u32 << 24) as f32 * 2.0 - 1.0
        };
        for (m, n, k) in [
            (1, 1, 2),
            (13, 33, 6),
            (25, 64, 130),
            (12, 32, 64),
            (40, 5, 258),
            (3, 100, 2),
            (7, 70, 100),
        ] {
            let x: Vec<bf16> = (0..m * k).map(|_| bf16::from_f32(rand())).collect();
            let w: Vec<bf16> = (0..n * k).map(|_| bf16::from_f32(rand())).collect();
            let bias: Vec<f32> = (0..n).map(|_| rand()).collect();
            for b in [None, Some(bias.as_slice())] {
                let ours = linear(&x, &w, b, (m, n, k));
                let want = reference(&x, &w, b, (m, n, k));
                for (i, (o, r)) in ours.iter().zip(&want).enumerate() {
                    // one bf16 rounding of the output (2^-8 relative) plus f32 summation order
                    let tol = r.abs() / 128.0 + 1e-4 * k as f32;
                    assert!(
                        (o.to_f32() - r).abs() <= tol,
                        "({m}, {n}, {k}) element {i}: {} vs {r}",
                        o.to_f32()
                    );
                }
            }
        }
    }
}
