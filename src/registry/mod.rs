//! registry (being written)
