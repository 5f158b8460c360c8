//! First-block cache: skip most of a transformer's blocks on denoising steps where they would
//! change little.
//!
//! Between neighbouring denoising steps a DiT's output moves slowly, and how much it moves shows
//! already in what its first block adds to the hidden states. So every step runs the first
//! block; if its residual (`output − input`) differs from the one of the last fully computed
//! step by less than `threshold` (mean absolute difference over the mean absolute value of the
//! old one), the remaining blocks are skipped and their residual from that step is added
//! instead. This is diffusers' `FirstBlockCacheConfig` / `apply_first_block_cache` (after
//! ParaAttention's "First Block Cache", a simpler form of TeaCache), with the same rule, so a
//! threshold means the same in both; `tests/step_cache.rs` checks the Wan, LTX-Video and
//! CogVideoX pipelines against it.
//!
//! One cache serves one generation: the calls of its denoising loop, in order. With classifier-
//! free guidance batched as vidgen runs it (prompt and negative prompt in one call), one
//! decision covers both halves of the batch.

use candle_core::{DType, Result, Tensor};

/// The state carried from one denoising call to the next.
#[derive(Debug, Clone)]
pub struct FirstBlockCache {
    threshold: f64,
    /// What the first block added to the hidden states on the last fully computed call.
    head_residual: Option<Tensor>,
    /// What the blocks after the first added on that call.
    tail_residual: Option<Tensor>,
    computed: usize,
    skipped: usize,
}

impl FirstBlockCache {
    /// A cache that skips when the first block's residual changed by less than `threshold`
    /// (relative; diffusers' default 0.05, 0.1–0.2 for more speed).
    pub fn new(threshold: f64) -> Self {
        Self {
            threshold,
            head_residual: None,
            tail_residual: None,
            computed: 0,
            skipped: 0,
        }
    }

    /// Calls that ran every block.
    pub fn computed(&self) -> usize {
        self.computed
    }

    /// Calls that reused the cached residual of the later blocks.
    pub fn skipped(&self) -> usize {
        self.skipped
    }

    /// After the first block, which took the hidden states `input` and returned `head`: the
    /// hidden states the last block would return, from the cached residual, when the others
    /// may be skipped; `None` when they must run (then [`Self::remember`] their result).
    pub fn reuse(&mut self, input: &Tensor, head: &Tensor) -> Result<Option<Tensor>> {
        let residual = (head - input)?;
        if let (Some(previous), Some(tail)) = (&self.head_residual, &self.tail_residual) {
            if previous.shape() == residual.shape()
                && relative_change(&residual, previous)? < self.threshold
            {
                self.skipped += 1;
                return Ok(Some((head + tail)?));
            }
        }
        self.head_residual = Some(residual);
        self.tail_residual = None;
        Ok(None)
    }

    /// After a fully computed call: `head` as given to [`Self::reuse`], `last` what the last
    /// block returned.
    pub fn remember(&mut self, head: &Tensor, last: &Tensor) -> Result<()> {
        self.tail_residual = Some((last - head)?);
        self.computed += 1;
        Ok(())
    }
}

/// Runs `blocks` one after another over `state` (`run(block, state)` gives the next state) and
/// returns the hidden states of the last (`hidden` picks them from a state; a joint-attention
/// model's state also holds the text stream, whose final value the caller does not need).
/// With a cache and more than one block, the first block's result decides whether the others
/// run.
pub fn run_blocks<B, S: Clone>(
    blocks: &[B],
    state: S,
    cache: Option<&mut FirstBlockCache>,
    run: impl Fn(&B, S) -> Result<S>,
    hidden: fn(&S) -> &Tensor,
) -> Result<Tensor> {
    let (cache, head, rest) = match (cache, blocks.split_first()) {
        (Some(cache), Some((head, rest))) if !rest.is_empty() => (cache, head, rest),
        _ => {
            let last = blocks.iter().try_fold(state, |s, block| run(block, s))?;
            return Ok(hidden(&last).clone());
        }
    };
    let input = hidden(&state).clone();
    let first = run(head, state)?;
    if let Some(reused) = cache.reuse(&input, hidden(&first))? {
        return Ok(reused);
    }
    let last = rest
        .iter()
        .try_fold(first.clone(), |s, block| run(block, s))?;
    cache.remember(hidden(&first), hidden(&last))?;
    Ok(hidden(&last).clone())
}

/// `mean |a − b| / mean |b|`, in f32.
fn relative_change(a: &Tensor, b: &Tensor) -> Result<f64> {
    let a = a.to_dtype(DType::F32)?;
    let b = b.to_dtype(DType::F32)?;
    let diff = (&a - &b)?.abs()?.mean_all()?.to_scalar::<f32>()?;
    let norm = b.abs()?.mean_all()?.to_scalar::<f32>()?;
    Ok(diff as f64 / norm as f64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn t(values: &[f32]) -> Tensor {
        Tensor::new(values, &Device::Cpu).unwrap()
    }

    #[test]
    fn skips_only_below_the_threshold_and_adds_the_cached_tail() -> Result<()> {
        let mut cache = FirstBlockCache::new(0.1);
        // first call: nothing cached, must compute
        let (x, head, tail) = (t(&[0., 0.]), t(&[1., 1.]), t(&[3., 5.]));
        assert!(cache.reuse(&x, &head)?.is_none());
        cache.remember(&head, &tail)?;
        // residual 1.0625 vs 1.0: 6 % change, skipped: head + (tail − head) of the first call
        let head2 = t(&[1.0625, 1.0625]);
        let out = cache.reuse(&x, &head2)?.expect("skipped");
        assert_eq!(out.to_vec1::<f32>()?, [3.0625, 5.0625]);
        // 50 % change against the last computed residual: computed again
        let head3 = t(&[1.5, 1.5]);
        assert!(cache.reuse(&x, &head3)?.is_none());
        assert_eq!((cache.computed(), cache.skipped()), (1, 1));
        Ok(())
    }

    #[test]
    fn a_new_shape_is_computed() -> Result<()> {
        let mut cache = FirstBlockCache::new(1.0);
        let (x, head) = (t(&[0., 0.]), t(&[1., 1.]));
        assert!(cache.reuse(&x, &head)?.is_none());
        cache.remember(&head, &head)?;
        let (x, head) = (t(&[0.]), t(&[1.]));
        assert!(cache.reuse(&x, &head)?.is_none());
        Ok(())
    }
}
