//! sandbox (being written)
pub mod userns;
