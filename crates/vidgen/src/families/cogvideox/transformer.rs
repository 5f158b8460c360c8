//! `CogVideoXTransformer3DModel`: the CogVideoX 1.0 video DiT (2b and 5b).
//!
//! Unlike Wan there is no cross-attention: the projected text tokens are put in front of the
//! video tokens and every block runs one joint self-attention over `[text; video]`, with
//! separate AdaLN modulations ("experts") for the two kinds of token. The 2b model adds a 3D
//! sin-cos table to the video tokens; the 5b model rotates the video queries and keys (3D RoPE).

use candle_core::{bail, DType, Module, Result, Tensor};
use candle_nn::VarBuilder;

use super::config::CogVideoXTransformerConfig;
use super::embeddings::{rope_3d_tables, sincos_3d_table};
use crate::nn::attention::scaled_dot_product_attention;
use crate::nn::embed::timestep_embedding;
use crate::nn::fused;
use crate::nn::linear::{linear, Linear};
use crate::nn::norm::LayerNorm;
use crate::nn::rope::apply_rotary_interleaved;
use crate::nn::step_cache::{self, FirstBlockCache};

/// `x · (1 + scale) + shift` in `x`'s dtype (`x` `(B, N, D)`, `shift`/`scale` `(B, 1, D)`).
fn modulate(xs: &Tensor, shift: &Tensor, scale: &Tensor) -> Result<Tensor> {
    let (shift, scale) = (shift.to_dtype(xs.dtype())?, scale.to_dtype(xs.dtype())?);
    xs.broadcast_mul(&(scale + 1.0)?)?.broadcast_add(&shift)
}

/// `CogVideoXLayerNormZero`: one LayerNorm shared by text and video tokens, with separate
/// shift/scale/gate for each, all from the timestep embedding.
#[derive(Debug, Clone)]
struct LayerNormZero {
    linear: Linear,
    norm: LayerNorm,
}

/// The result of [`LayerNormZero::forward`]: normalised tokens and the residual gates.
struct Modulated {
    video: Tensor,
    text: Tensor,
    /// `(B, 1, D)`
    gate: Tensor,
    /// `(B, 1, D)`
    text_gate: Tensor,
}

impl LayerNormZero {
    fn new(cfg: &CogVideoXTransformerConfig, vb: VarBuilder) -> Result<Self> {
        let dim = cfg.inner_dim();
        Ok(Self {
            linear: linear(cfg.time_embed_dim, 6 * dim, true, vb.pp("linear"))?,
            norm: LayerNorm::new(
                dim,
                cfg.norm_eps,
                cfg.norm_elementwise_affine,
                vb.pp("norm"),
            )?,
        })
    }

    /// * `video` — `(B, N, D)`, `text` — `(B, L, D)`, `temb` — `(B, time_embed_dim)`
    fn forward(&self, video: &Tensor, text: &Tensor, temb: &Tensor) -> Result<Modulated> {
        let dtype = video.dtype();
        // shift, scale, gate, text shift, text scale, text gate: 6 × (B, 1, D)
        let mods = temb
            .silu()?
            .apply(&self.linear)?
            .unsqueeze(1)?
            .chunk(6, 2)?;
        let video = modulate(&self.norm.forward(video)?, &mods[0], &mods[1])?.to_dtype(dtype)?;
        let text = modulate(&self.norm.forward(text)?, &mods[3], &mods[4])?.to_dtype(dtype)?;
        Ok(Modulated {
            video,
            text,
            gate: mods[2].clone(),
            text_gate: mods[5].clone(),
        })
    }
}

/// Joint attention over `[text; video]` with per-head LayerNorm on queries and keys; RoPE (if
/// any) rotates only the video part.
#[derive(Debug, Clone)]
struct JointAttention {
    to_q: Linear,
    to_k: Linear,
    to_v: Linear,
    to_out: Linear,
    norm_q: LayerNorm,
    norm_k: LayerNorm,
    heads: usize,
}

