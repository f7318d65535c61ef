//! Objects across processes: a worker's large result read by a task on its own node, and task
//! specs whose inline arguments add up to more than one message may carry.
//!
//! Spilling of results a worker holds for a remote owner needs a node with a small object
//! store, which the matrix's shared nodes (default stores) do not have: that case lives in
//! `tests/cluster_semantics_store.rs`, with a cluster of its own.

use std::time::Duration;

use crate::harness::{Case, Ctx};

pub(crate) const CASES: &[Case] = &[
    Case::new(
        "cluster_objects::large_result_read_on_its_own_node",
        large_result_on_its_node,
    ),
    Case::new(
        "cluster_objects::many_inline_arguments",
        many_inline_arguments,
    ),
];

const LONG: Duration = Duration::from_secs(30);

#[manta::remote]
fn make_big(n: usize) -> Vec<f64> {
    vec![1.5; n]
}

#[manta::remote]
fn total(v: Vec<f64>) -> f64 {
    v.iter().sum()
}

#[manta::remote]
fn consume_nested(n: usize) -> f64 {
    // Produced and consumed inside one worker, never read by the driver.
    let big = make_big::remote(n);
    let a = total::remote(&big).get().expect("first consumer");
    let b = total::remote(&big).get().expect("second consumer");
    a + b
}

/// Ray: a result above the inline limit is read by any task wherever it runs, the producer's
/// own node included, before or after anyone else read it.
fn large_result_on_its_node(_: &Ctx) {
    let n = 1 << 20; // 8 MiB: held in the producing worker's store
    let want = 1.5 * n as f64;
    let big = make_big::remote(n);
    // The consumers prefer the holder's node: there, the owner (the driver) redirects the
    // pull to the very worker that runs the consumer.
    assert_eq!(total::remote(&big).get_timeout(LONG).unwrap(), want);
    assert_eq!(total::remote(&big).get_timeout(LONG).unwrap(), want);
    assert_eq!(big.get_timeout(LONG).unwrap().len(), n);
    assert_eq!(
        consume_nested::remote(n).get_timeout(LONG).unwrap(),
        2.0 * want
    );
}

macro_rules! wide_task {
    ($($a:ident),*) => {
        #[manta::remote]
        #[allow(clippy::too_many_arguments)] // the point of the case
        fn wide($($a: Vec<u8>),*) -> (u64, u64) {
            let mut n = 0u64;
            let mut sum = 0u64;
            $(
                n += $a.len() as u64;
                sum += $a.iter().map(|&b| u64::from(b)).sum::<u64>();
            )*
            (n, sum)
        }

        fn call_wide(arg: &[u8]) -> manta::ObjectRef<(u64, u64)> {
            wide::remote($({ let $a = arg.to_vec(); $a }),*)
        }

        const WIDE_ARGS: u64 = [$(stringify!($a)),*].len() as u64;
    };
}

wide_task!(
    a0, a1, a2, a3, a4, a5, a6, a7, a8, a9, b0, b1, b2, b3, b4, b5, b6, b7, b8, b9, c0, c1, c2, c3,
    c4, c5, c6, c7, c8, c9, d0, d1, d2, d3, d4, d5, d6, d7, d8, d9, e0, e1, e2, e3, e4, e5, e6, e7,
    e8, e9, f0, f1, f2, f3, f4, f5, f6, f7, f8, f9, g0, g1, g2, g3, g4, g5, g6, g7, g8, g9, h0, h1,
    h2, h3, h4, h5, h6, h7, h8, h9
);

/// Ray inlines small arguments in the task spec up to a total, then passes the rest through
/// the object store: 80 arguments of 90 KB each (each under the inline limit, 7.2 MB in all)
/// run as they do embedded.
fn many_inline_arguments(_: &Ctx) {
    let arg = vec![3u8; 90_000];
    let r = call_wide(&arg);
    assert_eq!(
        r.get_timeout(LONG).unwrap(),
        (WIDE_ARGS * 90_000, WIDE_ARGS * 90_000 * 3)
    );
    // Twice, so a connection the first spec broke shows too.
    let r = call_wide(&arg);
    assert_eq!(r.get_timeout(LONG).unwrap().0, WIDE_ARGS * 90_000);
}
