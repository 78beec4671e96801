//! dockerfile (being written)
