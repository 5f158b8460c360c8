//! Model families, one folder each.

pub mod ltx;
pub mod wan;
