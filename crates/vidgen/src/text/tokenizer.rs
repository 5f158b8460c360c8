//! Prompt tokenization as Wan's pipeline does it: clean the text, then tokenize with the
//! checkpoint's `tokenizer.json`, truncate and pad to a fixed length `L`.

use std::path::Path;

use tokenizers::{PostProcessor, Tokenizer, TruncationDirection};

use crate::text::html;
use crate::{Error, Result};

/// Cleans a prompt the way diffusers' `prompt_clean` does (ftfy aside): HTML character
/// references decoded twice (so `&amp;lt;` becomes `<`), every run of whitespace collapsed to
/// one space, the ends stripped.
///
/// Two notions of whitespace meet here, as in the reference: runs are collapsed with the
/// `regex` module's `\s` (Unicode `White_Space`, Rust's `char::is_whitespace`), while Python's
/// `str.strip()` also strips the separators U+001C–U+001F.
pub fn clean_prompt(prompt: &str) -> String {
    let unescaped = html::unescape(&html::unescape(prompt));
    let stripped = unescaped.trim_matches(is_python_space);
    let mut collapsed = String::with_capacity(stripped.len());
    let mut in_run = false;
    for c in stripped.chars() {
        if c.is_whitespace() {
            if !in_run {
                collapsed.push(' ');
            }
            in_run = true;
        } else {
            collapsed.push(c);
            in_run = false;
        }
    }
    collapsed.trim_matches(is_python_space).to_string()
}

/// `str.isspace()` of Python, which `str.strip()` uses.
fn is_python_space(c: char) -> bool {
    c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c)
}

/// One prompt as the text encoder reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Encoded {
    /// `(L,)` token ids: the prompt, its special tokens (`</s>`), then the pad token.
    pub input_ids: Vec<u32>,
    /// `(L,)` 1 for the prompt and its special tokens, 0 for padding.
    pub attention_mask: Vec<u32>,
    /// Number of leading positions the mask keeps (`≤ L`).
    pub true_len: usize,
    /// Length the prompt would have had without truncation, special tokens included.
    pub full_len: usize,
}

impl Encoded {
    /// Whether the prompt lost tokens to fit `L` (callers should warn: the end is dropped).
    pub fn truncated(&self) -> bool {
        self.full_len > self.true_len
    }
}

/// The HF `tokenizers` tokenizer of a checkpoint, used the way transformers calls it with
/// `padding="max_length", truncation=True, add_special_tokens=True`.
#[derive(Clone)]
pub struct PromptTokenizer {
    tokenizer: Tokenizer,
    pad_id: u32,
    /// Special tokens the post-processor adds to a single sequence (1 for T5's `</s>`).
    num_special: usize,
}

impl std::fmt::Debug for PromptTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PromptTokenizer")
            .field("vocab_size", &self.vocab_size())
            .field("pad_id", &self.pad_id)
            .field("num_special", &self.num_special)
            .finish()
    }
}

impl PromptTokenizer {
    /// Loads a `tokenizer.json`. The pad token is `<pad>` (T5's), else the file's own padding
    /// settings; any truncation or padding the file asks for is replaced by `encode_padded`'s.
    pub fn from_file(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref();
        let folder = path.parent().unwrap_or(Path::new("."));
        if !path.exists() && folder.join("spiece.model").is_file() {
            // The published CogVideoX (and other T5) checkpoints ship only the SentencePiece
            // model; transformers converts it to tokenizer.json once.
            return Err(Error::NotAModel {
                path: path.to_path_buf(),
                reason: format!(
                    "vidgen reads tokenizer.json, and this folder has only spiece.model. Write \
                     one once with transformers (pip install transformers sentencepiece \
                     protobuf): python -c \"from transformers import AutoTokenizer; \
                     AutoTokenizer.from_pretrained('{0}').save_pretrained('{0}')\"",
                    folder.display()
                ),
            });
        }
        if !path.exists() {
            return Err(Error::NotAModel {
                path: path.to_path_buf(),
                reason: "the tokenizer is missing: a model folder needs tokenizer/tokenizer.json \
                         (or tokenizer/spiece.model, which transformers converts to it)"
                    .into(),
            });
        }
        let json = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let bad = |reason: String| Error::BadConfig {
            path: path.to_path_buf(),
            reason,
        };
        let mut tokenizer: Tokenizer = json
            .parse()
            .map_err(|e| bad(format!("not a tokenizers `tokenizer.json`: {e}")))?;
        let pad_id = tokenizer
            .token_to_id("<pad>")
            .or_else(|| tokenizer.get_padding().map(|p| p.pad_id))
            .ok_or_else(|| bad("no `<pad>` token and no padding settings".into()))?;
        tokenizer
            .with_truncation(None)
            .map_err(|e| bad(format!("cannot reset truncation: {e}")))?;
        tokenizer.with_padding(None);
        let num_special = tokenizer
            .get_post_processor()
            .map_or(0, |p| p.added_tokens(false));
        Ok(Self {
            tokenizer,
            pad_id,
            num_special,
        })
    }

