//! Manta macros (being written).