impl JointAttention {
    fn new(cfg: &CogVideoXTransformerConfig, vb: VarBuilder) -> Result<Self> {
        let (dim, head_dim) = (cfg.inner_dim(), cfg.attention_head_dim);
        let bias = cfg.attention_bias;
        Ok(Self {
            to_q: linear(dim, dim, bias, vb.pp("to_q"))?,
            to_k: linear(dim, dim, bias, vb.pp("to_k"))?,
            to_v: linear(dim, dim, bias, vb.pp("to_v"))?,
            to_out: linear(dim, dim, true, vb.pp("to_out").pp("0"))?,
            // diffusers' `Attention(qk_norm="layer_norm", eps=1e-6)`: fixed eps, affine.
            norm_q: LayerNorm::new(head_dim, 1e-6, true, vb.pp("norm_q"))?,
            norm_k: LayerNorm::new(head_dim, 1e-6, true, vb.pp("norm_k"))?,
            heads: cfg.num_attention_heads,
        })
    }

    /// `(B, S, D)` → `(B, H, S, d)`.
    fn split_heads(&self, xs: &Tensor) -> Result<Tensor> {
        let (b, s, dim) = xs.dims3()?;
        xs.reshape((b, s, self.heads, dim / self.heads))?
            .transpose(1, 2)?
            .contiguous()
    }

    /// Rotates the video rows (`text_len..`) of `x` `(B, H, S, d)`.
    fn rotate_video(x: &Tensor, text_len: usize, rope: &(Tensor, Tensor)) -> Result<Tensor> {
        let s = x.dim(2)?;
        let text = x.narrow(2, 0, text_len)?;
        let video = x.narrow(2, text_len, s - text_len)?;
        let video = apply_rotary_interleaved(&video, &rope.0, &rope.1)?;
        Tensor::cat(&[&text, &video], 2)
    }

    /// * `tokens` — `(B, L + N, D)`: text rows first
    /// * `rope` — `(cos, sin)` each `(N, d/2)`
    ///
    /// Returns `(B, L + N, D)`.
    fn forward(
        &self,
        tokens: &Tensor,
        text_len: usize,
        rope: Option<&(Tensor, Tensor)>,
    ) -> Result<Tensor> {
        let dtype = tokens.dtype();
        let q = self.split_heads(&tokens.apply(&self.to_q)?)?;
        let k = self.split_heads(&tokens.apply(&self.to_k)?)?;
        let v = self.split_heads(&tokens.apply(&self.to_v)?)?;
        let mut q = self.norm_q.forward(&q)?.to_dtype(dtype)?;
        let mut k = self.norm_k.forward(&k)?.to_dtype(dtype)?;
        if let Some(rope) = rope {
            q = Self::rotate_video(&q, text_len, rope)?;
            k = Self::rotate_video(&k, text_len, rope)?;
        }
        let out = scaled_dot_product_attention(&q, &k, &v)?; // (B, H, S, d)
        let (b, h, s, d) = out.dims4()?;
        // b h s d -> b s (h d)
        out.transpose(1, 2)?
            .contiguous()?
            .reshape((b, s, h * d))?
            .apply(&self.to_out)
    }
}

/// The MLP: `Linear → GELU(tanh) → Linear` (`ff.net.0.proj`, `ff.net.2`), width `4·D`.
#[derive(Debug, Clone)]
struct FeedForward {
    proj_in: Linear,
    proj_out: Linear,
}

impl FeedForward {
    fn new(dim: usize, vb: VarBuilder) -> Result<Self> {
        let vb = vb.pp("net");
        Ok(Self {
            proj_in: linear(dim, 4 * dim, true, vb.pp("0").pp("proj"))?,
            proj_out: linear(4 * dim, dim, true, vb.pp("2"))?,
        })
    }
}

impl Module for FeedForward {
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        fused::gelu(&xs.apply(&self.proj_in)?)?.apply(&self.proj_out)
    }
}

/// One block: joint attention, then a joint MLP, each with expert AdaLN-Zero.
#[derive(Debug, Clone)]
struct CogVideoXBlock {
    norm1: LayerNormZero,
    attn1: JointAttention,
    norm2: LayerNormZero,
    ff: FeedForward,
}

impl CogVideoXBlock {
    fn new(cfg: &CogVideoXTransformerConfig, vb: VarBuilder) -> Result<Self> {
        Ok(Self {
            norm1: LayerNormZero::new(cfg, vb.pp("norm1"))?,
            attn1: JointAttention::new(cfg, vb.pp("attn1"))?,
            norm2: LayerNormZero::new(cfg, vb.pp("norm2"))?,
            ff: FeedForward::new(cfg.inner_dim(), vb.pp("ff"))?,
        })
    }

