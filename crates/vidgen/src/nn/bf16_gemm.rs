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
/// values: `(m, n)` bf16, rounded to nearest even from the f32 accumulators.
pub fn linear(
    x: &[bf16],
    w: &[bf16],
    bias: Option<&[f32]>,
    (m, n, k): (usize, usize, usize),
) -> Vec<bf16> {
    assert!(available(), "bf16_gemm::linear needs AVX-512 BF16");
    assert!(k % 2 == 0, "bf16_gemm::linear needs an even k, got {k}");
    assert_eq!(x.len(), m * k, "x is not (m, k)");
    assert_eq!(w.len(), n * k, "w is not (n, k)");
    if let Some(b) = bias {
        assert_eq!(b.len(), n, "bias is not (n,)");
    }
    let mut out = vec![bf16::ZERO; m * n];
    if m == 0 || n == 0 {
        return out;
    }
    let panels = n.div_ceil(NR);
    let pairs = k / 2;
    // panel p, pair q, column j: the u32 holding (w[c][2q], w[c][2q + 1]) of column c = p NR + j
    let mut packed = vec![0u32; panels * pairs * NR];
    packed
        .par_chunks_mut(pairs * NR)
        .enumerate()
        .for_each(|(p, panel)| pack_panel(w, k, n, p * NR, panel));

    // enough tasks for every thread even when the panels are few: split the rows too
    let threads = rayon::current_num_threads().max(1);
    let row_splits = (4 * threads).div_ceil(panels).min(m.div_ceil(MR)).max(1);
    let rows_per_task = m.div_ceil(row_splits).div_ceil(MR) * MR;
    let tasks: Vec<(usize, usize)> = (0..panels)
        .flat_map(|p| (0..m).step_by(rows_per_task).map(move |r| (p, r)))
        .collect();
    let out_ptr = SendPtr(out.as_mut_ptr());
    tasks.par_iter().for_each(|&(p, row0)| {
        let rows = rows_per_task.min(m - row0);
        let col0 = p * NR;
        let cols = NR.min(n - col0);
        let mut b = [0f32; NR];
        if let Some(bias) = bias {
            b[..cols].copy_from_slice(&bias[col0..col0 + cols]);
        }
        let panel = &packed[p * pairs * NR..(p + 1) * pairs * NR];
        let mut r = row0;
        while r < row0 + rows {
            let tile_rows = MR.min(row0 + rows - r);
            let tile = Tile {
                x: &x[r * k..(r + tile_rows) * k],
                k,
                panel,
                bias: &b,
                // SAFETY: tasks cover disjoint (row, column) blocks of `out`; the tile writes
                // rows r..r + tile_rows, columns col0..col0 + cols, all inside `out`
                out: unsafe { out_ptr.get().add(r * n + col0) },
                ld_out: n,
                cols,
            };
            // SAFETY: `available()` was checked above
            unsafe { tile.run(tile_rows) };
            r += tile_rows;
        }
    });
    out
}

/// Columns `col0..col0 + NR` of `w` (`(n, k)`) as `k / 2` rows of `NR` pairs; columns past `n`
/// stay zero.
fn pack_panel(w: &[bf16], k: usize, n: usize, col0: usize, panel: &mut [u32]) {
    let pairs = k / 2;
    for j in 0..NR.min(n - col0) {
        let row = &w[(col0 + j) * k..(col0 + j + 1) * k];
        for (q, pair) in row.chunks_exact(2).enumerate() {
            panel[q * NR + j] = pair[0].to_bits() as u32 | (pair[1].to_bits() as u32) << 16;
        }
    }
    debug_assert_eq!(panel.len(), pairs * NR);
}

struct SendPtr(*mut bf16);
// SAFETY: only used to hand disjoint output blocks to rayon tasks.
unsafe impl Sync for SendPtr {}
impl SendPtr {
    fn get(&self) -> *mut bf16 {
        self.0
    }
}

/// One register tile's operands: up to [`MR`] rows of `x` against one packed panel.
struct Tile<'a> {
    x: &'a [bf16],
    k: usize,
    panel: &'a [u32],
    bias: &'a [f32; NR],
    out: *mut bf16,
    ld_out: usize,
    cols: usize,
}

impl Tile<'_> {
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
        let x = self.x.as_ptr();
        let panel = self.panel.as_ptr();
        for q in 0..self.k / 2 {
            let b0: __m512bh = std::mem::transmute(_mm512_loadu_si512(panel.add(q * NR).cast()));
            let b1: __m512bh =
                std::mem::transmute(_mm512_loadu_si512(panel.add(q * NR + 16).cast()));
            for (r, acc) in acc.iter_mut().enumerate() {
                let pair = x.add(r * self.k + 2 * q).cast::<i32>().read_unaligned();
                let a: __m512bh = std::mem::transmute(_mm512_set1_epi32(pair));
                acc[0] = _mm512_dpbf16_ps(acc[0], a, b0);
                acc[1] = _mm512_dpbf16_ps(acc[1], a, b1);
            }
        }
        let bias = [
            _mm512_loadu_ps(self.bias.as_ptr()),
            _mm512_loadu_ps(self.bias.as_ptr().add(16)),
        ];
        // columns of the two halves that exist
        let lo = self.cols.min(16);
        let hi = self.cols.saturating_sub(16);
        let masks = [mask16(lo), mask16(hi)];
        for (r, acc) in acc.iter().enumerate() {
            let dst = self.out.add(r * self.ld_out);
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
