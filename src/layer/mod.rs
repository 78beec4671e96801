//! layer (being written)
