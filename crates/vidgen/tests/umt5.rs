//! Parity of the text side with diffusers' `WanPipeline._get_t5_prompt_embeds`.
//!
//! The fixture (`tests/fixtures/wan/`, made by `tools/fixtures/wan.py` with diffusers 0.42.1,
//! transformers 5.23.0, tokenizers 0.23.3, no ftfy) holds a tiny random Wan pipeline: a
//! Unigram T5 tokenizer and a 2-layer UMT5 encoder (d_model 32, 4 heads, 8 buckets, max
//! distance 20), and the pipeline's token ids, masks and prompt embeddings at
//! `max_sequence_length` 24.

mod common;

use std::collections::HashMap;
use std::path::PathBuf;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use common::max_abs_diff;
use vidgen::text::{clean_prompt, encode_prompts, PromptTokenizer, Umt5Config, Umt5EncoderModel};

const TOLERANCE: f32 = 1e-4;

struct Fixture {
    reference: serde_json::Value,
    tensors: HashMap<String, Tensor>,
    tokenizer: PromptTokenizer,
    dir: PathBuf,
}

impl Fixture {
    fn load() -> Self {
        let dir = common::fixture_dir();
        let json = std::fs::read_to_string(dir.join("reference.json"))
            .unwrap_or_else(|e| panic!("{}: {e}", dir.join("reference.json").display()));
        let tensors =
            candle_core::safetensors::load(dir.join("reference.safetensors"), &Device::Cpu)
                .unwrap();
        let tokenizer =
            PromptTokenizer::from_file(dir.join("pipeline/tokenizer/tokenizer.json")).unwrap();
        Self {
            reference: serde_json::from_str(&json).unwrap(),
            tensors,
            tokenizer,
            dir,
        }
    }

    fn text(&self, key: &str) -> &str {
        self.reference[key].as_str().unwrap()
    }

    fn max_len(&self) -> usize {
        self.reference["pipeline_call"]["max_sequence_length"]
            .as_u64()
            .unwrap() as usize
    }

    fn tensor(&self, name: &str) -> &Tensor {
        self.tensors
            .get(name)
            .unwrap_or_else(|| panic!("fixture has no tensor {name}"))
    }

    /// A `(1, L)` integer tensor of the fixture as a list.
    fn ids(&self, name: &str) -> Vec<u32> {
        let t = self.tensor(name).squeeze(0).unwrap().to_dtype(DType::I64);
        t.unwrap()
            .to_vec1::<i64>()
            .unwrap()
            .into_iter()
            .map(|v| v as u32)
            .collect()
    }

    fn encoder_weights(&self) -> (Umt5Config, HashMap<String, Tensor>) {
        let te = self.dir.join("pipeline/text_encoder");
        let cfg = Umt5Config::from_file(te.join("config.json")).unwrap();
        let weights =
            candle_core::safetensors::load(te.join("model.safetensors"), &Device::Cpu).unwrap();
        (cfg, weights)
    }

    fn encoder(&self, dtype: DType) -> Umt5EncoderModel {
        let (cfg, weights) = self.encoder_weights();
        let vb = VarBuilder::from_tensors(weights, dtype, &Device::Cpu);
        Umt5EncoderModel::new(&cfg, vb).unwrap()
    }
}

#[test]
fn cleaned_prompts_ids_and_masks_match_the_pipeline() {
    let fx = Fixture::load();
    for (prompt, prefix) in [("prompt", "text."), ("negative_prompt", "text.negative_")] {
        let cleaned = clean_prompt(fx.text(prompt));
        assert_eq!(cleaned, fx.text(&format!("{prompt}_cleaned")));

        let encoded = fx.tokenizer.encode_padded(&cleaned, fx.max_len()).unwrap();
        assert_eq!(
            encoded.input_ids,
            fx.ids(&format!("{prefix}input_ids")),
            "{prompt}"
        );
        assert_eq!(
            encoded.attention_mask,
            fx.ids(&format!("{prefix}attention_mask")),
            "{prompt}"
        );
        assert!(!encoded.truncated());

        let pieces: Vec<String> = encoded.input_ids[..encoded.true_len]
            .iter()
            .map(|&id| fx.tokenizer.inner().id_to_token(id).unwrap())
            .collect();
        let expected: Vec<String> =
            serde_json::from_value(fx.reference[format!("{prompt}_tokens")].clone()).unwrap();
        assert_eq!(pieces, expected);
    }
}

