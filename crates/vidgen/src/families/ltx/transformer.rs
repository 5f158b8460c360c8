//! `LTXVideoTransformer3DModel`: the LTX-Video DiT.
//!
//! The pipeline packs latents into tokens `(B, T·H·W, C)` itself; the model projects them to the
//! hidden size, and every block runs self-attention over all tokens with the fractional RoPE
//! of [`super::rope`], cross-attention to the projected T5 caption (masked where the prompt is
//! padding), and a GELU MLP. Self-attention and MLP are modulated by AdaLN-single (shift, scale,
//! gate from one timestep embedding plus a learned per-block table); the timestep may be given
//! per sample or per token.

use candle_core::{bail, DType, Module, Result, Tensor};
use candle_nn::VarBuilder;

use super::config::LtxVideoTransformer3DConfig;
use super::rope::{apply_rotary, LtxRope};
use crate::nn::attention::scaled_dot_product_attention_with_bias;
use crate::nn::embed::timestep_embedding;
use crate::nn::fused;
use crate::nn::linear::{linear, Linear};
use crate::nn::norm::{LayerNorm, RmsNorm};
use crate::nn::step_cache::{self, FirstBlockCache};

/// Width of the sinusoidal timestep features (`Timesteps(256)` in AdaLayerNormSingle).
const TIMESTEP_FEATURES: usize = 256;
/// Epsilon of the attention's q/k RMS norms (fixed in the reference, not the config's).
const QK_NORM_EPS: f64 = 1e-5;
/// Score bias of a padded text token: the reference turns the 0/1 mask into `(1 - m) · -10000`.
const MASKED_BIAS: f64 = -10000.0;

/// Multi-head attention with q/k RMS-normalised across all heads, rotated (self-attention)
/// before the split into heads.
#[derive(Debug, Clone)]
struct LtxAttention {
    to_q: Linear,
    to_k: Linear,
    to_v: Linear,
    to_out: Linear,
    norm_q: RmsNorm,
    norm_k: RmsNorm,
    heads: usize,
}

