//! The T5 encoder in its two flavours: `T5EncoderModel` of transformers (LTX-Video's and
//! CogVideoX's text encoder) and `UMT5EncoderModel` (Wan's).
//!
//! A T5 encoder stack: pre-norm blocks of self-attention and a (gated) feed-forward, RMS
//! norms without bias or mean, no 1/√d scaling of the attention scores (T5 folds it into the
//! initialisation), and a learned relative-position bias. The two flavours differ only in
//! where that bias lives ([`T5Variant`], from `config.json`'s `model_type`): in T5 only
//! layer 0 owns a bias table and every later layer adds the bias layer 0 computed; in UMT5
//! **every** layer has its own table.
//!
//! Weights keep the checkpoint's names: `shared.weight`,
//! `encoder.block.{i}.layer.0.SelfAttention.{q,k,v,o}.weight`,
//! `encoder.block.{i}.layer.0.SelfAttention.relative_attention_bias.weight` (T5: `i = 0` only),
//! `encoder.block.{i}.layer.0.layer_norm.weight`,
//! `encoder.block.{i}.layer.1.DenseReluDense.{wi_0,wi_1,wo}.weight` (`wi` when not gated),
//! `encoder.block.{i}.layer.1.layer_norm.weight`, `encoder.final_layer_norm.weight`.
//!
//! Numerics: the residual stream, the norms and the softmax run in f32 whatever the weights'
//! dtype; the linear layers run in the weights' dtype (bf16 / f16 checkpoints work, and f16
//! cannot overflow in the residual, so transformers' fp16 clamping has nothing to do here).

use std::path::Path;

use candle_core::{DType, Device, Module, Result, Tensor, D};
use candle_nn::{Embedding, VarBuilder};
use serde::{Deserialize, Serialize};

use crate::nn::linear::{linear, Linear};

/// `int | list[int]`, as transformers allows for `eos_token_id`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum TokenIds {
    One(u32),
    Many(Vec<u32>),
}

/// Which of the two T5 encoders a config describes (`config.json`'s `model_type`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum T5Variant {
    /// `"t5"`: one relative-position bias table, in layer 0, shared by all layers.
    T5,
    /// `"umt5"`: a bias table in every layer. The default, for configs without `model_type`.
    #[default]
    Umt5,
}

/// Serde mirror of transformers' `T5Config` / `UMT5Config` (`config.json` of a
/// `text_encoder/` folder). Keys are the file's; a key the file lacks takes the default of
/// its `model_type`'s class ([`T5Config::default`] for UMT5, [`T5Config::t5_defaults`] for T5).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct T5Config {
    /// `model_type`: T5 or UMT5.
    #[serde(rename = "model_type")]
    pub variant: T5Variant,
    pub vocab_size: usize,
    /// Hidden size `D`.
    pub d_model: usize,
    /// Size of one attention head.
    pub d_kv: usize,
    /// Inner size of the feed-forward.
    pub d_ff: usize,
    /// Encoder layers.
    pub num_layers: usize,
    pub num_decoder_layers: Option<usize>,
    pub num_heads: usize,
    pub relative_attention_num_buckets: usize,
    /// Distance from which all relative positions share the outermost bucket.
    pub relative_attention_max_distance: usize,
    pub dropout_rate: f64,
    pub layer_norm_epsilon: f64,
    pub initializer_factor: f64,
    /// `"{act}"` or `"gated-{act}"`; `"gated-gelu"` means the tanh GELU (`gelu_new`).
    pub feed_forward_proj: String,
    /// Written by transformers when saving; when present it wins over `feed_forward_proj`,
    /// as it does in transformers.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub dense_act_fn: Option<String>,
    /// Like `dense_act_fn`: saved, and then preferred to `feed_forward_proj`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub is_gated_act: Option<bool>,
    pub is_encoder_decoder: bool,
    pub use_cache: bool,
    pub pad_token_id: Option<u32>,
    pub eos_token_id: Option<TokenIds>,
    pub decoder_start_token_id: Option<u32>,
    pub classifier_dropout: f64,
    pub is_decoder: bool,
}