    /// * `video` — `(B, N, D)`, `text` — `(B, L, D)`, `temb` — `(B, time_embed_dim)`
    ///
    /// Returns the updated `(video, text)`.
    fn forward(
        &self,
        video: &Tensor,
        text: &Tensor,
        temb: &Tensor,
        rope: Option<&(Tensor, Tensor)>,
    ) -> Result<(Tensor, Tensor)> {
        let (l, n) = (text.dim(1)?, video.dim(1)?);

        // 1. Joint self-attention.
        let m = self.norm1.forward(video, text, temb)?;
        let joint = Tensor::cat(&[&m.text, &m.video], 1)?;
        let attn = self.attn1.forward(&joint, l, rope)?;
        let video = (video + attn.narrow(1, l, n)?.broadcast_mul(&m.gate)?)?;
        let text = (text + attn.narrow(1, 0, l)?.broadcast_mul(&m.text_gate)?)?;

        // 2. Joint feed-forward.
        let m = self.norm2.forward(&video, &text, temb)?;
        let ff = self.ff.forward(&Tensor::cat(&[&m.text, &m.video], 1)?)?;
        let video = (video + ff.narrow(1, l, n)?.broadcast_mul(&m.gate)?)?;
        let text = (text + ff.narrow(1, 0, l)?.broadcast_mul(&m.text_gate)?)?;
        Ok((video, text))
    }
}

/// The CogVideoX 1.0 diffusion transformer (`CogVideoXTransformer3DModel`).
#[derive(Debug, Clone)]
pub struct CogVideoXTransformer3D {
    cfg: CogVideoXTransformerConfig,
    /// `patch_embed.proj` (a `Conv2d` with kernel = stride = p) as a linear map on patches.
    patch_proj: Linear,
    text_proj: Linear,
    /// `patch_embed.pos_embedding` `(1, max_text + N_sample, D)` of learned-position models.
    learned_pos_embedding: Option<Tensor>,
    time_linear_1: Linear,
    time_linear_2: Linear,
    blocks: Vec<CogVideoXBlock>,
    norm_final: LayerNorm,
    norm_out_linear: Linear,
    norm_out: LayerNorm,
    proj_out: Linear,
    dtype: DType,
}

impl CogVideoXTransformer3D {
    /// Builds the model from `vb` (names as in diffusers' checkpoint:
    /// `transformer_blocks.{i}.attn1.to_q`, `patch_embed.proj`, …).
    pub fn new(cfg: &CogVideoXTransformerConfig, vb: VarBuilder) -> Result<Self> {
        cfg.validate().map_err(candle_core::Error::Msg)?;
        let dim = cfg.inner_dim();
        let (p, c) = (cfg.patch_size, cfg.in_channels);
        let pe = vb.pp("patch_embed");
        let conv_w = pe.pp("proj").get((dim, c, p, p), "weight")?;
        let conv_b = if cfg.patch_bias {
            Some(pe.pp("proj").get(dim, "bias")?)
        } else {
            None
        };
        let patch_proj = Linear::new(conv_w.reshape((dim, c * p * p))?, conv_b);
        let learned_pos_embedding = if cfg.use_learned_positional_embeddings {
            let n = Self::grid_of(cfg, cfg.sample_height, cfg.sample_width, cfg.sample_frames);
            let rows = cfg.max_text_seq_length + n.0 * n.1 * n.2;
            Some(pe.get((1, rows, dim), "pos_embedding")?)
        } else {
            None
        };
        let te = vb.pp("time_embedding");
        let ne = cfg.norm_elementwise_affine;
        Ok(Self {
            patch_proj,
            text_proj: linear(cfg.text_embed_dim, dim, true, pe.pp("text_proj"))?,
            learned_pos_embedding,
            time_linear_1: linear(dim, cfg.time_embed_dim, true, te.pp("linear_1"))?,
            time_linear_2: linear(
                cfg.time_embed_dim,
                cfg.time_embed_dim,
                true,
                te.pp("linear_2"),
            )?,
            blocks: (0..cfg.num_layers)
                .map(|i| CogVideoXBlock::new(cfg, vb.pp("transformer_blocks").pp(i)))
                .collect::<Result<Vec<_>>>()?,
            norm_final: LayerNorm::new(dim, cfg.norm_eps, ne, vb.pp("norm_final"))?,
            norm_out_linear: linear(cfg.time_embed_dim, 2 * dim, true, vb.pp("norm_out.linear"))?,
            norm_out: LayerNorm::new(dim, cfg.norm_eps, ne, vb.pp("norm_out.norm"))?,
            proj_out: linear(dim, p * p * cfg.out_channels(), true, vb.pp("proj_out"))?,
            dtype: vb.dtype(),
            cfg: cfg.clone(),
        })
    }

