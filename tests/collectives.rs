//! Collectives (`manta::collective`) against serial references, on every backend, with member
//! death and mismatched calls.
//!
//! In-process groups (members are threads of this test) run each backend's algorithm: the
//! threads backend by topology, and the shm and tcp backends forced by
//! `collective_backend` (their segment and sockets are real; only the members share a
//! process). Groups of separate processes (worker processes of a local cluster) run the shm
//! backend by topology and the tcp backend forced; members on two emulated hosts (network
//! namespaces) the hierarchical backend.

mod common;
mod netns;

use std::time::{Duration, Instant};

use common::Rng;
use manta::collective::{Communicator, Element, ReduceOp};

impl Rng {
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

/// Allreduce (in place and out of place), reduce-scatter and allgather of vectors large
/// enough for the hierarchical backend's split path (64 KiB and more), counts that are not
/// multiples of the members per node nor of the group's size, every op, against the serial
/// reference; `elems` scales the sizes to the type.
fn check_large<T: Num>(comm: &Communicator, elems: usize) {
    let (me, w) = (comm.rank(), comm.world_size());
    let input = |rank: usize, n: usize, salt: u64| -> Vec<T> {
        let mut rng = Rng(0x51ed_270b ^ ((rank as u64 + 1) * 104_729) ^ ((n as u64) << 24) ^ salt);
        (0..n).map(|_| T::from_i(rng.small())).collect()
    };
    for (salt, n) in [elems + 1, 3 * elems + w + 1].into_iter().enumerate() {
        let salt = salt as u64;
        for op in OPS {
            let all: Vec<Vec<T>> = (0..w).map(|r| input(r, n, salt)).collect();
            let want = reference(&all, op);
            let mut data = all[me].clone();
            comm.allreduce(&mut data, op).expect("allreduce");
            assert!(data == want, "allreduce {op} n={n} rank {me} {}", T::NAME);
            let mut out = vec![T::from_i(0); n];
            comm.allreduce_into(&all[me], &mut out, op)
                .expect("allreduce_into");
            assert!(out == want, "allreduce_into {op} n={n} {}", T::NAME);
            let per = n / w + 1;
            let all_rs: Vec<Vec<T>> = (0..w).map(|r| input(r, per * w, salt + 99)).collect();
            let full = reference(&all_rs, op);
            let mut out = vec![T::from_i(0); per];
            comm.reduce_scatter(&all_rs[me], &mut out, op)
                .expect("reduce_scatter");
            assert!(
                out == full[me * per..(me + 1) * per],
                "reduce_scatter {op} n={per} {}",
                T::NAME
            );
        }
        let per = n / w + 1;
        let all: Vec<Vec<T>> = (0..w).map(|r| input(r, per, salt + 7)).collect();
        let mut out = vec![T::from_i(0); per * w];
        comm.allgather(&all[me], &mut out).expect("allgather");
        assert!(out == all.concat(), "allgather n={per} {}", T::NAME);
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

/// The embedded runtime, its groups using `backend`; shut down when dropped.
fn init(backend: &str, timeout: Duration) -> common::Runtime {
    common::start(
        manta::Config::default()
            .num_cpus(2.0)
            .collective_backend(backend.to_owned())
            .collective_chunk_bytes(CHUNK)
            .collective_timeout(timeout),
    )
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
    let _rt = init(backend, Duration::from_secs(30));
    for w in [1, 2, 3, 4] {
        let name = format!("every-{w}");
        on_threads(w, |r| {
            let comm = Communicator::join(&name, r, w).expect("join");
            assert_eq!(comm.backend(), if w == 1 { "threads" } else { want });
            check_all_types(&comm, CHUNK);
        });
    }
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

/// A tcp transfer of 1 MiB or more sends from a thread of its own while the caller receives
/// and reduces (`THREADED` in `core/src/collective/tcp.rs`): large allreduces (in place and
/// out of place, where the input is reduced piece by piece into the output) and
/// reduce-scatters (ring segments of about 1.5 MiB) still match the serial reference, with
/// two members and with three (uneven segments).
#[test]
fn tcp_large_transfers_match_the_serial_reference() {
    let _rt = init("tcp", Duration::from_secs(60));
    let n = (3 << 20) / 8 + 3;
    let input = |rank: usize| -> Vec<f64> {
        (0..n)
            .map(|i| ((i * 7 + rank * 13) % 1000) as f64)
            .collect()
    };
    let (a, b, c) = (input(0), input(1), input(2));
    let sum: Vec<f64> = a.iter().zip(&b).map(|(x, y)| x + y).collect();
    let sum3: Vec<f64> = sum.iter().zip(&c).map(|(x, y)| x + y).collect();
    on_threads(3, |r| {
        let comm = Communicator::join("large3", r, 3).expect("join");
        let mut out = vec![-1.0f64; n];
        comm.allreduce_into(&input(r), &mut out, ReduceOp::Sum)
            .expect("allreduce_into");
        assert!(
            out == sum3,
            "allreduce_into of {n} f64 differs at rank {r} of 3"
        );
        let mut data = input(r);
        comm.allreduce(&mut data, ReduceOp::Max).expect("allreduce");
        let max: Vec<f64> = (0..n).map(|i| a[i].max(b[i]).max(c[i])).collect();
        assert!(
            data == max,
            "allreduce max of {n} f64 differs at rank {r} of 3"
        );
    });
    on_threads(2, |r| {
        let comm = Communicator::join("large", r, 2).expect("join");
        assert_eq!(comm.backend(), "tcp");
        let mut data = input(r);
        comm.allreduce(&mut data, ReduceOp::Sum).expect("allreduce");
        assert!(data == sum, "allreduce of {n} f64 differs at rank {r}");
        let mine = input(r);
        let mut out = vec![-1.0f64; n];
        comm.allreduce_into(&mine, &mut out, ReduceOp::Sum)
            .expect("allreduce_into");
        assert!(out == sum, "allreduce_into of {n} f64 differs at rank {r}");
        assert!(mine == input(r), "allreduce_into left its input alone");
        let both: Vec<f64> = (0..2 * n).map(|i| ((i * 3 + r) % 977) as f64).collect();
        let mut out = vec![0.0f64; n];
        comm.reduce_scatter(&both, &mut out, ReduceOp::Sum)
            .expect("reduce_scatter");
        let want: Vec<f64> = (r * n..(r + 1) * n)
            .map(|i| ((i * 3) % 977 + (i * 3 + 1) % 977) as f64)
            .collect();
        assert!(out == want, "reduce_scatter of {n} f64 differs at rank {r}");
    });
}

/// Runs `f` with a fresh embedded runtime whose groups use `backend`.
fn with_backend(backend: &str, timeout: Duration, f: impl FnOnce()) {
    let rt = init(backend, timeout);
    f();
    drop(rt);
}

fn is_invalid(e: &manta::Error) -> bool {
    matches!(e, manta::Error::InvalidArgument { .. })
}

/// A collective call made differently by different members.
type Case = fn(&Communicator) -> Result<(), manta::Error>;

#[test]
fn mismatched_calls_fail_with_invalid_argument_on_every_backend() {
    for backend in ["threads", "shm", "tcp"] {
        with_backend(backend, Duration::from_secs(20), || {
            // Lengths, types, ops and roots that differ between members.
            let cases: [(&str, Case); 5] = [
                ("length", |c| {
                    let mut v = vec![1f32; 10 + c.rank()];
                    c.allreduce(&mut v, ReduceOp::Sum)
                }),
                // 2 MiB: tcp's pipelined allreduce.
                ("large length", |c| {
                    let mut v = vec![1f32; (1 << 19) + c.rank()];
                    c.allreduce(&mut v, ReduceOp::Sum)
                }),
                ("type", |c| {
                    if c.rank() == 0 {
                        c.allreduce(&mut [1f32; 8], ReduceOp::Sum)
                    } else {
                        c.allreduce(&mut [1i32; 8], ReduceOp::Sum)
                    }
                }),
                ("op", |c| {
                    let op = if c.rank() == 0 {
                        ReduceOp::Sum
                    } else {
                        ReduceOp::Max
                    };
                    c.allreduce(&mut [1f64; 8], op)
                }),
                ("root", |c| c.broadcast(&mut [1u8; 8], c.rank())),
            ];
            for (what, case) in cases {
                let name = format!("mismatch-{backend}-{what}");
                let errors = on_threads(2, |r| {
                    let comm = Communicator::join(&name, r, 2).expect("join");
                    let e = case(&comm)
                        .expect_err(&format!("{backend} {what}: a mismatched call must fail"));
                    // The communicator is unusable afterwards, with a clear error.
                    let again = comm.barrier().expect_err("a failed communicator");
                    assert!(
                        matches!(again, manta::Error::Collective { .. }),
                        "{again:?}"
                    );
                    e
                });
                assert!(
                    errors.iter().any(is_invalid),
                    "{backend} {what}: no member reported InvalidArgument: {errors:?}"
                );
                if backend != "tcp" {
                    // Every member of a shared segment sees every header.
                    assert!(
                        errors.iter().all(is_invalid),
                        "{backend} {what}: {errors:?}"
                    );
                }
                let text = errors.iter().find(|e| is_invalid(e)).unwrap().to_string();
                assert!(text.contains("rank"), "{text}");
            }
        });
    }
}

#[test]
fn a_member_that_leaves_or_panics_fails_the_others_naming_it() {
    for backend in ["threads", "shm", "tcp"] {
        // A timeout far above the bound asserted: leaving is seen, not timed out.
        with_backend(backend, Duration::from_secs(120), || {
            for how in ["drop", "panic"] {
                let name = format!("leave-{backend}-{how}");
                let started = Instant::now();
                let results = on_threads(3, |r| {
                    let comm = Communicator::join(&name, r, 3).expect("join");
                    let mut v = vec![1f32; 300_000];
                    comm.allreduce(&mut v, ReduceOp::Sum)
                        .expect("first allreduce");
                    if r == 2 {
                        if how == "panic" {
                            let c = comm.clone();
                            let t = std::thread::spawn(move || {
                                let _held = c;
                                std::thread::sleep(Duration::from_millis(50));
                                panic!("member 2 fails mid-training");
                            });
                            drop(comm);
                            assert!(t.join().is_err());
                        } else {
                            std::thread::sleep(Duration::from_millis(50));
                            drop(comm);
                        }
                        return None;
                    }
                    let mut last = Ok(());
                    for _ in 0..1000 {
                        last = comm.allreduce(&mut v, ReduceOp::Sum);
                        if last.is_err() {
                            break;
                        }
                    }
                    Some(last.expect_err("the survivors' allreduce must fail"))
                });
                let elapsed = started.elapsed();
                for e in results.into_iter().flatten() {
                    match &e {
                        manta::Error::Collective { rank, .. } => {
                            assert_eq!(*rank, Some(2), "{backend} {how}: {e}")
                        }
                        other => panic!("{backend} {how}: {other:?}"),
                    }
                }
                assert!(
                    elapsed < Duration::from_secs(20),
                    "{backend} {how}: took {elapsed:?}"
                );
            }
        });
    }
}

#[test]
fn a_member_that_never_arrives_times_out_naming_it() {
    for backend in ["threads", "tcp"] {
        with_backend(backend, Duration::from_millis(500), || {
            let name = format!("late-{backend}");
            let results = on_threads(2, |r| {
                let comm = Communicator::join(&name, r, 2).expect("join");
                if r == 1 {
                    std::thread::sleep(Duration::from_secs(3));
                    return None;
                }
                let started = Instant::now();
                let e = comm
                    .allreduce(&mut [1i64; 4], ReduceOp::Sum)
                    .expect_err("nobody to reduce with");
                Some((e, started.elapsed()))
            });
            let (e, waited) = results.into_iter().flatten().next().unwrap();
            assert!(
                matches!(&e, manta::Error::Collective { rank: Some(1), .. }),
                "{backend}: {e:?}"
            );
            assert!(
                waited >= Duration::from_millis(450) && waited < Duration::from_secs(3),
                "{backend}: failed after {waited:?}"
            );
        });
    }
    // Joining a group whose other members never come is bounded too.
    with_backend("auto", Duration::from_millis(300), || {
        let e = Communicator::join("alone", 0, 2).expect_err("nobody else joins");
        assert!(
            matches!(&e, manta::Error::Collective { rank: Some(1), .. }),
            "{e:?}"
        );
    });
}

#[test]
fn bad_arguments_are_refused_before_anything_is_sent() {
    let _rt = init("auto", Duration::from_secs(10));
    assert!(is_invalid(&Communicator::join("g", 2, 2).unwrap_err()));
    assert!(is_invalid(&Communicator::join("", 0, 1).unwrap_err()));
    let c = Communicator::join("solo", 0, 1).expect("a group of one");
    let mut out = vec![0f32; 3];
    assert!(is_invalid(
        &c.allreduce_into(&[1.0; 2], &mut out, ReduceOp::Sum)
            .unwrap_err()
    ));
    assert!(is_invalid(
        &c.allgather(&[1.0f32; 2], &mut out).unwrap_err()
    ));
    assert!(is_invalid(&c.broadcast(&mut out, 1).unwrap_err()));
    assert!(is_invalid(&c.send(&out, 0).unwrap_err()));
    assert!(is_invalid(&c.split(&[0, 0]).unwrap_err()));
    // A group of one: everything is the identity.
    let mut v = vec![1.5f32, 2.5];
    c.allreduce(&mut v, ReduceOp::Avg).unwrap();
    assert_eq!(v, [1.5, 2.5]);
}

#[test]
fn split_async_and_stored_forms() {
    let _rt = init("auto", Duration::from_secs(20));
    on_threads(4, |r| {
        let comm = Communicator::join("parent", r, 4).expect("join");
        // Two sub-groups: even and odd ranks.
        let ranks: Vec<usize> = (0..4).filter(|x| x % 2 == r % 2).collect();
        let sub = comm.split(&ranks).expect("split");
        assert_eq!((sub.rank(), sub.world_size()), (r / 2, 2));
        let mut v = vec![r as i64; 5];
        sub.allreduce(&mut v, ReduceOp::Sum).unwrap();
        assert_eq!(v, vec![if r % 2 == 0 { 2 } else { 4 }; 5]);
        // Asynchronous forms resolve in submission order.
        let a = comm.allreduce_async(vec![1.0f32; 100], ReduceOp::Sum);
        let b = comm.allgather_async(vec![r as u8; 3]);
        assert_eq!(manta::block_on(a).unwrap(), vec![4.0; 100]);
        assert_eq!(
            manta::block_on(b).unwrap(),
            vec![0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3]
        );
        // Stored vectors: the result lives in the store, read in place.
        let input = manta::put(vec![r as f64 + 1.0; 200_000]).unwrap();
        let out = comm.allreduce_ref(&input, ReduceOp::Max).unwrap();
        let view = out.get_view().unwrap();
        assert!(view.is_stored());
        assert!(view.iter().all(|x| *x == 4.0));
    });
}

// ---- Members in separate processes: worker processes of a local cluster ----

use common::cluster::{LocalCluster, NodeSpec, serve_if_worker};

/// A member of a group, in whatever worker process the cluster placed it.
#[manta::actor]
struct Member {
    comm: Option<Communicator>,
}

#[manta::actor]
impl Member {
    fn new() -> Self {
        Member { comm: None }
    }

    /// Joins; returns the backend chosen (or the error).
    fn join(&mut self, name: String, rank: u64, world: u64) -> String {
        match Communicator::join(&name, rank as usize, world as usize) {
            Ok(c) => {
                let b = c.backend().to_owned();
                self.comm = Some(c);
                b
            }
            Err(e) => format!("error: {e}"),
        }
    }

    /// Every collective and type against the reference (panics, so the call fails, if not).
    fn check(&self) -> u32 {
        check_all_types(self.comm.as_ref().expect("joined"), CHUNK);
        std::process::id()
    }

    /// [`check_large`] in a few types (panics, so the call fails, if a result is wrong).
    fn check_large(&self) -> u32 {
        let comm = self.comm.as_ref().expect("joined");
        check_large::<f32>(comm, 1 << 16);
        check_large::<i64>(comm, 1 << 14);
        check_large::<manta::collective::bf16>(comm, 1 << 15);
        check_large::<u8>(comm, 1 << 16);
        // Shares of 1 MiB and more cross the network in the TCP backend's pipeline.
        let (me, w) = (comm.rank(), comm.world_size());
        let n = (1 << 20) + 3;
        let mut data: Vec<f32> = (0..n).map(|i| ((i + me) % 5) as f32).collect();
        let want: Vec<f32> = (0..n)
            .map(|i| (0..w).map(|r| ((i + r) % 5) as f32).sum())
            .collect();
        comm.allreduce(&mut data, ReduceOp::Sum).expect("allreduce");
        assert!(data == want, "allreduce of {n} float");
        std::process::id()
    }

    /// Allreduces a large vector until a call fails; returns the error's rank and text and
    /// the milliseconds the failing call took.
    fn allreduce_until_failure(&self, n: u64) -> (Option<u64>, String, u64) {
        let comm = self.comm.as_ref().expect("joined");
        let mut v = vec![1f32; n as usize];
        for _ in 0..10_000 {
            let t = Instant::now();
            if let Err(e) = comm.allreduce(&mut v, ReduceOp::Sum) {
                let rank = match &e {
                    manta::Error::Collective { rank, .. } => rank.map(|r| r as u64),
                    _ => None,
                };
                return (rank, e.to_string(), t.elapsed().as_millis() as u64);
            }
        }
        (None, "no failure".into(), 0)
    }

    /// Allreduces a large vector, ending this process abruptly after `after_ms`.
    fn allreduce_then_die(&self, n: u64, after_ms: u64) -> bool {
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(after_ms));
            std::process::exit(9);
        });
        let comm = self.comm.as_ref().expect("joined");
        let mut v = vec![1f32; n as usize];
        loop {
            if comm.allreduce(&mut v, ReduceOp::Sum).is_err() {
                return false;
            }
        }
    }
}

/// A head and three more nodes on this host, each with one member's resource; the members'
/// processes are distinct, on one host (one boot and network namespace).
fn member_cluster(
    env: &[(&str, &str)],
) -> (
    LocalCluster,
    common::Runtime,
    Vec<manta::ActorHandle<Member>>,
) {
    let spec = |i: usize| NodeSpec {
        num_cpus: 1.0,
        resources: format!("member{i}=1"),
        env: env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .chain([("MANTA_COLLECTIVE_CHUNK_BYTES".to_owned(), CHUNK.to_string())])
            .collect(),
        ..NodeSpec::default()
    };
    let cluster = LocalCluster::start(spec(0), &[spec(1), spec(2), spec(3)]);
    let rt = common::start(cluster.config());
    let members = (0..4)
        .map(|i| {
            Member::options()
                .num_cpus(0.0)
                .resource(&format!("member{i}"), 1.0)
                .remote()
        })
        .collect();
    (cluster, rt, members)
}

const LONG: Duration = Duration::from_secs(120);

fn join_all(members: &[manta::ActorHandle<Member>], name: &str) -> Vec<String> {
    let refs: Vec<_> = members
        .iter()
        .enumerate()
        .map(|(r, m)| m.join(name.to_owned(), r as u64, members.len() as u64))
        .collect();
    refs.iter()
        .map(|r| r.get_timeout(LONG).expect("join call"))
        .collect()
}

fn processes_run_every_collective(backend: &str) {
    serve_if_worker();
    let (_cluster, _rt, members) = member_cluster(&[("MANTA_COLLECTIVE_BACKEND", backend)]);
    let want = if backend == "auto" { "shm" } else { backend };
    assert_eq!(join_all(&members, "procs"), vec![want; 4]);
    let refs: Vec<_> = members.iter().map(|m| m.check()).collect();
    let pids: std::collections::BTreeSet<u32> = refs
        .iter()
        .map(|r| {
            r.get_timeout(LONG)
                .expect("every collective matches the reference")
        })
        .collect();
    assert_eq!(pids.len(), 4, "members in four processes: {pids:?}");
}

#[test]
fn processes_of_one_node_use_shm_and_match_the_reference() {
    processes_run_every_collective("auto");
}

#[test]
fn processes_over_tcp_match_the_reference() {
    processes_run_every_collective("tcp");
}

fn process_death_fails_the_survivors(backend: &str) {
    serve_if_worker();
    let (_cluster, _rt, members) = member_cluster(&[("MANTA_COLLECTIVE_BACKEND", backend)]);
    join_all(&members, "mortal");
    // Large enough that the death lands mid-allreduce (many chunks per call).
    let n = 4 << 20;
    let survivors: Vec<_> = members[..3]
        .iter()
        .map(|m| m.allreduce_until_failure(n))
        .collect();
    let _victim = members[3].allreduce_then_die(n, 300);
    for s in survivors {
        let (rank, text, ms) = s.get_timeout(LONG).expect("the survivor returns");
        eprintln!("{backend} survivor: rank {rank:?} in {ms} ms: {text}");
        assert_eq!(rank, Some(3), "{backend}: {text}");
        // The timeout is 120 s: the death was seen, not waited out.
        assert!(
            ms < 10_000,
            "{backend}: the failing call took {ms} ms: {text}"
        );
    }
    // Nothing of the group is left in the key-value store (entries are blanked once joined).
    let keys = (0..4).map(|r| format!("manta.collective/mortal/4/{r}"));
    for key in keys.chain(["manta.collective/mortal/4/shm".to_owned()]) {
        let v = manta::cluster::kv_get(&key).expect("kv");
        assert!(v.is_none_or(|v| v.is_empty()), "{key} left behind");
    }
}

#[test]
fn a_dead_process_fails_every_survivor_over_shm() {
    process_death_fails_the_survivors("auto");
}

#[test]
fn a_dead_process_fails_every_survivor_over_tcp() {
    process_death_fails_the_survivors("tcp");
}

/// Two emulated hosts with two members each, as a local cluster of two nodes.
fn two_host_members(
    hosts: &netns::Hosts,
) -> (
    LocalCluster,
    common::Runtime,
    Vec<manta::ActorHandle<Member>>,
) {
    host_members(hosts, &[2, 2])
}

/// Two emulated hosts with `per_host[i]` members on host `i` (ranks in host order), as a
/// local cluster of two nodes.
fn host_members(
    hosts: &netns::Hosts,
    per_host: &[usize; 2],
) -> (
    LocalCluster,
    common::Runtime,
    Vec<manta::ActorHandle<Member>>,
) {
    let spec = |i: usize| NodeSpec {
        num_cpus: 2.0,
        resources: format!("host{i}={}", per_host[i]),
        wrapper: vec![
            "ip".into(),
            "netns".into(),
            "exec".into(),
            hosts.host(i).netns().into(),
        ],
        ip: Some(hosts.host(i).ip().to_string()),
        env: vec![("MANTA_COLLECTIVE_CHUNK_BYTES".into(), CHUNK.to_string())],
        ..NodeSpec::default()
    };
    let cluster = LocalCluster::start(spec(0), &[spec(1)]);
    let rt = common::start(cluster.config());
    let members: Vec<_> = (0..2)
        .flat_map(|i| (0..per_host[i]).map(move |_| i))
        .map(|i| {
            Member::options()
                .num_cpus(0.0)
                .resource(&format!("host{i}"), 1.0)
                .remote()
        })
        .collect();
    (cluster, rt, members)
}

/// Runs `check` on every member; the members' worker processes.
fn check_every_member(
    members: &[manta::ActorHandle<Member>],
    check: impl Fn(&manta::ActorHandle<Member>) -> manta::ObjectRef<u32>,
) -> std::collections::BTreeSet<u32> {
    let refs: Vec<_> = members.iter().map(check).collect();
    refs.iter()
        .map(|r| {
            r.get_timeout(LONG)
                .expect("every collective matches the reference")
        })
        .collect()
}

/// The death of a host's worker process (ranks 2 and 3) mid-allreduce fails the members on
/// the other host, naming one of the dead, through the leaders and the segment.
#[test]
fn a_dead_host_process_fails_the_other_hosts_members() {
    serve_if_worker();
    let hosts = match netns::Hosts::create(2) {
        Ok(h) => h,
        Err(e) => {
            eprintln!("skipped: {e}");
            return;
        }
    };
    let (cluster, rt, members) = two_host_members(&hosts);
    assert_eq!(join_all(&members, "mortal-hosts"), vec!["hierarchical"; 4]);
    let n = 1 << 20;
    let survivors: Vec<_> = members[..2]
        .iter()
        .map(|m| m.allreduce_until_failure(n))
        .collect();
    let _partner = members[2].allreduce_until_failure(n);
    let _victim = members[3].allreduce_then_die(n, 300);
    for s in survivors {
        let (rank, text, ms) = s.get_timeout(LONG).expect("the survivor returns");
        eprintln!("survivor: rank {rank:?} in {ms} ms: {text}");
        assert!(matches!(rank, Some(2 | 3)), "{text}");
        assert!(ms < 10_000, "the failing call took {ms} ms: {text}");
    }
    drop(members);
    drop(rt);
    drop(cluster);
}

/// Two emulated hosts (network namespaces on a bridge), two members on each (sharing a worker
/// process): the group spans nodes with several members each, so it is hierarchical (every
/// collective within each host, then between the hosts' leaders over TCP; send/recv over
/// TCP between all).
#[test]
fn members_on_two_hosts_run_every_collective_hierarchically() {
    serve_if_worker();
    let hosts = match netns::Hosts::create(2) {
        Ok(h) => h,
        Err(e) => {
            eprintln!("skipped: {e}");
            return;
        }
    };
    let (cluster, _rt, members) = two_host_members(&hosts);
    assert_eq!(join_all(&members, "hosts"), vec!["hierarchical"; 4]);
    let pids = check_every_member(&members, |m| m.check());
    assert_eq!(
        pids.len(),
        2,
        "two worker processes, one per host: {pids:?}"
    );
    // Even nodes: large vectors take the split path (each member on a ring of its own).
    check_every_member(&members, |m| m.check_large());
    drop(members);
    drop(cluster);
}

/// Two members on one host and one on the other: uneven nodes, so every operation goes
/// through the leaders, at every size.
#[test]
fn uneven_hosts_run_every_collective_through_the_leaders() {
    serve_if_worker();
    let hosts = match netns::Hosts::create(2) {
        Ok(h) => h,
        Err(e) => {
            eprintln!("skipped: {e}");
            return;
        }
    };
    let (cluster, _rt, members) = host_members(&hosts, &[2, 1]);
    assert_eq!(join_all(&members, "uneven"), vec!["hierarchical"; 3]);
    check_every_member(&members, |m| m.check());
    check_every_member(&members, |m| m.check_large());
    drop(members);
    drop(cluster);
}