/// `UMT5Config.__init__`'s defaults (those of `google/umt5-small`).
impl Default for T5Config {
    fn default() -> Self {
        Self {
            variant: T5Variant::Umt5,
            vocab_size: 250112,
            d_model: 512,
            d_kv: 64,
            d_ff: 1024,
            num_layers: 8,
            num_decoder_layers: None,
            num_heads: 6,
            relative_attention_num_buckets: 32,
            relative_attention_max_distance: 128,
            dropout_rate: 0.1,
            layer_norm_epsilon: 1e-6,
            initializer_factor: 1.0,
            feed_forward_proj: "gated-gelu".into(),
            dense_act_fn: None,
            is_gated_act: None,
            is_encoder_decoder: true,
            use_cache: true,
            pad_token_id: Some(0),
            eos_token_id: Some(TokenIds::One(1)),
            decoder_start_token_id: Some(0),
            classifier_dropout: 0.0,
            is_decoder: false,
        }
    }
}

/// Activations transformers' `ACT2FN` names that the feed-forward can use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FfActivation {
    Relu,
    /// Exact (erf) GELU: `"gelu"`.
    Gelu,
    /// Tanh-approximated GELU: `"gelu_new"`, `"gelu_pytorch_tanh"`, `"gelu_fast"`.
    GeluTanh,
    /// `"silu"`, `"swish"`.
    Silu,
}

impl FfActivation {
    const SUPPORTED: &'static str =
        "relu, gelu, gelu_new, gelu_pytorch_tanh, gelu_fast, silu, swish (optionally gated-)";

    fn apply(self, xs: &Tensor) -> Result<Tensor> {
        match self {
            Self::Relu => xs.relu(),
            Self::Gelu => xs.gelu_erf(),
            Self::GeluTanh => crate::nn::fused::gelu(xs),
            Self::Silu => xs.silu(),
        }
    }
}

impl T5Config {
    /// `T5Config.__init__`'s defaults (those of `t5-small`), with `model_type` `"t5"`.
    pub fn t5_defaults() -> Self {
        Self {
            variant: T5Variant::T5,
            vocab_size: 32128,
            d_ff: 2048,
            num_layers: 6,
            num_heads: 8,
            feed_forward_proj: "relu".into(),
            decoder_start_token_id: None,
            ..Self::default()
        }
    }

    /// Parses a `config.json`'s contents: `model_type` picks the variant and the defaults of
    /// missing keys; a `model_type` other than `"t5"` / `"umt5"` is an error.
    pub fn from_json(value: &serde_json::Value) -> std::result::Result<Self, String> {
        let Some(keys) = value.as_object() else {
            return Err("config.json is not a JSON object".into());
        };
        let mut merged = match keys.get("model_type").and_then(|v| v.as_str()) {
            Some("t5") => serde_json::to_value(Self::t5_defaults()),
            _ => serde_json::to_value(Self::default()),
        }
        .expect("config serializes");
        let slots = merged
            .as_object_mut()
            .expect("a struct serializes to an object");
        slots.extend(keys.iter().map(|(k, v)| (k.clone(), v.clone())));
        let cfg = Self::deserialize(&merged).map_err(|e| e.to_string())?;
        cfg.feed_forward().map_err(|e| e.to_string())?;
        Ok(cfg)
    }

    /// Reads and checks a `config.json` (see [`T5Config::from_json`]).
    pub fn from_file(path: impl AsRef<Path>) -> crate::Result<Self> {
        let path = path.as_ref();
        let text = std::fs::read_to_string(path).map_err(|e| crate::Error::io(path, e))?;
        let bad = |reason: String| crate::Error::BadConfig {
            path: path.to_path_buf(),
            reason,
        };
        let value: serde_json::Value =
            serde_json::from_str(&text).map_err(|e| bad(e.to_string()))?;
        Self::from_json(&value).map_err(bad)
    }

    /// Writes this config as a `text_encoder/config.json` that transformers'
    /// `UMT5EncoderModel.from_pretrained` (or `T5EncoderModel`'s) reads (`architectures`
    /// added).
    pub fn write_config_json(&self, path: impl AsRef<Path>) -> crate::Result<()> {
        let path = path.as_ref();
        let mut value = serde_json::to_value(self).expect("config serializes");
        let architecture = match self.variant {
            T5Variant::T5 => "T5EncoderModel",
            T5Variant::Umt5 => "UMT5EncoderModel",
        };
        value["architectures"] = serde_json::json!([architecture]);
        let text = serde_json::to_string_pretty(&value).expect("JSON values serialize");
        std::fs::write(path, text + "\n").map_err(|e| crate::Error::io(path, e))
    }