    /// `(T, h, w)` patch grid of latents `H × W` with `frames` **pixel** frames:
    /// `T = (frames - 1) / tcr + 1`.
    fn grid_of(
        cfg: &CogVideoXTransformerConfig,
        height: usize,
        width: usize,
        frames: usize,
    ) -> (usize, usize, usize) {
        let t = frames.saturating_sub(1) / cfg.temporal_compression_ratio + 1;
        (t, height / cfg.patch_size, width / cfg.patch_size)
    }

    pub fn config(&self) -> &CogVideoXTransformerConfig {
        &self.cfg
    }

    /// The dtype of the weights (and of the hidden states between blocks).
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// The RoPE tables the pipeline passes for latents of `T` frames and `H × W` (5b models):
    /// `(cos, sin)`, each `(T·H/p·W/p, d/2)` f32; `None` for sin-cos models.
    pub fn rotary_tables(
        &self,
        latent: (usize, usize, usize),
        device: &candle_core::Device,
    ) -> Result<Option<(Tensor, Tensor)>> {
        if !self.cfg.use_rotary_positional_embeddings {
            return Ok(None);
        }
        let p = self.cfg.patch_size;
        let grid = (latent.0, latent.1 / p, latent.2 / p);
        let base = (self.cfg.sample_height / p, self.cfg.sample_width / p);
        rope_3d_tables(self.cfg.attention_head_dim, grid, base, device).map(Some)
    }

    /// The position table added to the video tokens, `(N, D)` f32, or `None` (RoPE-only).
    fn position_table(
        &self,
        latent: (usize, usize, usize),
        text_len: usize,
    ) -> Result<Option<Tensor>> {
        let cfg = &self.cfg;
        if !cfg.adds_position_table() {
            return Ok(None);
        }
        let (t, h, w) = latent;
        if text_len != cfg.max_text_seq_length {
            bail!(
                "this model adds a position table laid out for {} text tokens; got {text_len} \
                 (pass max_sequence_length = {})",
                cfg.max_text_seq_length,
                cfg.max_text_seq_length
            )
        }
        let p = cfg.patch_size;
        // The reference compares pixel frames: (T - 1) · tcr + 1 against sample_frames.
        let frames = (t - 1) * cfg.temporal_compression_ratio + 1;
        if let Some(learned) = &self.learned_pos_embedding {
            if (h, w) != (cfg.sample_height, cfg.sample_width) {
                bail!(
                    "a model with learned positional embeddings only runs at its trained latent \
                     size {}x{} (H x W), got {h}x{w}",
                    cfg.sample_height,
                    cfg.sample_width
                )
            }
            if frames == cfg.sample_frames {
                let rows = learned.dim(1)? - text_len;
                return Ok(Some(learned.squeeze(0)?.narrow(0, text_len, rows)?));
            }
            // Other lengths fall back to the sin-cos table, as in the reference.
        }
        let grid = (t, h / p, w / p);
        let table = sincos_3d_table(
            cfg.inner_dim(),
            grid,
            cfg.spatial_interpolation_scale,
            cfg.temporal_interpolation_scale,
            &candle_core::Device::Cpu,
        )?;
        Ok(Some(table))
    }

    /// One denoising call, computing the position encoding from the sizes as the pipeline and
    /// model do.
    ///
    /// * `hidden_states` — `(B, T, C_in, H, W)` latents, **frames before channels**
    /// * `encoder_hidden_states` — `(B, L, text_embed_dim)` T5 states
    /// * `timestep` — `(B,)` diffusion timestep in [0, 1000)
    ///
    /// Returns the prediction `(B, T, C_out, H, W)` in the model dtype.
    pub fn forward(
        &self,
        hidden_states: &Tensor,
        encoder_hidden_states: &Tensor,
        timestep: &Tensor,
    ) -> Result<Tensor> {
        let (_, t, _, h, w) = hidden_states.dims5()?;
        let rope = self.rotary_tables((t, h, w), hidden_states.device())?;
        self.forward_with_rope(
            hidden_states,
            encoder_hidden_states,
            timestep,
            rope.as_ref(),
        )
    }

