//! Text side: prompt cleaning and tokenization (HF `tokenizer.json`), the T5 / UMT5 encoder,
//! and the two ways the pipelines turn prompts into text states: [`encode_prompts`] (Wan) and
//! [`encode_prompts_unmasked`] (LTX-Video, CogVideoX).

mod html;
pub mod t5;
pub mod tokenizer;
pub mod vocab;

use candle_core::Tensor;

pub use t5::{T5Config, T5EncoderModel, T5Variant};
pub use tokenizer::{clean_prompt, Encoded, PromptTokenizer};
pub use vocab::{default_vocab, write_tokenizer_json};

/// Wan's name for [`T5Config`] (a config whose `model_type` is `"umt5"`).
pub type Umt5Config = T5Config;
/// Wan's name for [`T5EncoderModel`] (built from a UMT5 config).
pub type Umt5EncoderModel = T5EncoderModel;

/// Text states and the mask of the tokens they came from, as LTX-Video's
/// `_get_t5_prompt_embeds` returns them.
#[derive(Debug, Clone)]
pub struct PromptEmbeds {
    /// `(B, L, D)` encoder output, padded positions included, in the encoder's dtype.
    pub prompt_embeds: Tensor,
    /// `(B, L)` u32, 1 for the prompt and its `</s>`, 0 for padding.
    pub attention_mask: Tensor,
}

/// Tokenizes each prompt (as given) to `max_len` ids; `(B, L)` u32 ids and mask.
fn tokenize(
    tokenizer: &PromptTokenizer,
    model: &T5EncoderModel,
    prompts: &[String],
    max_len: usize,
) -> crate::Result<(Tensor, Tensor)> {
    if prompts.is_empty() {
        return Err(crate::Error::InvalidRequest("no prompts to encode".into()));
    }
    let mut input_ids = Vec::with_capacity(prompts.len() * max_len);
    let mut attention_mask = Vec::with_capacity(prompts.len() * max_len);
    for prompt in prompts {
        let encoded = tokenizer.encode_padded(prompt, max_len)?;
        if encoded.truncated() {
            tracing::warn!(
                "prompt has {} tokens; the text encoder reads only the first {max_len}",
                encoded.full_len
            );
        }
        input_ids.extend_from_slice(&encoded.input_ids);
        attention_mask.extend_from_slice(&encoded.attention_mask);
    }
    let shape = (prompts.len(), max_len);
    let device = model.device();
    Ok((
        Tensor::from_vec(input_ids, shape, device)?,
        Tensor::from_vec(attention_mask, shape, device)?,
    ))
}

/// Prompts → text states, as diffusers' `CogVideoXPipeline._get_t5_prompt_embeds` and
/// `LTXPipeline._get_t5_prompt_embeds` compute them: each prompt tokenized **as given** (no
/// cleaning) to `max_len` ids (truncated, `</s>`, padded), and encoded **without** an
/// attention mask, so the pad tokens are attended to and their output rows are kept as they
/// come out (not zeroed). Both pipelines do this (diffusers 0.42); they differ only in what
/// they do with the mask: CogVideoX drops it (its transformer attends to all `L` text tokens,
/// default `L` = 226), LTX passes it to its transformer as `encoder_attention_mask`
/// (default `L` = 128).
///
/// Returns `(B, L, D)` states with `B = prompts.len()`, `L = max_len`, in the encoder's
/// dtype, and the `(B, L)` token mask. A truncated prompt is logged as a warning.
pub fn encode_prompts_unmasked(
    tokenizer: &PromptTokenizer,
    model: &T5EncoderModel,
    prompts: &[&str],
    max_len: usize,
) -> crate::Result<PromptEmbeds> {
    let prompts: Vec<String> = prompts.iter().map(|p| p.to_string()).collect();
    let (input_ids, attention_mask) = tokenize(tokenizer, model, &prompts, max_len)?;
    let prompt_embeds = model.forward(&input_ids, None)?; // (B, L, D)
    Ok(PromptEmbeds {
        prompt_embeds,
        attention_mask,
    })
}

/// Prompts → text states, as diffusers' `WanPipeline._get_t5_prompt_embeds` computes them:
/// each prompt cleaned ([`clean_prompt`]), tokenized to `max_len` ids (truncated, `</s>`,
/// padded), encoded by UMT5 **with** the attention mask, and every position past a prompt's
/// true length then set to zero (the reference slices to the true length and re-pads with
/// zeros; those zero rows stay in the transformer's cross-attention keys).
///
/// Returns `(B, L, D)` with `B = prompts.len()`, `L = max_len`, in the encoder's dtype, on its
/// device. A truncated prompt is logged as a warning (see [`Encoded::truncated`]).
pub fn encode_prompts(
    tokenizer: &PromptTokenizer,
    model: &T5EncoderModel,
    prompts: &[&str],
    max_len: usize,
) -> crate::Result<Tensor> {
    let cleaned: Vec<String> = prompts.iter().map(|p| clean_prompt(p)).collect();
    let (input_ids, attention_mask) = tokenize(tokenizer, model, &cleaned, max_len)?;
    let device = model.device();

    let hidden_states = model.forward(&input_ids, Some(&attention_mask))?; // (B, L, D)
                                                                           // The mask is a prefix of ones (right padding), so "past the true length" is "mask == 0".
    let keep = attention_mask
        .ne(0u32)?
        .unsqueeze(2)?
        .broadcast_as(hidden_states.shape())?;
    let zeros = Tensor::zeros(hidden_states.shape(), hidden_states.dtype(), device)?;
    Ok(keep.where_cond(&hidden_states, &zeros)?)
}
