//! Manta launcher (being written).
