//! A small T5-style Unigram tokenizer for vidgen's own models (`vidgen init`).
//!
//! [`write_tokenizer_json`] writes the three files that both the Rust `tokenizers` crate and
//! transformers' `T5Tokenizer` / `T5TokenizerFast` / `AutoTokenizer` read, laid out as
//! transformers 5 saves a T5 tokenizer: `<pad>` = 0, `</s>` = 1, `<unk>` = 2, no normalizer,
//! whitespace split then Metaspace (`▁` prepended to every word), a template post-processor
//! that appends `</s>`, no sentinel `<extra_id_N>` tokens.
//!
//! transformers 5 rebuilds a `T5Tokenizer` from the file's vocabulary with its own fixed
//! pipeline (the one above) rather than using the file's; writing that same pipeline is what
//! makes the Rust and Python sides tokenize identically.

use std::path::Path;

use serde_json::{json, Value};

use crate::{Error, Result};

/// The Metaspace marker that starts every word piece.
pub const WORD_START: char = '▁';

/// Special tokens at ids 0, 1, 2, the order T5 (and transformers' `unk_id=2`) expects.
pub const SPECIAL_TOKENS: [&str; 3] = ["<pad>", "</s>", "<unk>"];

/// Common words of video prompts, most frequent first (their rank sets their score).
const WORDS: &str = "\
a the of and in on with to is at an its it by from for as over under into through \
while his her their this that are be up down left right front back top side near far \
red orange yellow green blue purple pink brown black white gray grey gold silver dark \
light bright colorful small big large tiny huge tall short long wide round square flat \
old young new little soft hard smooth rough shiny wet dry hot cold warm cool \
ball cube box circle sphere ring disk block shape object background floor ground wall \
sky sun moon star cloud clouds rain snow wind fog storm water sea ocean river lake wave \
waves beach sand mountain mountains hill forest tree trees grass flower flowers leaf \
leaves garden field road street city building house room window door table chair car \
bus train boat ship plane bird birds fish dog cat horse cow person man woman boy girl \
child people crowd hand hands face eyes hair head body robot camera scene view shot \
moves moving move bounces bouncing bounce rolls rolling roll falls falling fall flies \
flying fly walks walking walk runs running run jumps jumping jump swims swimming swim \
spins spinning spin rotates rotating slides sliding slide drops dropping rises rising \
grows growing shrinks flows flowing floats floating turns turning dances dancing sits \
sitting stands standing looks looking smiles talking plays playing eats drinks opens \
closes holds carries pushes pulls throws catches hits follows chases crosses enters \
leaves stops starts goes comes slowly quickly fast slow gently steadily suddenly \
smoothly together apart across along around toward towards away behind above below \
between beside inside outside one two three four five many several few some each every \
other another same different first second last next then again still very more most \
much all both half full empty center middle edge corner day night morning evening \
sunset sunrise shadow shadows reflection sunlight lighting lights lamp fire smoke \
glow sparkle motion speed gravity collision time frame video clip style realistic \
cinematic close closeup aerial wide-angle zoom pan tracking static handheld drone \
slow-motion timelapse high quality detailed sharp blurry animation cartoon painting \
photo photograph film footage render 3d 2d pixel art";

/// The default vocabulary: `▁`, every printable ASCII character as its own piece (so any
/// ASCII text is encodable), and each word of a built-in list of common video-prompt words as
/// a `▁word` piece. Scores are log-probabilities: words score far above any spelling of them
/// from characters, frequent words above rare ones.
pub fn default_vocab() -> Vec<(String, f64)> {
    let mut pieces: Vec<(String, f64)> = vec![(WORD_START.to_string(), -3.0)];
    for c in (b'!'..=b'~').map(char::from) {
        let score = match c {
            'a'..='z' => -9.0,
            '0'..='9' => -9.5,
            'A'..='Z' => -10.0,
            _ => -10.5,
        };
        pieces.push((c.to_string(), score));
    }
    let mut seen = std::collections::HashSet::new();
    for (rank, word) in WORDS.split_whitespace().enumerate() {
        if seen.insert(word) {
            // A Zipf-like prior: log p ≈ -(4 + ln(rank + 1)), from -4 down to about -10.
            let score = -(4.0 + ((rank + 1) as f64).ln());
            pieces.push((format!("{WORD_START}{word}"), score));
        }
    }
    pieces
}

