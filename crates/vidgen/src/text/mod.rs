//! Text side: prompt cleaning and tokenization (HF `tokenizer.json`), the UMT5 encoder, and
//! [`encode_prompts`], which turns prompts into the text states Wan's transformer reads.

mod html;
pub mod tokenizer;
pub mod umt5;
pub mod vocab;

use candle_core::Tensor;

pub use tokenizer::{clean_prompt, Encoded, PromptTokenizer};
pub use umt5::{Umt5Config, Umt5EncoderModel};
pub use vocab::{default_vocab, write_tokenizer_json};

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
    model: &Umt5EncoderModel,
    prompts: &[&str],
    max_len: usize,
) -> crate::Result<Tensor> {
    if prompts.is_empty() {
        return Err(crate::Error::InvalidRequest("no prompts to encode".into()));
    }
    let mut input_ids = Vec::with_capacity(prompts.len() * max_len);
    let mut attention_mask = Vec::with_capacity(prompts.len() * max_len);
    for prompt in prompts {
        let encoded = tokenizer.encode_padded(&clean_prompt(prompt), max_len)?;
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
    let input_ids = Tensor::from_vec(input_ids, shape, device)?;
    let attention_mask = Tensor::from_vec(attention_mask, shape, device)?;

    let hidden_states = model.forward(&input_ids, Some(&attention_mask))?; // (B, L, D)
                                                                           // The mask is a prefix of ones (right padding), so "past the true length" is "mask == 0".
    let keep = attention_mask
        .ne(0u32)?
        .unsqueeze(2)?
        .broadcast_as(hidden_states.shape())?;
    let zeros = Tensor::zeros(hidden_states.shape(), hidden_states.dtype(), device)?;
    Ok(keep.where_cond(&hidden_states, &zeros)?)
}
