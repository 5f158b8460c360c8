//! Noise schedulers, one algorithm per file.

pub mod flow_match_euler;
pub mod unipc;