    /// The feed-forward's activation and whether it is gated, resolved as transformers does.
    pub fn feed_forward(&self) -> Result<(FfActivation, bool)> {
        let parts: Vec<&str> = self.feed_forward_proj.split('-').collect();
        let (gated, act) = match parts[..] {
            [act] => (false, act),
            ["gated", act] => (true, act),
            _ => candle_core::bail!(
                "feed_forward_proj {:?} is not `{{act}}` or `gated-{{act}}`",
                self.feed_forward_proj
            ),
        };
        let derived = if self.feed_forward_proj == "gated-gelu" {
            "gelu_new"
        } else {
            act
        };
        let name = self.dense_act_fn.as_deref().unwrap_or(derived);
        let activation = match name {
            "relu" => FfActivation::Relu,
            "gelu" => FfActivation::Gelu,
            "gelu_new" | "gelu_pytorch_tanh" | "gelu_fast" => FfActivation::GeluTanh,
            "silu" | "swish" => FfActivation::Silu,
            other => candle_core::bail!(
                "T5 activation {other:?} is not supported; supported: {}",
                FfActivation::SUPPORTED
            ),
        };
        Ok((activation, self.is_gated_act.unwrap_or(gated)))
    }
}

/// T5's relative-position bucket of `relative_position = key_pos - query_pos`, as
/// transformers' `_relative_position_bucket` computes it (bidirectional for an encoder).
///
/// Half the buckets (per direction when bidirectional) are exact offsets; the rest grow
/// logarithmically up to `max_distance`, beyond which all offsets share the last bucket.
/// The logarithm is taken in f32, as the reference does, so boundaries land identically.
pub fn relative_position_bucket(
    relative_position: i64,
    bidirectional: bool,
    num_buckets: usize,
    max_distance: usize,
) -> u32 {
    let mut num_buckets = num_buckets as i64;
    let mut bucket = 0;
    let distance = if bidirectional {
        num_buckets /= 2;
        if relative_position > 0 {
            bucket += num_buckets;
        }
        relative_position.abs()
    } else {
        (-relative_position).max(0)
    };
    let max_exact = num_buckets / 2;
    if distance < max_exact {
        return (bucket + distance) as u32;
    }
    let log_span = ((max_distance as f64) / (max_exact as f64)).ln() as f32;
    let log_ratio = (distance as f32 / max_exact as f32).ln() / log_span;
    let large = max_exact + (log_ratio * (num_buckets - max_exact) as f32) as i64;
    (bucket + large.min(num_buckets - 1)) as u32
}

/// RMS norm without bias or mean subtraction, computed in f32.
#[derive(Debug, Clone)]
struct T5LayerNorm {
    weight: Tensor,
    eps: f64,
}

impl T5LayerNorm {
    fn new(size: usize, eps: f64, vb: VarBuilder) -> Result<Self> {
        let weight = vb.get(size, "weight")?.to_dtype(DType::F32)?;
        Ok(Self { weight, eps })
    }

    /// `(B, L, D)` f32 → `(B, L, D)` in `dtype`: one fused pass on the CPU.
    fn forward(&self, xs: &Tensor, dtype: DType) -> Result<Tensor> {
        if crate::nn::fused::applies(&[xs]) && matches!(dtype, DType::F32 | DType::BF16) {
            return crate::nn::fused::rms_norm_as(xs, &self.weight, self.eps as f32, dtype);
        }
        let variance = xs.sqr()?.mean_keepdim(D::Minus1)?;
        let inv_rms = (variance + self.eps)?.sqrt()?.recip()?;
        xs.broadcast_mul(&inv_rms)?
            .broadcast_mul(&self.weight)?
            .to_dtype(dtype)
    }
}

/// Self-attention with a relative-position bias (its own table, or the one of layer 0).
#[derive(Debug, Clone)]
struct T5Attention {
    q: Linear,
    k: Linear,
    v: Linear,
    o: Linear,
    /// `(buckets, H)`; `None` in T5's layers past the first.
    relative_attention_bias: Option<Embedding>,
    num_heads: usize,
    d_kv: usize,
}