    /// As [`Self::forward`] with the RoPE tables given (from [`Self::rotary_tables`]; computed
    /// once per video by a pipeline).
    pub fn forward_with_rope(
        &self,
        hidden_states: &Tensor,
        encoder_hidden_states: &Tensor,
        timestep: &Tensor,
        rope: Option<&(Tensor, Tensor)>,
    ) -> Result<Tensor> {
        self.forward_cached(hidden_states, encoder_hidden_states, timestep, rope, None)
    }

    /// As [`Self::forward_with_rope`]; with a `cache`, the blocks after the first are skipped
    /// when it says their result can be reused (one cache per generation, see
    /// [`FirstBlockCache`]; it decides on the video stream, the only one the output reads).
    pub fn forward_cached(
        &self,
        hidden_states: &Tensor,
        encoder_hidden_states: &Tensor,
        timestep: &Tensor,
        rope: Option<&(Tensor, Tensor)>,
        cache: Option<&mut FirstBlockCache>,
    ) -> Result<Tensor> {
        let cfg = &self.cfg;
        let p = cfg.patch_size;
        let (b, t, c, h, w) = hidden_states.dims5()?;
        if c != cfg.in_channels || h % p != 0 || w % p != 0 || t == 0 {
            bail!(
                "expected latents (B, T, {}, H, W) (frames before channels) with H, W multiples \
                 of {p}, got {:?}",
                cfg.in_channels,
                hidden_states.shape()
            )
        }
        let (tb, l, td) = encoder_hidden_states.dims3()?;
        if tb != b || td != cfg.text_embed_dim || timestep.dims() != [b] {
            bail!(
                "expected text states ({b}, L, {}) and timestep ({b},), got {:?} and {:?}",
                cfg.text_embed_dim,
                encoder_hidden_states.shape(),
                timestep.shape()
            )
        }
        if cfg.use_rotary_positional_embeddings != rope.is_some() {
            bail!("RoPE tables must be given exactly for rotary models (see rotary_tables)")
        }
        let (gh, gw) = (h / p, w / p);
        let n = t * gh * gw;
        let dim = cfg.inner_dim();

        // 1. Timestep embedding: (B, D) sinusoid -> (B, time_embed_dim).
        let temb = timestep_embedding(timestep, dim)?
            .to_dtype(self.dtype)?
            .apply(&self.time_linear_1)?
            .silu()?
            .apply(&self.time_linear_2)?;

        // 2. Patch embedding: (b t) c (gh p) (gw p) -> b (t gh gw) (c p p) -> (B, N, D).
        let patches = hidden_states
            .to_dtype(self.dtype)?
            .reshape((b * t, c, gh, p, gw, p))?
            .permute((0, 2, 4, 1, 3, 5))?
            .contiguous()?
            .reshape((b, n, c * p * p))?;
        let mut video = patches.apply(&self.patch_proj)?;
        let text = encoder_hidden_states
            .to_dtype(self.dtype)?
            .apply(&self.text_proj)?;
        if let Some(table) = self.position_table((t, h, w), l)? {
            let table = table.to_device(video.device())?.to_dtype(self.dtype)?;
            video = video.broadcast_add(&table.unsqueeze(0)?)?;
        }

        // 3. Blocks over [text; video].
        let video = step_cache::run_blocks(
            &self.blocks,
            (video, text),
            cache,
            |block, (video, text)| block.forward(&video, &text, &temb, rope),
            |(video, _)| video,
        )?;

        // 4. Final norm, AdaLN (shift first, then scale), projection to patches.
        let video = self.norm_final.forward(&video)?.to_dtype(self.dtype)?;
        let mods = temb
            .silu()?
            .apply(&self.norm_out_linear)?
            .unsqueeze(1)?
            .chunk(2, 2)?;
        let video = modulate(&self.norm_out.forward(&video)?, &mods[0], &mods[1])?
            .to_dtype(self.dtype)?
            .apply(&self.proj_out)?;

        // 5. b (t gh gw) (c p p) -> (b t) c (gh p) (gw p) -> b t c h w
        let c_out = cfg.out_channels();
        video
            .reshape((b * t, gh, gw, c_out, p, p))?
            .permute((0, 3, 1, 4, 2, 5))?
            .contiguous()?
            .reshape((b, t, c_out, h, w))
    }

    /// Number of video tokens for latents of `(T, H, W)`: `T · H/p · W/p`.
    pub fn num_tokens(&self, latent: (usize, usize, usize)) -> usize {
        let p = self.cfg.patch_size;
        latent.0 * (latent.1 / p) * (latent.2 / p)
    }
}
