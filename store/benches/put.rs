//! Put/get benchmarks (written in a later commit).
fn main() {}
