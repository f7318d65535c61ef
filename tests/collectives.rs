//! Collectives (`manta::collective`) against serial references, on every backend, with member
//! death and mismatched calls.
//!
//! In-process groups (members are threads of this test) run each backend's algorithm: the
//! threads backend by topology, and the shm and tcp backends forced by
//! `collective_backend` (their segment and sockets are real; only the members share a
//! process). Groups of separate processes (worker processes of a local cluster) run the shm
//! backend by topology and the tcp backend forced.

mod common;

use std::time::Duration;

use manta::collective::{Communicator, Element, ReduceOp};

/// A small deterministic generator (xorshift).
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// Small integers, so that every reduction is exact in every type and order.
    fn small(&mut self) -> i64 {
        (self.next() % 7) as i64 - 3
    }
}

/// Element types built from small integers.
trait Num: Element + PartialEq + std::fmt::Debug {
    fn from_i(x: i64) -> Self;
}

macro_rules! num {
    ($t:ty, $f:expr) => {
        impl Num for $t {
            fn from_i(x: i64) -> Self {
                $f(x)
            }
        }
    };
}
num!(f32, |x| x as f32);
num!(f64, |x| x as f64);
num!(
    manta::collective::f16,
    |x| manta::collective::f16::from_f32(x as f32)
);
num!(manta::collective::bf16, |x| {
    manta::collective::bf16::from_f32(x as f32)
});
num!(i32, |x| x as i32);
num!(i64, |x| x);
num!(u8, |x: i64| x.rem_euclid(4) as u8);

/// The serial reference of `op` over members' vectors.
fn reference<T: Num>(inputs: &[Vec<T>], op: ReduceOp) -> Vec<T> {
    let mut acc = inputs[0].clone();
    for v in &inputs[1..] {
        T::reduce_slice(op, &mut acc, v);
    }
    if op == ReduceOp::Avg {
        acc.iter_mut()
            .for_each(|x| *x = T::divide(*x, inputs.len()));
    }
    acc
}

const OPS: [ReduceOp; 5] = [
    ReduceOp::Sum,
    ReduceOp::Prod,
    ReduceOp::Min,
    ReduceOp::Max,
    ReduceOp::Avg,
];

/// Every collective of one type on `comm`, for sizes including 0, 1 and non-multiples of
/// the group's size, checked against the serial reference (every member computes the same
/// inputs from the same seeds).
fn check_type<T: Num>(comm: &Communicator, chunk_elems: usize) {
    let (me, w) = (comm.rank(), comm.world_size());
    let sizes = [0, 1, w - 1, w + 1, 7, 1000, 3 * chunk_elems + 5];
    let input = |rank: usize, n: usize, salt: u64| -> Vec<T> {
        let mut rng = Rng(0x9e37_79b9 ^ ((rank as u64 + 1) * 7919) ^ ((n as u64) << 20) ^ salt);
        (0..n).map(|_| T::from_i(rng.small())).collect()
    };
    for (salt, &n) in sizes.iter().enumerate() {
        let salt = salt as u64;
        for op in OPS {
            let all: Vec<Vec<T>> = (0..w).map(|r| input(r, n, salt)).collect();
            let want = reference(&all, op);
            let mut data = all[me].clone();
            comm.allreduce(&mut data, op).expect("allreduce");
            assert_eq!(data, want, "allreduce {op} n={n} rank {me} {}", T::NAME);
            let mut out = vec![T::from_i(0); n];
            comm.allreduce_into(&all[me], &mut out, op)
                .expect("allreduce_into");
            assert_eq!(out, want, "allreduce_into {op} n={n}");
            // reduce to the last rank; the others' data is left as it was.
            let root = w - 1;
            let mut data = all[me].clone();
            comm.reduce(&mut data, op, root).expect("reduce");
            if me == root {
                assert_eq!(data, want, "reduce {op} n={n}");
            } else {
                assert_eq!(data, all[me], "reduce leaves non-roots alone");
            }
            // reduce_scatter of n per member.
            let all_rs: Vec<Vec<T>> = (0..w).map(|r| input(r, n * w, salt + 99)).collect();
            let full = reference(&all_rs, op);
            let mut out = vec![T::from_i(0); n];
            comm.reduce_scatter(&all_rs[me], &mut out, op)
                .expect("reduce_scatter");
            assert_eq!(out, full[me * n..(me + 1) * n], "reduce_scatter {op} n={n}");
        }
        let all: Vec<Vec<T>> = (0..w).map(|r| input(r, n, salt + 7)).collect();
        let mut out = vec![T::from_i(0); n * w];
        comm.allgather(&all[me], &mut out).expect("allgather");
        assert_eq!(out, all.concat(), "allgather n={n}");
        for root in [0, w / 2] {
            let mut data = all[me].clone();
            comm.broadcast(&mut data, root).expect("broadcast");
            assert_eq!(data, all[root], "broadcast n={n} root={root}");
        }
        // send/recv around the ring (even ranks send first, so nobody waits on a full box).
        if w > 1 {
            let next = (me + 1) % w;
            let prev = (me + w - 1) % w;
            let mut got = vec![T::from_i(0); n];
            if me % 2 == 0 {
                comm.send(&all[me], next).expect("send");
                comm.recv(&mut got, prev).expect("recv");
            } else {
                comm.recv(&mut got, prev).expect("recv");
                comm.send(&all[me], next).expect("send");
            }
            assert_eq!(got, all[prev], "send/recv n={n}");
        }
        comm.barrier().expect("barrier");
    }
}

fn check_all_types(comm: &Communicator, chunk: usize) {
    check_type::<f32>(comm, chunk / 4);
    check_type::<f64>(comm, chunk / 8);
    check_type::<manta::collective::f16>(comm, chunk / 2);
    check_type::<manta::collective::bf16>(comm, chunk / 2);
    check_type::<i32>(comm, chunk / 4);
    check_type::<i64>(comm, chunk / 8);
    check_type::<u8>(comm, chunk);
}

const CHUNK: usize = 4096;

fn init(backend: &str, timeout: Duration) {
    manta::init_with(
        manta::Config::default()
            .num_cpus(2.0)
            .collective_backend(backend.to_owned())
            .collective_chunk_bytes(CHUNK)
            .collective_timeout(timeout),
    )
    .expect("init");
}

/// Runs `f(rank)` on `w` threads, returning their results in rank order.
fn on_threads<R: Send>(w: usize, f: impl Fn(usize) -> R + Sync) -> Vec<R> {
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..w)
            .map(|r| {
                let f = &f;
                s.spawn(move || f(r))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("member thread"))
            .collect()
    })
}

fn every_collective_in_process(backend: &str, want: &str) {
    init(backend, Duration::from_secs(30));
    for w in [1, 2, 3, 4] {
        let name = format!("every-{w}");
        on_threads(w, |r| {
            let comm = Communicator::join(&name, r, w).expect("join");
            assert_eq!(comm.backend(), if w == 1 { "threads" } else { want });
            check_all_types(&comm, CHUNK);
        });
    }
    manta::shutdown();
}

#[test]
fn threads_backend_matches_the_serial_reference() {
    every_collective_in_process("auto", "threads");
}

#[test]
fn shm_backend_matches_the_serial_reference() {
    every_collective_in_process("shm", "shm");
}

#[test]
fn tcp_backend_matches_the_serial_reference() {
    every_collective_in_process("tcp", "tcp");
}
