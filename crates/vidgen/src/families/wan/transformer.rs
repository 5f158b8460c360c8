//! `WanTransformer3DModel`: the Wan2.1 video DiT.
//!
//! Latents are cut into spacetime patches; every block runs full 3D self-attention with RoPE
//! over all patches, cross-attention to the text, and an MLP, the first and last modulated by
//! AdaLN (shift, scale, gate) from the timestep plus a learned per-block table.

use candle_core::{bail, DType, Module, Result, Tensor};
use candle_nn::VarBuilder;

use super::config::WanTransformerConfig;
use crate::nn::attention::scaled_dot_product_attention;
use crate::nn::embed::timestep_embedding;
use crate::nn::fused;
use crate::nn::linear::{linear, Linear};
use crate::nn::norm::{LayerNorm, RmsNorm};
use crate::nn::patch::{patchify, unpatchify};
use crate::nn::rope::{apply_rotary_interleaved, Rope3d};
use crate::nn::step_cache::{self, FirstBlockCache};

/// Multi-head attention with RMS-normalised queries and keys (normalised across all heads).
#[derive(Debug, Clone)]
struct WanAttention {
    to_q: Linear,
    to_k: Linear,
    to_v: Linear,
    to_out: Linear,
    norm_q: RmsNorm,
    norm_k: RmsNorm,
    heads: usize,
}

impl WanAttention {
    fn new(dim: usize, heads: usize, eps: f64, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            to_q: linear(dim, dim, true, vb.pp("to_q"))?,
            to_k: linear(dim, dim, true, vb.pp("to_k"))?,
            to_v: linear(dim, dim, true, vb.pp("to_v"))?,
            to_out: linear(dim, dim, true, vb.pp("to_out").pp("0"))?,
            norm_q: RmsNorm::new(dim, eps, vb.pp("norm_q"))?,
            norm_k: RmsNorm::new(dim, eps, vb.pp("norm_k"))?,
            heads,
        })
    }

    /// `(B, N, D)` → `(B, H, N, d)`.
    fn split_heads(&self, xs: &Tensor) -> Result<Tensor> {
        let (b, n, dim) = xs.dims3()?;
        xs.reshape((b, n, self.heads, dim / self.heads))?
            .transpose(1, 2)?
            .contiguous()
    }

    /// * `hidden_states` — `(B, N, D)` queries' source
    /// * `context` — `(B, M, D)` keys/values' source (`None`: self-attention)
    /// * `rope` — `(cos, sin)` each `(N, d/2)`, applied to queries and keys (self-attention)
    ///
    /// Returns `(B, N, D)`.
    fn forward(
        &self,
        hidden_states: &Tensor,
        context: Option<&Tensor>,
        rope: Option<&(Tensor, Tensor)>,
    ) -> Result<Tensor> {
        let context = context.unwrap_or(hidden_states);
        let q = self.norm_q.forward(&self.to_q.forward(hidden_states)?)?;
        let k = self.norm_k.forward(&self.to_k.forward(context)?)?;
        let v = self.to_v.forward(context)?;
        let (mut q, mut k, v) = (
            self.split_heads(&q)?,
            self.split_heads(&k)?,
            self.split_heads(&v)?,
        );
        if let Some((cos, sin)) = rope {
            q = apply_rotary_interleaved(&q, cos, sin)?;
            k = apply_rotary_interleaved(&k, cos, sin)?;
        }
        let out = scaled_dot_product_attention(&q, &k, &v)?; // (B, H, N, d)
        let (b, h, n, d) = out.dims4()?;
        let out = out.transpose(1, 2)?.contiguous()?.reshape((b, n, h * d))?;
        self.to_out.forward(&out)
    }
}

/// The MLP: `Linear → GELU(tanh) → Linear` (`ffn.net.0.proj`, `ffn.net.2`).
#[derive(Debug, Clone)]
struct FeedForward {
    proj_in: Linear,
    proj_out: Linear,
}

