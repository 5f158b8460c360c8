//! Text side: tokenizer (HF `tokenizer.json`) and the UMT5 encoder.

pub mod tokenizer;
pub mod umt5;