    /// Number of ids, added tokens included.
    pub fn vocab_size(&self) -> usize {
        self.tokenizer.get_vocab_size(true)
    }

    /// Id of the pad token.
    pub fn pad_id(&self) -> u32 {
        self.pad_id
    }

    /// Id of `token`, if the vocabulary has it.
    pub fn token_to_id(&self, token: &str) -> Option<u32> {
        self.tokenizer.token_to_id(token)
    }

    /// The wrapped `tokenizers` tokenizer.
    pub fn inner(&self) -> &Tokenizer {
        &self.tokenizer
    }

    /// Tokenizes `prompt` (as given: see [`clean_prompt`]) into exactly `max_len` ids.
    ///
    /// As transformers does: the text is cut from the right so that it and its special
    /// tokens fit (a long prompt therefore still ends with `</s>`), then the pad token fills
    /// up to `max_len`. Text the vocabulary cannot spell becomes `<unk>`.
    pub fn encode_padded(&self, prompt: &str, max_len: usize) -> Result<Encoded> {
        if max_len < self.num_special.max(1) {
            return Err(Error::InvalidRequest(format!(
                "max sequence length {max_len} leaves no room for the prompt's {} special token(s)",
                self.num_special
            )));
        }
        let fail = |e: tokenizers::Error| {
            Error::InvalidRequest(format!("cannot tokenize prompt {prompt:?}: {e}"))
        };
        let mut encoding = self.tokenizer.encode(prompt, false).map_err(fail)?;
        let full_len = encoding.len() + self.num_special;
        let text_room = max_len - self.num_special;
        if encoding.len() > text_room {
            encoding.truncate(text_room, 0, TruncationDirection::Right);
        }
        let encoding = self
            .tokenizer
            .post_process(encoding, None, true)
            .map_err(fail)?;

        let mut input_ids = encoding.get_ids().to_vec();
        let mut attention_mask = encoding.get_attention_mask().to_vec();
        let true_len = input_ids.len();
        input_ids.resize(max_len, self.pad_id);
        attention_mask.resize(max_len, 0);
        Ok(Encoded {
            input_ids,
            attention_mask,
            true_len,
            full_len,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_sentencepiece_only_folder_says_how_to_make_tokenizer_json() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("spiece.model"), b"").unwrap();
        let err = PromptTokenizer::from_file(dir.path().join("tokenizer.json"))
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("has only spiece.model"), "{err}");
        assert!(err.contains("save_pretrained"), "{err}");
    }
    use crate::text::vocab::{default_vocab, write_tokenizer_json};

