//! archive (being written)