#[test]
fn encoder_output_matches_transformers() {
    let fx = Fixture::load();
    let model = fx.encoder(DType::F32);
    let input_ids = fx.tensor("text.input_ids");
    let mask = fx.tensor("text.attention_mask");
    let hidden = model.forward(input_ids, Some(mask)).unwrap();
    let err = max_abs_diff(&hidden, fx.tensor("text.encoder_last_hidden_state"));
    assert!(
        err <= TOLERANCE,
        "UMT5 last_hidden_state max abs error {err}"
    );
}

#[test]
fn prompt_embeds_match_the_pipeline() {
    let fx = Fixture::load();
    let model = fx.encoder(DType::F32);
    let (prompt, negative) = (fx.text("prompt"), fx.text("negative_prompt"));
    let expected = [
        fx.tensor("text.prompt_embeds"),
        fx.tensor("text.negative_prompt_embeds"),
    ];

    for (text, want) in [prompt, negative].into_iter().zip(expected) {
        let embeds = encode_prompts(&fx.tokenizer, &model, &[text], fx.max_len()).unwrap();
        let err = max_abs_diff(&embeds, want);
        eprintln!("{text:?}: max abs error {err:.3e}");
        assert!(err <= TOLERANCE, "{text:?}: max abs error {err}");
    }

    // Both in one batch (different true lengths): each row is what it is alone.
    let both = encode_prompts(&fx.tokenizer, &model, &[prompt, negative], fx.max_len()).unwrap();
    let want = Tensor::cat(&expected, 0).unwrap();
    let err = max_abs_diff(&both, &want);
    assert!(err <= TOLERANCE, "batched: max abs error {err}");
}

/// bf16 weights run (norms and softmax stay in f32) and land near the f32 reference.
#[test]
fn bf16_encoder_is_close() {
    let fx = Fixture::load();
    let model = fx.encoder(DType::BF16);
    let embeds = encode_prompts(&fx.tokenizer, &model, &[fx.text("prompt")], fx.max_len()).unwrap();
    assert_eq!(embeds.dtype(), DType::BF16);
    let err = max_abs_diff(&embeds, fx.tensor("text.prompt_embeds"));
    eprintln!("bf16 max abs error {err:.3e}");
    assert!(err <= 0.1, "bf16 max abs error {err}");
}

/// Checkpoints that store the embedding only as `encoder.embed_tokens.weight` load the same;
/// a missing weight is an error that names it.
#[test]
fn embedding_under_either_name_and_missing_weights() {
    let fx = Fixture::load();
    let (cfg, mut weights) = fx.encoder_weights();
    let shared = weights.remove("shared.weight").unwrap();
    weights.insert("encoder.embed_tokens.weight".into(), shared);
    let model = Umt5EncoderModel::new(
        &cfg,
        VarBuilder::from_tensors(weights.clone(), DType::F32, &Device::Cpu),
    )
    .unwrap();
    let embeds = encode_prompts(&fx.tokenizer, &model, &[fx.text("prompt")], fx.max_len()).unwrap();
    assert!(max_abs_diff(&embeds, fx.tensor("text.prompt_embeds")) <= TOLERANCE);

    let missing = "encoder.block.1.layer.0.SelfAttention.relative_attention_bias.weight";
    weights.remove(missing);
    let err = Umt5EncoderModel::new(
        &cfg,
        VarBuilder::from_tensors(weights, DType::F32, &Device::Cpu),
    )
    .unwrap_err();
    assert!(err.to_string().contains(missing), "{err}");
}
