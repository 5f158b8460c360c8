//! Model families, one folder each.

pub mod cogvideox;
pub mod wan;