impl FeedForward {
    fn new(dim: usize, inner: usize, vb: VarBuilder) -> Result<Self> {
        let vb = vb.pp("net");
        Ok(Self {
            proj_in: linear(dim, inner, true, vb.pp("0").pp("proj"))?,
            proj_out: linear(inner, dim, true, vb.pp("2"))?,
        })
    }
}

impl Module for FeedForward {
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        fused::gelu(&xs.apply(&self.proj_in)?)?.apply(&self.proj_out)
    }
}

/// One DiT block: self-attention, cross-attention to the text, MLP.
#[derive(Debug, Clone)]
struct WanTransformerBlock {
    norm1: LayerNorm,
    attn1: WanAttention,
    norm2: Option<LayerNorm>,
    attn2: WanAttention,
    norm3: LayerNorm,
    ffn: FeedForward,
    /// `(1, 6, D)` f32: learned offsets of shift/scale/gate (attention), shift/scale/gate (MLP).
    scale_shift_table: Tensor,
}

impl WanTransformerBlock {
    fn new(cfg: &WanTransformerConfig, vb: VarBuilder) -> Result<Self> {
        let dim = cfg.inner_dim();
        let heads = cfg.num_attention_heads;
        Ok(Self {
            norm1: LayerNorm::new(dim, cfg.eps, false, vb.pp("norm1"))?,
            attn1: WanAttention::new(dim, heads, cfg.eps, vb.pp("attn1"))?,
            norm2: if cfg.cross_attn_norm {
                Some(LayerNorm::new(dim, cfg.eps, true, vb.pp("norm2"))?)
            } else {
                None
            },
            attn2: WanAttention::new(dim, heads, cfg.eps, vb.pp("attn2"))?,
            norm3: LayerNorm::new(dim, cfg.eps, false, vb.pp("norm3"))?,
            ffn: FeedForward::new(dim, cfg.ffn_dim, vb.pp("ffn"))?,
            scale_shift_table: vb
                .get((1, 6, dim), "scale_shift_table")?
                .to_dtype(DType::F32)?,
        })
    }

    /// * `hidden_states` — `(B, N, D)` video tokens
    /// * `text_states` — `(B, L, D)` projected text
    /// * `timestep_proj` — `(B, 6, D)` per-sample modulation from the timestep
    /// * `rope` — `(cos, sin)` each `(N, d/2)`
    ///
    /// Returns `(B, N, D)`. Norms, modulation and residual sums run in f32 as in the reference.
    fn forward(
        &self,
        hidden_states: &Tensor,
        text_states: &Tensor,
        timestep_proj: &Tensor,
        rope: &(Tensor, Tensor),
    ) -> Result<Tensor> {
        let dtype = hidden_states.dtype();
        let mods = self
            .scale_shift_table
            .broadcast_add(&timestep_proj.to_dtype(DType::F32)?)?
            .chunk(6, 1)?; // 6 × (B, 1, D)
        let (shift_msa, scale_msa, gate_msa) = (&mods[0], &mods[1], &mods[2]);
        let (c_shift, c_scale, c_gate) = (&mods[3], &mods[4], &mods[5]);

        // 1. Self-attention over all spacetime tokens.
        let normed = self
            .norm1
            .forward_modulated(hidden_states, shift_msa, scale_msa, dtype)?;
        let attn = self.attn1.forward(&normed, None, Some(rope))?;
        let hidden_states = fused::gated_add(hidden_states, &attn, gate_msa)?;

        // 2. Cross-attention to the text (no modulation, no gate).
        let normed = match &self.norm2 {
            Some(norm) => norm.forward(&hidden_states)?.to_dtype(dtype)?,
            None => hidden_states.clone(),
        };
        let hidden_states =
            (&hidden_states + self.attn2.forward(&normed, Some(text_states), None)?)?;

        // 3. Feed-forward.
        let normed = self
            .norm3
            .forward_modulated(&hidden_states, c_shift, c_scale, dtype)?;
        let ff = self.ffn.forward(&normed)?;
        fused::gated_add(&hidden_states, &ff, c_gate)
    }
}