impl T5Attention {
    fn new(cfg: &T5Config, has_relative_attention_bias: bool, vb: VarBuilder) -> Result<Self> {
        let inner = cfg.num_heads * cfg.d_kv;
        let relative_attention_bias = if has_relative_attention_bias {
            let table = vb.get(
                (cfg.relative_attention_num_buckets, cfg.num_heads),
                "relative_attention_bias.weight",
            )?;
            Some(Embedding::new(table, cfg.num_heads))
        } else {
            None
        };
        Ok(Self {
            q: linear(cfg.d_model, inner, false, vb.pp("q"))?,
            k: linear(cfg.d_model, inner, false, vb.pp("k"))?,
            v: linear(cfg.d_model, inner, false, vb.pp("v"))?,
            o: linear(inner, cfg.d_model, false, vb.pp("o"))?,
            relative_attention_bias,
            num_heads: cfg.num_heads,
            d_kv: cfg.d_kv,
        })
    }

    /// This layer's position bias, `(1, H, L, L)` f32, or `None` when it has no table.
    ///
    /// * `buckets` — `(L·L,)` u32 bucket of every (query, key) pair, query-major
    fn position_bias(&self, buckets: &Tensor, l: usize) -> Result<Option<Tensor>> {
        let Some(table) = &self.relative_attention_bias else {
            return Ok(None);
        };
        if !buckets.device().is_cpu() || table.embeddings().track_op() {
            // (L·L, H) -> h lq lk -> 1 h lq lk, gathered on the device (and differentiable,
            // for a table being trained)
            let bias = table
                .forward(buckets)?
                .to_dtype(DType::F32)?
                .reshape((l, l, self.num_heads))?
                .permute((2, 0, 1))?
                .unsqueeze(0)?;
            return Ok(Some(bias));
        }
        // On the CPU: per head, its value of every (query, key) bucket, 1 h lq lk, built
        // contiguous (the attention reads it row by row; the permuted gather above costs a
        // single-threaded strided copy of the whole L × L × H bias per layer)
        use rayon::prelude::*;
        let per_head = table
            .embeddings()
            .to_dtype(DType::F32)?
            .t()?
            .contiguous()?
            .to_vec2::<f32>()?;
        let ids = buckets.to_vec1::<u32>()?;
        let mut data = vec![0f32; self.num_heads * ids.len()];
        data.par_chunks_mut(ids.len().max(1))
            .zip(&per_head)
            .for_each(|(out, head)| {
                for (o, &b) in out.iter_mut().zip(&ids) {
                    *o = head[b as usize];
                }
            });
        Tensor::from_vec(data, (1, self.num_heads, l, l), buckets.device()).map(Some)
    }

    /// * `xs` — `(B, L, D)` normed hidden states, weights' dtype
    /// * `position_bias` — `(1, H, L, L)` f32
    /// * `mask` — `(B, 1, 1, L)` f32, 0 to keep a key and f32::MIN to drop it
    ///
    /// Returns `(B, L, D)` in the weights' dtype.
    fn forward(
        &self,
        xs: &Tensor,
        position_bias: &Tensor,
        mask: Option<&Tensor>,
    ) -> Result<Tensor> {
        let (b, l, _) = xs.dims3()?;
        let heads = |t: Tensor| -> Result<Tensor> {
            // b l (h dk) -> b h l dk
            t.reshape((b, l, self.num_heads, self.d_kv))?
                .transpose(1, 2)?
                .contiguous()
        };
        let query = heads(xs.apply(&self.q)?)?;
        let key = heads(xs.apply(&self.k)?)?;
        let value = heads(xs.apply(&self.v)?)?;

        // No 1/√dk: T5 scales the query weights at initialisation instead. The position bias
        // and the mask are one score bias (B or 1, H, L, L), which the fused CPU attention adds
        // tile by tile (f32 scores, never the whole L × L matrix per head).
        let bias = match mask {
            Some(mask) => position_bias.broadcast_add(mask)?,
            None => position_bias.clone(),
        };
        let out =
            crate::nn::attention::attention_with_scale(&query, &key, &value, Some(&bias), 1.0)?;
        // b h l dk -> b l (h dk)
        out.transpose(1, 2)?
            .reshape((b, l, self.num_heads * self.d_kv))?
            .apply(&self.o)
    }
}

