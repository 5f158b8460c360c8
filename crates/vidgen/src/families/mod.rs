//! Model families, one folder each.

pub mod cogvideox;
pub mod ltx;
pub mod wan;
