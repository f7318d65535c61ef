//! Manta (being written).