/// `DenseReluDense`: `wo(act(wi_0 x) * wi_1 x)` when gated, `wo(act(wi x))` otherwise.
#[derive(Debug, Clone)]
struct T5FeedForward {
    wi: Linear,
    wi_gate: Option<Linear>,
    wo: Linear,
    activation: FfActivation,
}

impl T5FeedForward {
    fn new(cfg: &T5Config, vb: VarBuilder) -> Result<Self> {
        let (activation, gated) = cfg.feed_forward()?;
        let (wi, wi_gate) = if gated {
            let wi_0 = linear(cfg.d_model, cfg.d_ff, false, vb.pp("wi_0"))?;
            let wi_1 = linear(cfg.d_model, cfg.d_ff, false, vb.pp("wi_1"))?;
            (wi_0, Some(wi_1))
        } else {
            (linear(cfg.d_model, cfg.d_ff, false, vb.pp("wi"))?, None)
        };
        Ok(Self {
            wi,
            wi_gate,
            wo: linear(cfg.d_ff, cfg.d_model, false, vb.pp("wo"))?,
            activation,
        })
    }

    /// `(B, L, D)` → `(B, L, D)`, weights' dtype. The gated GELU (`gated-gelu`) in one fused
    /// pass on the CPU.
    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        let pre = xs.apply(&self.wi)?;
        let hidden = match &self.wi_gate {
            Some(gate) => {
                let gate = xs.apply(gate)?;
                if self.activation == FfActivation::GeluTanh
                    && crate::nn::fused::applies(&[&pre, &gate])
                {
                    crate::nn::fused::gelu_mul(&pre, &gate)?
                } else {
                    (self.activation.apply(&pre)? * gate)?
                }
            }
            None => self.activation.apply(&pre)?,
        };
        hidden.apply(&self.wo)
    }
}

/// One encoder block: `layer.0` (norm, self-attention, residual) then `layer.1` (norm,
/// feed-forward, residual).
#[derive(Debug, Clone)]
struct T5Block {
    attention_norm: T5LayerNorm,
    attention: T5Attention,
    ff_norm: T5LayerNorm,
    ff: T5FeedForward,
}

impl T5Block {
    fn new(cfg: &T5Config, has_relative_attention_bias: bool, vb: VarBuilder) -> Result<Self> {
        let (eps, d) = (cfg.layer_norm_epsilon, cfg.d_model);
        let attn_vb = vb.pp("layer").pp(0);
        let ff_vb = vb.pp("layer").pp(1);
        Ok(Self {
            attention_norm: T5LayerNorm::new(d, eps, attn_vb.pp("layer_norm"))?,
            attention: T5Attention::new(
                cfg,
                has_relative_attention_bias,
                attn_vb.pp("SelfAttention"),
            )?,
            ff_norm: T5LayerNorm::new(d, eps, ff_vb.pp("layer_norm"))?,
            ff: T5FeedForward::new(cfg, ff_vb.pp("DenseReluDense"))?,
        })
    }

    /// `hidden_states` `(B, L, D)` f32 → `(B, L, D)` f32; `position_bias` `(1, H, L, L)` f32.
    fn forward(
        &self,
        hidden_states: &Tensor,
        position_bias: &Tensor,
        mask: Option<&Tensor>,
        dtype: DType,
    ) -> Result<Tensor> {
        // 1. self-attention
        let normed = self.attention_norm.forward(hidden_states, dtype)?;
        let attn = self.attention.forward(&normed, position_bias, mask)?;
        let hidden_states = (hidden_states + attn.to_dtype(DType::F32)?)?;
        // 2. feed-forward
        let normed = self.ff_norm.forward(&hidden_states, dtype)?;
        let ff = self.ff.forward(&normed)?;
        hidden_states + ff.to_dtype(DType::F32)?
    }
}

/// transformers' `T5EncoderModel` / `UMT5EncoderModel` (by [`T5Config::variant`]): token
/// embedding, encoder blocks, final norm.
#[derive(Debug, Clone)]
pub struct T5EncoderModel {
    shared: Embedding,
    blocks: Vec<T5Block>,
    final_layer_norm: T5LayerNorm,
    num_buckets: usize,
    max_distance: usize,
    dtype: DType,
    device: Device,
}

