//! Manta core (being written).