    // Expected strings were printed by diffusers' `prompt_clean` (ftfy not installed).
    #[test]
    fn clean_prompt_matches_wan() {
        assert_eq!(
            clean_prompt("  a   red\tball \n bounces  "),
            "a red ball bounces"
        );
        assert_eq!(clean_prompt("Tom &amp; Jerry"), "Tom & Jerry");
        // Decoded twice: `&amp;lt;` → `&lt;` → `<`; a third level stays.
        assert_eq!(clean_prompt("&amp;lt;b&amp;gt; &amp;amp;amp;"), "<b> &amp;");
        // `&nbsp;` decodes to U+00A0, which is whitespace and collapses.
        assert_eq!(clean_prompt("snow&nbsp;&nbsp; falls&#10;"), "snow falls");
        // U+001C is stripped at the ends but not collapsed inside; U+200B is no whitespace.
        assert_eq!(
            clean_prompt("a\u{1c}b\u{3000}c\u{200b}d"),
            "a\u{1c}b c\u{200b}d"
        );
        assert_eq!(clean_prompt(" \u{1c} a \u{1c} b \u{1f}"), "a \u{1c} b");
        assert_eq!(clean_prompt(" \t\n"), "");
    }

    fn tiny_tokenizer() -> (tempfile::TempDir, PromptTokenizer) {
        let dir = tempfile::tempdir().unwrap();
        write_tokenizer_json(dir.path(), &default_vocab()).unwrap();
        let tokenizer = PromptTokenizer::from_file(dir.path().join("tokenizer.json")).unwrap();
        (dir, tokenizer)
    }

    #[test]
    fn pads_with_pad_and_ends_with_eos() {
        let (_dir, tok) = tiny_tokenizer();
        let enc = tok.encode_padded("a red ball", 8).unwrap();
        let words: Vec<u32> = ["▁a", "▁red", "▁ball"]
            .iter()
            .map(|w| tok.token_to_id(w).unwrap())
            .collect();
        assert_eq!(enc.input_ids[..3], words[..]);
        assert_eq!(enc.input_ids[3..], [1, 0, 0, 0, 0]);
        assert_eq!(enc.attention_mask, [1, 1, 1, 1, 0, 0, 0, 0]);
        assert_eq!((enc.true_len, enc.full_len, enc.truncated()), (4, 4, false));

        let empty = tok.encode_padded("", 3).unwrap();
        assert_eq!((empty.input_ids, empty.true_len), (vec![1, 0, 0], 1));
    }

    #[test]
    fn truncation_keeps_eos() {
        let (_dir, tok) = tiny_tokenizer();
        let full = tok
            .encode_padded("a red ball bounces on the grass", 16)
            .unwrap();
        let cut = tok
            .encode_padded("a red ball bounces on the grass", 4)
            .unwrap();
        assert_eq!(cut.input_ids[..3], full.input_ids[..3]);
        assert_eq!(cut.input_ids[3], 1);
        assert_eq!(cut.attention_mask, [1, 1, 1, 1]);
        assert!(cut.truncated() && !full.truncated());
        assert_eq!(cut.full_len, full.true_len);
        assert_eq!(tok.encode_padded("a red ball", 1).unwrap().input_ids, [1]);
        assert!(matches!(
            tok.encode_padded("a", 0),
            Err(Error::InvalidRequest(_))
        ));
    }

    #[test]
    fn unknown_text_becomes_unk() {
        let (_dir, tok) = tiny_tokenizer();
        // Unigram fuses a run of unknown characters into one `<unk>` (id 2).
        let enc = tok.encode_padded("ball 日本語 ball", 8).unwrap();
        let ball = tok.token_to_id("▁ball").unwrap();
        let space = tok.token_to_id("▁").unwrap();
        assert_eq!(enc.input_ids[..5], [ball, space, 2, ball, 1]);
    }

    #[test]
    fn missing_or_corrupt_file_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("tokenizer.json");
        let err = PromptTokenizer::from_file(&missing).unwrap_err();
        assert!(matches!(err, Error::NotAModel { .. }), "{err}");
        assert!(err.to_string().contains("tokenizer is missing"), "{err}");
        std::fs::write(&missing, "{\"model\": 3}").unwrap();
        let err = PromptTokenizer::from_file(&missing).unwrap_err();
        assert!(matches!(err, Error::BadConfig { .. }), "{err}");
    }
}