impl T5EncoderModel {
    /// Builds the encoder from a `T5EncoderModel` or `UMT5EncoderModel` checkpoint, as
    /// `cfg.variant` says (the encoder half of a `*Model` / `*ForConditionalGeneration` one
    /// loads too). A UMT5 config over T5 weights fails naming layer 1's missing bias table.
    /// The embedding is `shared.weight`, or `encoder.embed_tokens.weight` in checkpoints that
    /// store only the tied copy. Compute dtype is `vb.dtype()`.
    pub fn new(cfg: &T5Config, vb: VarBuilder) -> Result<Self> {
        cfg.feed_forward()?;
        let embed_name = ["shared.weight", "encoder.embed_tokens.weight"]
            .into_iter()
            .find(|name| vb.contains_tensor(name))
            .unwrap_or("shared.weight");
        let shared = Embedding::new(
            vb.get((cfg.vocab_size, cfg.d_model), embed_name)?,
            cfg.d_model,
        );
        let encoder = vb.pp("encoder");
        let blocks = (0..cfg.num_layers)
            .map(|i| {
                let has_bias = i == 0 || cfg.variant == T5Variant::Umt5;
                T5Block::new(cfg, has_bias, encoder.pp("block").pp(i))
            })
            .collect::<Result<Vec<_>>>()?;
        let final_layer_norm = T5LayerNorm::new(
            cfg.d_model,
            cfg.layer_norm_epsilon,
            encoder.pp("final_layer_norm"),
        )?;
        Ok(Self {
            shared,
            blocks,
            final_layer_norm,
            num_buckets: cfg.relative_attention_num_buckets,
            max_distance: cfg.relative_attention_max_distance,
            dtype: vb.dtype(),
            device: vb.device().clone(),
        })
    }

    /// Dtype of the weights and of the output.
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// Device the weights live on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Encodes token ids.
    ///
    /// * `input_ids` — `(B, L)` u32 (any integer dtype is converted)
    /// * `attention_mask` — `(B, L)`, nonzero for tokens to attend to; `None` attends to all.
    ///   Masked keys get `f32::MIN` added to their scores, as transformers' eager path does;
    ///   masked queries are still computed (callers zero them, see `encode_prompts`).
    ///
    /// Returns `last_hidden_state`, `(B, L, D)` in the weights' dtype.
    pub fn forward(&self, input_ids: &Tensor, attention_mask: Option<&Tensor>) -> Result<Tensor> {
        let (b, l) = input_ids.dims2()?;
        let input_ids = input_ids.to_dtype(DType::U32)?;
        let mask = match attention_mask {
            Some(mask) => {
                if mask.dims() != [b, l] {
                    candle_core::bail!(
                        "expected attention_mask (B, L) = ({b}, {l}), got {:?}",
                        mask.shape()
                    );
                }
                let keep = mask.to_dtype(DType::F32)?.ne(0f32)?;
                let zeros = Tensor::zeros((b, l), DType::F32, &self.device)?;
                let dropped = Tensor::full(f32::MIN, (b, l), &self.device)?;
                Some(keep.where_cond(&zeros, &dropped)?.reshape((b, 1, 1, l))?)
            }
            None => None,
        };
        let buckets = self.bucket_ids(l)?;

        let mut hidden_states = self.shared.forward(&input_ids)?.to_dtype(DType::F32)?;
        // T5: layer 0's bias is added in every layer; UMT5: each layer computes its own.
        let mut position_bias: Option<Tensor> = None;
        for block in &self.blocks {
            if let Some(own) = block.attention.position_bias(&buckets, l)? {
                position_bias = Some(own);
            }
            let Some(bias) = &position_bias else {
                candle_core::bail!("the first encoder layer has no relative_attention_bias");
            };
            hidden_states = block.forward(&hidden_states, bias, mask.as_ref(), self.dtype)?;
        }
        self.final_layer_norm.forward(&hidden_states, self.dtype)
    }