/// Writes `tokenizer.json`, `tokenizer_config.json` and `special_tokens_map.json` into `dir`
/// (created if needed) for a Unigram vocabulary of `pieces` (piece, log-probability), placed
/// after the three special tokens. Pieces repeating a special token are rejected.
///
/// Returns the vocabulary size (ids `0..size`), which the text encoder's `vocab_size` must
/// cover.
pub fn write_tokenizer_json(dir: &Path, pieces: &[(String, f64)]) -> Result<usize> {
    let mut vocab: Vec<Value> = SPECIAL_TOKENS.iter().map(|t| json!([t, 0.0])).collect();
    let mut seen = std::collections::HashSet::new();
    for (piece, score) in pieces {
        if piece.is_empty() || SPECIAL_TOKENS.contains(&piece.as_str()) || !seen.insert(piece) {
            return Err(Error::InvalidRequest(format!(
                "tokenizer piece {piece:?} is empty, special or repeated"
            )));
        }
        if !score.is_finite() {
            return Err(Error::InvalidRequest(format!(
                "tokenizer piece {piece:?} has non-finite score {score}"
            )));
        }
        vocab.push(json!([piece, score]));
    }
    let size = vocab.len();

    let added_tokens: Vec<Value> = SPECIAL_TOKENS
        .iter()
        .enumerate()
        .map(|(id, content)| {
            json!({
                "id": id, "content": content, "single_word": false, "lstrip": false,
                "rstrip": false, "normalized": false, "special": true
            })
        })
        .collect();
    let metaspace = json!({
        "type": "Metaspace", "replacement": WORD_START.to_string(),
        "prepend_scheme": "always", "split": true
    });
    let sequence = |id: &str| json!({ "Sequence": { "id": id, "type_id": 0 } });
    let eos = json!({ "SpecialToken": { "id": "</s>", "type_id": 0 } });
    let tokenizer = json!({
        "version": "1.0",
        "truncation": null,
        "padding": null,
        "added_tokens": added_tokens,
        "normalizer": null,
        "pre_tokenizer": {
            "type": "Sequence",
            "pretokenizers": [{ "type": "WhitespaceSplit" }, metaspace.clone()]
        },
        "post_processor": {
            "type": "TemplateProcessing",
            "single": [sequence("A"), eos.clone()],
            "pair": [sequence("A"), eos.clone(), sequence("B"), eos],
            "special_tokens": {
                "</s>": { "id": "</s>", "ids": [1], "tokens": ["</s>"] }
            }
        },
        "decoder": metaspace,
        "model": { "type": "Unigram", "unk_id": 2, "vocab": vocab, "byte_fallback": false }
    });
    // `extra_ids: 0` keeps transformers from appending 100 `<extra_id_N>` tokens past the
    // vocabulary; `additional_special_tokens` is the transformers 4 spelling of the same.
    let config = json!({
        "tokenizer_class": "T5Tokenizer",
        "eos_token": "</s>",
        "unk_token": "<unk>",
        "pad_token": "<pad>",
        "extra_ids": 0,
        "additional_special_tokens": [],
        "model_max_length": 512,
        "clean_up_tokenization_spaces": false
    });
    let special_map = json!({ "eos_token": "</s>", "unk_token": "<unk>", "pad_token": "<pad>" });

    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    for (name, value) in [
        ("tokenizer.json", &tokenizer),
        ("tokenizer_config.json", &config),
        ("special_tokens_map.json", &special_map),
    ] {
        let path = dir.join(name);
        let text = serde_json::to_string_pretty(value).expect("JSON values serialize");
        std::fs::write(&path, text + "\n").map_err(|e| Error::io(&path, e))?;
    }
    Ok(size)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::text::tokenizer::PromptTokenizer;

    #[test]
    fn default_vocab_covers_ascii_and_words() {
        let vocab = default_vocab();
        let has = |p: &str| vocab.iter().any(|(q, _)| q == p);
        assert!(has("▁") && has("a") && has("~") && has("Z") && has("7"));
        assert!(has("▁ball") && has("▁bounces") && has("▁cinematic"));
        assert!(vocab.len() > 400, "{}", vocab.len());
    }

    #[test]
    fn written_folder_reloads_and_encodes() {
        let dir = tempfile::tempdir().unwrap();
        let size = write_tokenizer_json(dir.path(), &default_vocab()).unwrap();
        for name in ["tokenizer_config.json", "special_tokens_map.json"] {
            assert!(dir.path().join(name).is_file());
        }
        let raw = tokenizers::Tokenizer::from_file(dir.path().join("tokenizer.json")).unwrap();
        assert_eq!(raw.get_vocab_size(true), size);
        let tok = PromptTokenizer::from_file(dir.path().join("tokenizer.json")).unwrap();
        let enc = tok.encode_padded("A red ball bounces, fast!", 12).unwrap();
        let pieces: Vec<String> = enc.input_ids[..enc.true_len]
            .iter()
            .map(|&id| raw.id_to_token(id).unwrap())
            .collect();
        assert_eq!(
            pieces,
            [
                "▁",
                "A",
                "▁red",
                "▁ball",
                "▁bounces",
                ",",
                "▁fast",
                "!",
                "</s>"
            ]
        );
        let text = raw.decode(&enc.input_ids, true).unwrap();
        assert_eq!(text, "A red ball bounces, fast!");
    }

    #[test]
    fn rejects_bad_pieces() {
        let dir = tempfile::tempdir().unwrap();
        for bad in [
            vec![("</s>".to_string(), -1.0)],
            vec![("x".into(), -1.0); 2],
        ] {
            assert!(write_tokenizer_json(dir.path(), &bad).is_err());
        }
        assert!(write_tokenizer_json(dir.path(), &[("x".into(), f64::NAN)]).is_err());
    }

    /// Prompts the Python cross-check tokenizes too: words, unknown words and characters,
    /// punctuation, digits, upper case, non-ASCII, a truncated one.
    pub(crate) const CROSS_CHECK_PROMPTS: [&str; 6] = [
        "A red ball bounces on the grass.",
        "a cinematic aerial shot of mountains at sunset, slow-motion",
        "Zyxq frobnicates 42 widgets!!! (really?)",
        "café 日本語 naïve — ok",
        "",
        "one two three four five six seven eight nine ten eleven twelve thirteen",
    ];

    /// Writes the default tokenizer folder and the Rust encodings (length 12) of
    /// `CROSS_CHECK_PROMPTS` to `$VIDGEN_TOKENIZER_CHECK_DIR`, for the transformers check
    /// described in the text module's report: `cargo test -- --ignored write_for_python`.
    #[test]
    #[ignore]
    fn write_for_python_check() {
        let dir = std::path::PathBuf::from(std::env::var("VIDGEN_TOKENIZER_CHECK_DIR").unwrap());
        write_tokenizer_json(&dir, &default_vocab()).unwrap();
        let tok = PromptTokenizer::from_file(dir.join("tokenizer.json")).unwrap();
        let encoded: Vec<Value> = CROSS_CHECK_PROMPTS
            .iter()
            .map(|p| {
                let e = tok.encode_padded(p, 12).unwrap();
                json!({ "prompt": p, "input_ids": e.input_ids, "attention_mask": e.attention_mask })
            })
            .collect();
        std::fs::write(
            dir.join("rust_encodings.json"),
            Value::from(encoded).to_string(),
        )
        .unwrap();
    }
}
