//! build (being written)