    /// `(L·L,)` u32: bucket of `key - query` for every (query, key), query-major.
    fn bucket_ids(&self, l: usize) -> Result<Tensor> {
        let ids: Vec<u32> = (0..l as i64)
            .flat_map(|query| {
                (0..l as i64).map(move |key| {
                    relative_position_bucket(key - query, true, self.num_buckets, self.max_distance)
                })
            })
            .collect();
        Tensor::from_vec(ids, l * l, &self.device)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Buckets printed by transformers' `UMT5Attention._relative_position_bucket` (the same
    /// function as T5's)
    /// (encoder, so bidirectional) for offsets around the log-bucket boundaries.
    #[test]
    fn buckets_match_transformers() {
        let offsets: [i64; 14] = [0, 1, -1, 7, -7, 8, -8, 12, 16, -31, 32, 64, 127, -1000];
        let buckets: [u32; 14] = [0, 17, 1, 23, 7, 24, 8, 25, 26, 11, 28, 30, 31, 15];
        for (rp, want) in offsets.into_iter().zip(buckets) {
            assert_eq!(
                relative_position_bucket(rp, true, 32, 128),
                want,
                "offset {rp}"
            );
        }
        let offsets: [i64; 8] = [0, 1, -1, 2, -2, 6, -6, 100];
        let buckets: [u32; 8] = [0, 5, 1, 6, 2, 6, 2, 7];
        for (rp, want) in offsets.into_iter().zip(buckets) {
            assert_eq!(
                relative_position_bucket(rp, true, 8, 20),
                want,
                "offset {rp}"
            );
        }
    }

    #[test]
    fn config_round_trips_through_config_json() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.json");
        let cfg = T5Config {
            d_model: 32,
            num_layers: 2,
            feed_forward_proj: "gated-relu".into(),
            ..Default::default()
        };
        cfg.write_config_json(&path).unwrap();
        assert_eq!(T5Config::from_file(&path).unwrap(), cfg);
        let raw: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        assert_eq!(raw["model_type"], "umt5");
        assert!(raw.get("dense_act_fn").is_none());
    }

    /// Missing keys take the defaults of `model_type`'s class; other model types are refused.
    #[test]
    fn model_type_picks_variant_and_defaults() {
        let t5 = T5Config::from_json(&serde_json::json!({"model_type": "t5", "d_model": 64}));
        let t5 = t5.unwrap();
        assert_eq!(t5.variant, T5Variant::T5);
        assert_eq!((t5.d_model, t5.d_ff, t5.num_layers), (64, 2048, 6));
        assert_eq!(t5.feed_forward().unwrap(), (FfActivation::Relu, false));
        let umt5 = T5Config::from_json(&serde_json::json!({"model_type": "umt5"})).unwrap();
        assert_eq!(umt5, T5Config::default());
        let untyped = T5Config::from_json(&serde_json::json!({"num_layers": 3})).unwrap();
        assert_eq!(untyped.variant, T5Variant::Umt5);
        let err = T5Config::from_json(&serde_json::json!({"model_type": "mt5"})).unwrap_err();
        assert!(err.contains("mt5"), "{err}");
    }

    #[test]
    fn t5_config_round_trips_through_config_json() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.json");
        let cfg = T5Config {
            d_model: 32,
            ..T5Config::t5_defaults()
        };
        cfg.write_config_json(&path).unwrap();
        assert_eq!(T5Config::from_file(&path).unwrap(), cfg);
        let raw: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        assert_eq!(raw["model_type"], "t5");
        assert_eq!(raw["architectures"][0], "T5EncoderModel");
    }

    #[test]
    fn config_defaults_and_activations() {
        let cfg: T5Config = serde_json::from_str("{}").unwrap();
        assert_eq!(cfg, T5Config::default());
        assert_eq!(cfg.feed_forward().unwrap(), (FfActivation::GeluTanh, true));
        let relu: T5Config = serde_json::from_str(r#"{"feed_forward_proj": "relu"}"#).unwrap();
        assert_eq!(relu.feed_forward().unwrap(), (FfActivation::Relu, false));
        // A saved `dense_act_fn` wins, as in transformers.
        let saved: T5Config =
            serde_json::from_str(r#"{"feed_forward_proj": "gated-gelu", "dense_act_fn": "gelu"}"#)
                .unwrap();
        assert_eq!(saved.feed_forward().unwrap(), (FfActivation::Gelu, true));
        for bad in ["gated-foo", "a-b-c", "gated-"] {
            let cfg = T5Config {
                feed_forward_proj: bad.into(),
                ..Default::default()
            };
            assert!(cfg.feed_forward().is_err(), "{bad}");
        }
    }
}