/// The Wan2.1 diffusion transformer.
#[derive(Debug, Clone)]
pub struct WanTransformer3D {
    cfg: WanTransformerConfig,
    patch: (usize, usize, usize),
    /// `patch_embedding` (a `Conv3d` with kernel = stride = patch) as a linear map on patches.
    patch_embedding: Linear,
    time_linear_1: Linear,
    time_linear_2: Linear,
    time_proj: Linear,
    text_linear_1: Linear,
    text_linear_2: Linear,
    blocks: Vec<WanTransformerBlock>,
    norm_out: LayerNorm,
    proj_out: Linear,
    /// `(1, 2, D)` f32: learned offsets of the output shift and scale.
    scale_shift_table: Tensor,
    rope: Rope3d,
    dtype: DType,
}

impl WanTransformer3D {
    /// Builds the model from `vb` (names as in diffusers' checkpoint: `blocks.{i}.attn1.to_q`, …).
    pub fn new(cfg: &WanTransformerConfig, vb: VarBuilder) -> Result<Self> {
        cfg.validate().map_err(candle_core::Error::Msg)?;
        let patch = cfg.patch().map_err(candle_core::Error::Msg)?;
        let dim = cfg.inner_dim();
        let (pt, ph, pw) = patch;
        let patch_features = cfg.in_channels * pt * ph * pw;
        let conv_w = vb
            .pp("patch_embedding")
            .get((dim, cfg.in_channels, pt, ph, pw), "weight")?;
        let conv_b = vb.pp("patch_embedding").get(dim, "bias")?;
        let patch_embedding = Linear::new(conv_w.reshape((dim, patch_features))?, Some(conv_b));

        let cond = vb.pp("condition_embedder");
        // The reference keeps the time embedder in f32 whatever the model dtype.
        let time_vb = cond.pp("time_embedder").set_dtype(DType::F32);
        let blocks = (0..cfg.num_layers)
            .map(|i| WanTransformerBlock::new(cfg, vb.pp("blocks").pp(i)))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            patch,
            patch_embedding,
            time_linear_1: linear(cfg.freq_dim, dim, true, time_vb.pp("linear_1"))?,
            time_linear_2: linear(dim, dim, true, time_vb.pp("linear_2"))?,
            time_proj: linear(dim, 6 * dim, true, cond.pp("time_proj"))?,
            text_linear_1: linear(
                cfg.text_dim,
                dim,
                true,
                cond.pp("text_embedder").pp("linear_1"),
            )?,
            text_linear_2: linear(dim, dim, true, cond.pp("text_embedder").pp("linear_2"))?,
            blocks,
            norm_out: LayerNorm::new(dim, cfg.eps, false, vb.pp("norm_out"))?,
            proj_out: linear(
                dim,
                cfg.out_channels() * pt * ph * pw,
                true,
                vb.pp("proj_out"),
            )?,
            scale_shift_table: vb
                .get((1, 2, dim), "scale_shift_table")?
                .to_dtype(DType::F32)?,
            rope: Rope3d::wan(cfg.attention_head_dim, 10000.0)?,
            dtype: vb.dtype(),
            cfg: cfg.clone(),
        })
    }

    pub fn config(&self) -> &WanTransformerConfig {
        &self.cfg
    }

    /// The dtype of the weights (and of the hidden states between blocks).
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// Projected text states for the cross-attention, `(B, L, text_dim)` → `(B, L, D)`; they
    /// depend only on the prompt, so the pipeline computes them once for all steps.
    pub fn embed_text(&self, encoder_hidden_states: &Tensor) -> Result<Tensor> {
        let hidden = encoder_hidden_states
            .to_dtype(self.dtype)?
            .apply(&self.text_linear_1)?;
        fused::gelu(&hidden)?.apply(&self.text_linear_2)
    }

    /// One denoising call.
    ///
    /// * `hidden_states` — `(B, C_in, T, H, W)` latents
    /// * `timestep` — `(B,)` diffusion time in [0, 1000]
    /// * `encoder_hidden_states` — `(B, L, text_dim)` text encoder states
    ///
    /// Returns the prediction `(B, C_out, T, H, W)` in the model dtype.
    pub fn forward(
        &self,
        hidden_states: &Tensor,
        timestep: &Tensor,
        encoder_hidden_states: &Tensor,
    ) -> Result<Tensor> {
        let text_states = self.embed_text(encoder_hidden_states)?;
        self.forward_with_text(hidden_states, timestep, &text_states)
    }

    /// As [`Self::forward`], with text states already projected by [`Self::embed_text`].
    pub fn forward_with_text(
        &self,
        hidden_states: &Tensor,
        timestep: &Tensor,
        text_states: &Tensor,
    ) -> Result<Tensor> {
        self.forward_cached(hidden_states, timestep, text_states, None)
    }

    /// As [`Self::forward_with_text`]; with a `cache`, the blocks after the first are skipped
    /// when it says their result can be reused (one cache per generation, see
    /// [`FirstBlockCache`]).
    pub fn forward_cached(
        &self,
        hidden_states: &Tensor,
        timestep: &Tensor,
        text_states: &Tensor,
        cache: Option<&mut FirstBlockCache>,
    ) -> Result<Tensor> {
        let (b, c, t, h, w) = hidden_states.dims5()?;
        let (pt, ph, pw) = self.patch;
        if c != self.cfg.in_channels || t % pt != 0 || h % ph != 0 || w % pw != 0 {
            bail!(
                "expected latents (B, {}, T, H, W) with T, H, W multiples of {:?}, got {:?}",
                self.cfg.in_channels,
                self.patch,
                hidden_states.shape()
            )
        }
        let grid = (t / pt, h / ph, w / pw);
        let max = self.cfg.rope_max_seq_len;
        if grid.0 > max || grid.1 > max || grid.2 > max {
            bail!("patch grid {grid:?} exceeds rope_max_seq_len {max} of this model")
        }
        if timestep.dims() != [b] || text_states.dim(0)? != b {
            bail!(
                "expected timestep ({b},) and text states ({b}, L, D), got {:?} and {:?}",
                timestep.shape(),
                text_states.shape()
            )
        }
        let device = hidden_states.device();
        let rope = self.rope.cos_sin(grid, device)?;

        // 1. Patch embedding: b c (t pt) (h ph) (w pw) -> b (t h w) (c pt ph pw) -> b N D
        let tokens = patchify(&hidden_states.to_dtype(self.dtype)?, self.patch)?;
        let hidden = self.patch_embedding.forward(&tokens)?;

        // 2. Timestep conditioning: temb (B, D), timestep_proj (B, 6, D).
        let t_freq = timestep_embedding(timestep, self.cfg.freq_dim)?;
        let temb = t_freq
            .apply(&self.time_linear_1)?
            .silu()?
            .apply(&self.time_linear_2)?
            .to_dtype(self.dtype)?;
        let dim = self.cfg.inner_dim();
        let timestep_proj = temb.silu()?.apply(&self.time_proj)?.reshape((b, 6, dim))?;

        // 3. Blocks; with a cache, the first decides whether the others run.
        let hidden = step_cache::run_blocks(
            &self.blocks,
            hidden,
            cache,
            |block, h| block.forward(&h, text_states, &timestep_proj, &rope),
            |h| h,
        )?;

        // 4. Output norm, modulated by the timestep embedding, and projection to patches.
        let mods = self
            .scale_shift_table
            .broadcast_add(&temb.to_dtype(DType::F32)?.unsqueeze(1)?)?
            .chunk(2, 1)?; // shift, scale: (B, 1, D)
        let normed = self
            .norm_out
            .forward_modulated(&hidden, &mods[0], &mods[1], self.dtype)?;
        let out = normed.apply(&self.proj_out)?;

        // 5. b (t h w) (pt ph pw c) -> b c (t pt) (h ph) (w pw)
        unpatchify(&out, grid, self.patch)
    }

    /// Number of tokens for a latent of `(T, H, W)`: `T/pt · H/ph · W/pw`.
    pub fn num_tokens(&self, latent: (usize, usize, usize)) -> usize {
        let (pt, ph, pw) = self.patch;
        (latent.0 / pt) * (latent.1 / ph) * (latent.2 / pw)
    }
}
