//! Parity of the T5 encoder (LTX-Video's and CogVideoX's, `T5EncoderModel` of transformers)
//! and of [`encode_prompts_unmasked`] with their `_get_t5_prompt_embeds`.
//!
//! The fixture (`tests/fixtures/t5/`, made by `tools/fixtures/t5.py` with transformers 5.23.0)
//! holds a tiny random 3-layer T5 encoder (d_model 32, 4 heads, 8 buckets, max distance 20;
//! only layer 0 has a bias table), the ids and masks of two prompts at length 20 (tokenized
//! with Wan's fixture tokenizer) and the encoder's output with and without the mask.

mod common;

use std::collections::HashMap;
use std::path::PathBuf;

use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use common::max_abs_diff;
use vidgen::text::{encode_prompts_unmasked, PromptTokenizer, T5Config, T5EncoderModel, T5Variant};

const TOLERANCE: f32 = 1e-4;

fn fixture_dir() -> PathBuf {
    common::fixture_dir().join("../t5")
}

struct Fixture {
    reference: serde_json::Value,
    tensors: HashMap<String, Tensor>,
    cfg: T5Config,
    weights: HashMap<String, Tensor>,
}

impl Fixture {
    fn load() -> Self {
        let dir = fixture_dir();
        let json = std::fs::read_to_string(dir.join("reference.json"))
            .unwrap_or_else(|e| panic!("{}: {e}", dir.join("reference.json").display()));
        let tensors =
            candle_core::safetensors::load(dir.join("reference.safetensors"), &Device::Cpu)
                .unwrap();
        let te = dir.join("text_encoder");
        let cfg = T5Config::from_file(te.join("config.json")).unwrap();
        let weights =
            candle_core::safetensors::load(te.join("model.safetensors"), &Device::Cpu).unwrap();
        Self {
            reference: serde_json::from_str(&json).unwrap(),
            tensors,
            cfg,
            weights,
        }
    }

    fn tensor(&self, name: &str) -> &Tensor {
        self.tensors
            .get(name)
            .unwrap_or_else(|| panic!("fixture has no tensor {name}"))
    }

    fn encoder(&self, dtype: DType) -> T5EncoderModel {
        let vb = VarBuilder::from_tensors(self.weights.clone(), dtype, &Device::Cpu);
        T5EncoderModel::new(&self.cfg, vb).unwrap()
    }
}

#[test]
fn config_is_read_as_t5() {
    let fx = Fixture::load();
    assert_eq!(fx.cfg.variant, T5Variant::T5);
    assert_eq!(
        (fx.cfg.num_layers, fx.cfg.num_heads, fx.cfg.d_kv),
        (3, 4, 8)
    );
}

#[test]
fn encoder_output_matches_transformers_with_and_without_mask() {
    let fx = Fixture::load();
    let model = fx.encoder(DType::F32);
    let input_ids = fx.tensor("input_ids");
    let mask = fx.tensor("attention_mask");

    let unmasked = model.forward(input_ids, None).unwrap();
    let err = max_abs_diff(&unmasked, fx.tensor("last_hidden_state_unmasked"));
    eprintln!("unmasked: max abs error {err:.3e}");
    assert!(err <= TOLERANCE, "unmasked: max abs error {err}");

    let masked = model.forward(input_ids, Some(mask)).unwrap();
    let err = max_abs_diff(&masked, fx.tensor("last_hidden_state_masked"));
    eprintln!("masked: max abs error {err:.3e}");
    assert!(err <= TOLERANCE, "masked: max abs error {err}");
}

/// The CogVideoX / LTX entry: tokenized as given, encoded without the mask, padded rows
/// kept, the mask returned.
#[test]
fn unmasked_prompt_embeds_match_get_t5_prompt_embeds() {
    let fx = Fixture::load();
    let model = fx.encoder(DType::F32);
    let tokenizer =
        PromptTokenizer::from_file(common::fixture_dir().join("pipeline/tokenizer/tokenizer.json"))
            .unwrap();
    let prompts: Vec<String> = serde_json::from_value(fx.reference["prompts"].clone()).unwrap();
    let prompts: Vec<&str> = prompts.iter().map(String::as_str).collect();
    let max_len = fx.reference["max_sequence_length"].as_u64().unwrap() as usize;

    let out = encode_prompts_unmasked(&tokenizer, &model, &prompts, max_len).unwrap();
    let want_mask = fx.tensor("attention_mask").to_dtype(DType::U32).unwrap();
    let mask_diff = max_abs_diff(&out.attention_mask, &want_mask);
    assert_eq!(mask_diff, 0.0, "attention masks differ");
    let err = max_abs_diff(&out.prompt_embeds, fx.tensor("last_hidden_state_unmasked"));
    eprintln!("encode_prompts_unmasked: max abs error {err:.3e}");
    assert!(err <= TOLERANCE, "max abs error {err}");
}

/// The bias of layer 0 is shared: a T5 checkpoint has no table past layer 0, and reading it
/// as UMT5 fails naming the first missing one.
#[test]
fn t5_weights_have_one_bias_table_and_do_not_load_as_umt5() {
    let fx = Fixture::load();
    let tables: Vec<&String> = fx
        .weights
        .keys()
        .filter(|k| k.contains("relative_attention_bias"))
        .collect();
    assert_eq!(
        tables,
        ["encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight"]
    );
    let umt5 = T5Config {
        variant: T5Variant::Umt5,
        ..fx.cfg.clone()
    };
    let vb = VarBuilder::from_tensors(fx.weights.clone(), DType::F32, &Device::Cpu);
    let err = T5EncoderModel::new(&umt5, vb).unwrap_err();
    let missing = "encoder.block.1.layer.0.SelfAttention.relative_attention_bias.weight";
    assert!(err.to_string().contains(missing), "{err}");
}

#[test]
fn bf16_encoder_is_close() {
    let fx = Fixture::load();
    let model = fx.encoder(DType::BF16);
    let out = model.forward(fx.tensor("input_ids"), None).unwrap();
    assert_eq!(out.dtype(), DType::BF16);
    let err = max_abs_diff(&out, fx.tensor("last_hidden_state_unmasked"));
    eprintln!("bf16 max abs error {err:.3e}");
    assert!(err <= 0.1, "bf16 max abs error {err}");
}