impl LtxAttention {
    fn new(cfg: &LtxVideoTransformer3DConfig, kv_dim: usize, vb: VarBuilder) -> Result<Self> {
        let dim = cfg.inner_dim();
        let bias = cfg.attention_bias;
        Ok(Self {
            to_q: linear(dim, dim, bias, vb.pp("to_q"))?,
            to_k: linear(kv_dim, dim, bias, vb.pp("to_k"))?,
            to_v: linear(kv_dim, dim, bias, vb.pp("to_v"))?,
            to_out: linear(dim, dim, cfg.attention_out_bias, vb.pp("to_out").pp("0"))?,
            norm_q: RmsNorm::new(dim, QK_NORM_EPS, vb.pp("norm_q"))?,
            norm_k: RmsNorm::new(dim, QK_NORM_EPS, vb.pp("norm_k"))?,
            heads: cfg.num_attention_heads,
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
    /// * `context` — `(B, L, D)` keys/values' source (`None`: self-attention)
    /// * `rope` — `(cos, sin)` each `(N, D/2)`, applied to queries and keys
    /// * `bias` — `(B, 1, 1, L)` additive score bias (the text mask)
    ///
    /// Returns `(B, N, D)`.
    fn forward(
        &self,
        hidden_states: &Tensor,
        context: Option<&Tensor>,
        rope: Option<&(Tensor, Tensor)>,
        bias: Option<&Tensor>,
    ) -> Result<Tensor> {
        let context = context.unwrap_or(hidden_states);
        let mut q = self.norm_q.forward(&hidden_states.apply(&self.to_q)?)?;
        let mut k = self.norm_k.forward(&context.apply(&self.to_k)?)?;
        let v = context.apply(&self.to_v)?;
        if let Some((cos, sin)) = rope {
            q = apply_rotary(&q, cos, sin)?;
            k = apply_rotary(&k, cos, sin)?;
        }
        let (q, k, v) = (
            self.split_heads(&q)?,
            self.split_heads(&k)?,
            self.split_heads(&v)?,
        );
        let out = scaled_dot_product_attention_with_bias(&q, &k, &v, bias)?; // (B, H, N, d)
        let (b, h, n, d) = out.dims4()?;
        // b h n d -> b n (h d)
        let out = out.transpose(1, 2)?.contiguous()?.reshape((b, n, h * d))?;
        out.apply(&self.to_out)
    }
}

/// The MLP: `Linear(D, 4D) → GELU → Linear(4D, D)` (`ff.net.0.proj`, `ff.net.2`).
#[derive(Debug, Clone)]
struct FeedForward {
    proj_in: Linear,
    proj_out: Linear,
    /// `gelu-approximate` (tanh, the checkpoints') or exact `gelu`.
    tanh_gelu: bool,
}

impl FeedForward {
    fn new(cfg: &LtxVideoTransformer3DConfig, vb: VarBuilder) -> Result<Self> {
        let (dim, inner) = (cfg.inner_dim(), 4 * cfg.inner_dim());
        let vb = vb.pp("net");
        Ok(Self {
            proj_in: linear(dim, inner, true, vb.pp("0").pp("proj"))?,
            proj_out: linear(inner, dim, true, vb.pp("2"))?,
            tanh_gelu: cfg.activation_fn == "gelu-approximate",
        })
    }
}

impl Module for FeedForward {
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let h = xs.apply(&self.proj_in)?;
        let h = if self.tanh_gelu {
            fused::gelu(&h)?
        } else {
            h.gelu_erf()?
        };
        h.apply(&self.proj_out)
    }
}

/// `x · (1 + scale) + shift` (`x` `(B, N, D)`, `shift`/`scale` `(B, 1 or N, D)`).
fn modulate(xs: &Tensor, shift: &Tensor, scale: &Tensor) -> Result<Tensor> {
    xs.broadcast_mul(&(scale + 1.0)?)?.broadcast_add(shift)
}

/// One LTX block: modulated self-attention, un-modulated cross-attention to the text, MLP.
#[derive(Debug, Clone)]
struct LtxVideoTransformerBlock {
    norm1: RmsNorm,
    attn1: LtxAttention,
    norm2: RmsNorm,
    attn2: LtxAttention,
    ff: FeedForward,
    /// `(1, 1, 6, D)` f32: learned offsets of shift/scale/gate (attention), (MLP).
    scale_shift_table: Tensor,
}

impl LtxVideoTransformerBlock {
    fn new(cfg: &LtxVideoTransformer3DConfig, vb: VarBuilder) -> Result<Self> {
        let dim = cfg.inner_dim();
        let norm = |name: &str| {
            if cfg.norm_elementwise_affine {
                RmsNorm::new(dim, cfg.norm_eps, vb.pp(name))
            } else {
                RmsNorm::without_weight(dim, cfg.norm_eps, vb.device())
            }
        };
        Ok(Self {
            norm1: norm("norm1")?,
            attn1: LtxAttention::new(cfg, dim, vb.pp("attn1"))?,
            norm2: norm("norm2")?,
            attn2: LtxAttention::new(cfg, cfg.cross_attention_dim, vb.pp("attn2"))?,
            ff: FeedForward::new(cfg, vb.pp("ff"))?,
            scale_shift_table: vb
                .get((6, dim), "scale_shift_table")?
                .to_dtype(DType::F32)?
                .reshape((1, 1, 6, dim))?,
        })
    }

    /// * `hidden_states` — `(B, N, D)` video tokens
    /// * `text_states` — `(B, L, D)` projected caption
    /// * `temb` — `(B, 1 or N, 6·D)` per-sample or per-token modulation
    /// * `rope` — `(cos, sin)` each `(N, D/2)`
    /// * `text_bias` — `(B, 1, 1, L)` cross-attention score bias
    ///
    /// Returns `(B, N, D)`.
    fn forward(
        &self,
        hidden_states: &Tensor,
        text_states: &Tensor,
        temb: &Tensor,
        rope: &(Tensor, Tensor),
        text_bias: Option<&Tensor>,
    ) -> Result<Tensor> {
        let dtype = hidden_states.dtype();
        let (b, nt, six_d) = temb.dims3()?;
        // b n (6 d) -> b n 6 d, plus the table; six (B, 1 or N, D) f32 modulations.
        let ada = temb
            .to_dtype(DType::F32)?
            .reshape((b, nt, 6, six_d / 6))?
            .broadcast_add(&self.scale_shift_table)?;
        let m: Vec<Tensor> = (0..6)
            .map(|i| ada.narrow(2, i, 1)?.squeeze(2))
            .collect::<Result<_>>()?;
        let (shift_msa, scale_msa, gate_msa) = (&m[0], &m[1], &m[2]);
        let (shift_mlp, scale_mlp, gate_mlp) = (&m[3], &m[4], &m[5]);

        // 1. Self-attention over all tokens, with RoPE.
        let normed = modulate(
            &self.norm1.forward(hidden_states)?.to_dtype(DType::F32)?,
            shift_msa,
            scale_msa,
        )?;
        let attn = self
            .attn1
            .forward(&normed.to_dtype(dtype)?, None, Some(rope), None)?;
        let hidden_states = fused::gated_add(hidden_states, &attn, gate_msa)?;

        // 2. Cross-attention to the caption; the reference reads the un-normalised states here.
        let attn = self
            .attn2
            .forward(&hidden_states, Some(text_states), None, text_bias)?;
        let hidden_states = (hidden_states + attn)?;

        // 3. Feed-forward.
        let normed = modulate(
            &self.norm2.forward(&hidden_states)?.to_dtype(DType::F32)?,
            shift_mlp,
            scale_mlp,
        )?;
        let ff = self.ff.forward(&normed.to_dtype(dtype)?)?;
        fused::gated_add(&hidden_states, &ff, gate_mlp)
    }
}

/// What one call of [`LtxVideoTransformer3D::forward`] takes (the reference's arguments).
#[derive(Debug, Clone, Copy)]
pub struct LtxTransformerInputs<'a> {
    /// `(B, N, C_in)` packed latent tokens, token index `(t·H + h)·W + w`, `N = T·H·W`.
    pub hidden_states: &'a Tensor,
    /// `(B, L, caption_channels)` text encoder states.
    pub encoder_hidden_states: &'a Tensor,
    /// `(B,)` per sample or `(B, N)` per token, diffusion time in [0, 1000].
    pub timestep: &'a Tensor,
    /// `(B, L)` 1 for a real text token, 0 for padding (any dtype); `None` attends to all.
    pub encoder_attention_mask: Option<&'a Tensor>,
    /// `(T, H, W)` of the latent grid the tokens were packed from.
    pub latent_grid: (usize, usize, usize),
    /// See [`super::rope::rope_interpolation_scale`]; `None` uses integer positions as the
    /// reference does without one.
    pub rope_interpolation_scale: Option<[f64; 3]>,
}

/// The LTX-Video diffusion transformer.
#[derive(Debug, Clone)]
pub struct LtxVideoTransformer3D {
    cfg: LtxVideoTransformer3DConfig,
    proj_in: Linear,
    /// `time_embed.emb.timestep_embedder.linear_1` / `linear_2`: 256 sinusoids → `D`.
    time_linear_1: Linear,
    time_linear_2: Linear,
    /// `time_embed.linear`: `D` → `6·D` block modulation.
    time_linear: Linear,
    caption_linear_1: Linear,
    caption_linear_2: Linear,
    blocks: Vec<LtxVideoTransformerBlock>,
    norm_out: LayerNorm,
    proj_out: Linear,
    /// `(1, 1, 2, D)` f32: learned offsets of the output shift and scale.
    scale_shift_table: Tensor,
    rope: LtxRope,
    dtype: DType,
}

impl LtxVideoTransformer3D {
    /// Builds the model from `vb` with the checkpoint's names (`transformer_blocks.{i}.attn1.to_q`,
    /// `time_embed.emb.timestep_embedder.linear_1`, `caption_projection.linear_1`, …).
    pub fn new(cfg: &LtxVideoTransformer3DConfig, vb: VarBuilder) -> Result<Self> {
        cfg.validate().map_err(candle_core::Error::Msg)?;
        let dim = cfg.inner_dim();
        let time = vb.pp("time_embed");
        let time_emb = time.pp("emb").pp("timestep_embedder");
        let caption = vb.pp("caption_projection");
        let blocks = (0..cfg.num_layers)
            .map(|i| LtxVideoTransformerBlock::new(cfg, vb.pp("transformer_blocks").pp(i)))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            proj_in: linear(cfg.in_channels, dim, true, vb.pp("proj_in"))?,
            time_linear_1: linear(TIMESTEP_FEATURES, dim, true, time_emb.pp("linear_1"))?,
            time_linear_2: linear(dim, dim, true, time_emb.pp("linear_2"))?,
            time_linear: linear(dim, 6 * dim, true, time.pp("linear"))?,
            caption_linear_1: linear(cfg.caption_channels, dim, true, caption.pp("linear_1"))?,
            caption_linear_2: linear(dim, dim, true, caption.pp("linear_2"))?,
            blocks,
            norm_out: LayerNorm::new(dim, 1e-6, false, vb.pp("norm_out"))?,
            proj_out: linear(dim, cfg.out_channels(), true, vb.pp("proj_out"))?,
            scale_shift_table: vb
                .get((2, dim), "scale_shift_table")?
                .to_dtype(DType::F32)?
                .reshape((1, 1, 2, dim))?,
            rope: LtxRope::new(dim, cfg.patch_size, cfg.patch_size_t)?,
            dtype: vb.dtype(),
            cfg: cfg.clone(),
        })
    }

    pub fn config(&self) -> &LtxVideoTransformer3DConfig {
        &self.cfg
    }

    /// The dtype of the weights (and of the hidden states between blocks).
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// Checks the shapes of one call; returns `(B, N)`.
    fn check_inputs(&self, inputs: &LtxTransformerInputs) -> Result<(usize, usize)> {
        let (b, n, c) = inputs.hidden_states.dims3()?;
        let (t, h, w) = inputs.latent_grid;
        if c != self.cfg.in_channels || n != t * h * w {
            bail!(
                "expected packed latents (B, T·H·W, {}) = (B, {}, {}) for the latent grid {:?}, got {:?}",
                self.cfg.in_channels,
                t * h * w,
                self.cfg.in_channels,
                inputs.latent_grid,
                inputs.hidden_states.shape()
            )
        }
        let text = inputs.encoder_hidden_states;
        if text.rank() != 3 || text.dim(0)? != b || text.dim(2)? != self.cfg.caption_channels {
            bail!(
                "expected text states ({b}, L, {}), got {:?}",
                self.cfg.caption_channels,
                text.shape()
            )
        }
        let ts = inputs.timestep.dims();
        if ts != [b] && ts != [b, n] {
            bail!("expected timestep ({b},) or ({b}, {n}), got {ts:?}")
        }
        if let Some(mask) = inputs.encoder_attention_mask {
            if mask.dims() != [b, text.dim(1)?] {
                bail!(
                    "expected encoder_attention_mask ({b}, {}), got {:?}",
                    text.dim(1)?,
                    mask.shape()
                )
            }
        }
        Ok((b, n))
    }

    /// One denoising call; returns the prediction `(B, N, C_out)` in the model dtype.
    pub fn forward(&self, inputs: &LtxTransformerInputs) -> Result<Tensor> {
        self.forward_cached(inputs, None)
    }

    /// As [`Self::forward`]; with a `cache`, the blocks after the first are skipped when it says
    /// their result can be reused (one cache per generation, see [`FirstBlockCache`]).
    pub fn forward_cached(
        &self,
        inputs: &LtxTransformerInputs,
        cache: Option<&mut FirstBlockCache>,
    ) -> Result<Tensor> {
        let (b, n) = self.check_inputs(inputs)?;
        let dim = self.cfg.inner_dim();
        let device = inputs.hidden_states.device();
        let rope =
            self.rope
                .cos_sin(inputs.latent_grid, inputs.rope_interpolation_scale, device)?;

        // 1. Text: 0/1 mask -> additive score bias (B, 1, 1, L); caption -> (B, L, D).
        let text_bias = match inputs.encoder_attention_mask {
            Some(mask) => {
                let keep = mask.to_dtype(DType::F32)?;
                let bias = ((1.0 - keep)? * MASKED_BIAS)?;
                Some(bias.unsqueeze(1)?.unsqueeze(1)?)
            }
            None => None,
        };
        let text_states = inputs
            .encoder_hidden_states
            .to_dtype(self.dtype)?
            .apply(&self.caption_linear_1)?
            .gelu()?
            .apply(&self.caption_linear_2)?;

        // 2. Timestep: (B·N') sinusoids -> embedded (B, N', D) and block modulation (B, N', 6D),
        // N' = 1 per sample or N per token.
        let per_token = inputs.timestep.rank() == 2;
        let nt = if per_token { n } else { 1 };
        let t_freq = timestep_embedding(&inputs.timestep.flatten_all()?, TIMESTEP_FEATURES)?;
        let embedded = t_freq
            .to_dtype(self.dtype)?
            .apply(&self.time_linear_1)?
            .silu()?
            .apply(&self.time_linear_2)?;
        let temb = embedded
            .silu()?
            .apply(&self.time_linear)?
            .reshape((b, nt, 6 * dim))?;
        let embedded = embedded.reshape((b, nt, dim))?;

        // 3. Blocks over the projected tokens.
        let hidden = inputs
            .hidden_states
            .to_dtype(self.dtype)?
            .apply(&self.proj_in)?;
        let hidden = step_cache::run_blocks(
            &self.blocks,
            hidden,
            cache,
            |block, h| block.forward(&h, &text_states, &temb, &rope, text_bias.as_ref()),
            |h| h,
        )?;

        // 4. Output norm modulated by the embedded timestep, projection to latent channels.
        let mods = embedded
            .to_dtype(DType::F32)?
            .unsqueeze(2)?
            .broadcast_add(&self.scale_shift_table)?; // (B, N', 2, D)
        let shift = mods.narrow(2, 0, 1)?.squeeze(2)?;
        let scale = mods.narrow(2, 1, 1)?.squeeze(2)?;
        let normed = modulate(&self.norm_out.forward(&hidden)?, &shift, &scale)?;
        normed.to_dtype(self.dtype)?.apply(&self.proj_out)
    }
}
