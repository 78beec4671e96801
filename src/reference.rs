//! Image references (being written)
