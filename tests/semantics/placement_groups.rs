//! Ray's placement groups and actor groups: every strategy, `ready()`, bundle accounting (a
//! bundle's reservation is carved out of the node; work in it takes from the bundle, more than
//! the bundle holds is refused), removal (its actors die, its queued tasks fail, its resources
//! come back), bad input, named groups, pending groups placed when resources free up; actor
//! groups: rank order, slicing, per-member order, a member killed mid-call, a group handed to
//! a task, members reducing through their group's communicator.
//!
//! In a cluster the GCS places groups over the nodes and the owner installs the bundles in
//! its job's workers (ARCHITECTURE.md); a task for a group not yet created waits for it in
//! every mode, an actor is refused in a cluster until then (docs/API.md).

use std::time::{Duration, Instant};

use manta::{ActorGroup, Bundle, Error, PlacementGroup, PlacementStrategy as S};

use crate::harness::{Case, Ctx, Mode};

const SRUN_SIZE: &[(Mode, &str)] = &[(
    Mode::Srun,
    "sizes its groups by whole nodes; an srun rank's node is shared by three ranks",
)];

pub(crate) const CASES: &[Case] = &[
    Case::new("placement_groups::every_strategy_becomes_ready", strategies),
    Case::new(
        "placement_groups::bundle_is_carved_out_of_the_node",
        accounting,
    ),
    Case::new(
        "placement_groups::more_than_the_bundle_is_refused",
        over_bundle,
    ),
    Case::new(
        "placement_groups::removal_kills_actors_and_fails_tasks",
        removal,
    ),
    Case::new("placement_groups::bad_input_is_refused", bad_input),
    Case::new("placement_groups::named_groups", named),
    Case::new(
        "placement_groups::pending_group_placed_when_resources_free",
        pending_then_placed,
    )
    .skip(SRUN_SIZE),
    Case::new("placement_groups::any_bundle", any_bundle),
    Case::new("placement_groups::handle_passes_to_a_task", handle_passes),
    Case::new(
        "placement_groups::bundles_pinned_to_disjoint_cpus",
        pinned_cpus,
    ),
    Case::new(
        "placement_groups::a_kept_handle_follows_removal",
        kept_handle,
    ),
    Case::new("actor_groups::ranks_and_rank_order", rank_order),
    Case::new("actor_groups::slice_and_per_member_order", slicing),
    Case::new("actor_groups::member_killed_mid_call", member_killed),
    Case::new("actor_groups::handle_passes_to_a_task", passes_to_task),
    Case::new(
        "actor_groups::spawn_without_member_is_refused",
        spawn_checks,
    ),
    Case::new(
        "actor_groups::members_allreduce_through_their_group_communicator",
        group_allreduce,
    ),
];

const LONG: Duration = Duration::from_secs(30);
const SHORT: Duration = Duration::from_millis(300);

/// How many nodes of the mode have CPUs.
fn cpu_nodes(ctx: &Ctx) -> usize {
    match ctx.mode {
        Mode::ThreeNodes => 2,
        _ => 1,
    }
}

fn cpus(n: usize, each: f64) -> Vec<Bundle> {
    (0..n).map(|_| Bundle::cpus(each)).collect()
}

#[track_caller]
fn ready(pg: &PlacementGroup) {
    pg.ready()
        .get_timeout(LONG)
        .unwrap_or_else(|e| panic!("group {} not ready: {e}", pg.id()));
    assert_eq!(pg.state(), manta::PlacementGroupState::Created);
}

#[track_caller]
fn still_pending(pg: &PlacementGroup) {
    match pg.ready().get_timeout(SHORT) {
        Err(Error::Timeout { .. }) => {}
        other => panic!(
            "group {} should be pending, ready() gave {other:?}",
            pg.id()
        ),
    }
    assert_eq!(pg.state(), manta::PlacementGroupState::Pending);
}

#[manta::remote]
fn where_am_i(x: i64) -> i64 {
    x
}

#[manta::remote]
fn nap(ms: u64) -> u64 {
    std::thread::sleep(Duration::from_millis(ms));
    ms
}

/// Sleeps `ms` and returns when it started and ended, in ms since the UNIX epoch.
#[manta::remote]
fn timed_nap(ms: u64) -> (u64, u64) {
    let now = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64
    };
    let start = now();
    std::thread::sleep(Duration::from_millis(ms));
    (start, now())
}

fn strategies(ctx: &Ctx) {
    for s in [S::Pack, S::Spread, S::StrictPack] {
        let pg = manta::placement_group(cpus(2, 0.5), s).unwrap();
        ready(&pg);
        let r = where_am_i::options()
            .num_cpus(0.5)
            .placement_group(&pg, Some(1))
            .remote(7);
        assert_eq!(r.get_timeout(LONG).unwrap(), 7, "{s}");
        manta::remove_placement_group(&pg).unwrap();
    }
    // One bundle per node: as many bundles as nodes fit, one more waits (Ray's rule).
    let n = cpu_nodes(ctx);
    let fit = manta::placement_group(cpus(n, 0.5), S::StrictSpread).unwrap();
    ready(&fit);
    if ctx.is_cluster() {
        let mut nodes = fit.bundle_nodes();
        nodes.dedup();
        assert_eq!(
            nodes.len(),
            n,
            "a node per bundle: {:?}",
            fit.bundle_nodes()
        );
    }
    manta::remove_placement_group(&fit).unwrap();
    let two = manta::placement_group(cpus(n + 1, 0.5), S::StrictSpread).unwrap();
    still_pending(&two);
    manta::remove_placement_group(&two).unwrap();
    match two.ready().get_timeout(SHORT) {
        Err(Error::PlacementGroupRemoved { .. }) => {}
        other => panic!("ready() of a removed pending group: {other:?}"),
    }
}

fn accounting(ctx: &Ctx) {
    let all = ctx.cpus;
    // The group takes every CPU of a node: a plain task waits (where that node is the only
    // one with CPUs), one in the bundle runs.
    let pg = manta::placement_group(vec![Bundle::cpus(all)], S::Pack).unwrap();
    ready(&pg);
    if ctx.mode == Mode::Embedded {
        let status = manta::status().unwrap();
        let cpu = status.resources.iter().find(|r| r.0 == "CPU").unwrap();
        assert_eq!(
            cpu.1, 0.0,
            "the bundle's CPUs left the node's pool: {cpu:?}"
        );
        let reserved = status
            .reserved
            .iter()
            .find(|r| r.0 == format!("CPU_group_0_{}", pg.id()))
            .unwrap_or_else(|| panic!("status lists the bundle: {:?}", status.reserved));
        assert_eq!((reserved.1, reserved.2), (all, all));
    }
    let plain = where_am_i::remote(1);
    if matches!(ctx.mode, Mode::Embedded | Mode::OneNode) {
        match plain.get_timeout(SHORT) {
            Err(Error::Timeout { .. }) => {}
            other => panic!("a plain task ran on reserved CPUs: {other:?}"),
        }
    }
    let inside = where_am_i::options()
        .placement_group(&pg, Some(0))
        .remote(2);
    assert_eq!(inside.get_timeout(LONG).unwrap(), 2);
    manta::remove_placement_group(&pg).unwrap();
    assert_eq!(plain.get_timeout(LONG).unwrap(), 1, "the CPUs came back");
    // Two 1-CPU naps in a 1-CPU bundle take turns.
    let one = manta::placement_group(vec![Bundle::cpus(1.0)], S::Pack).unwrap();
    ready(&one);
    let naps: Vec<_> = (0..2)
        .map(|_| {
            timed_nap::options()
                .placement_group(&one, Some(0))
                .remote(150)
        })
        .collect();
    let (a, b) = (
        naps[0].get_timeout(LONG).unwrap(),
        naps[1].get_timeout(LONG).unwrap(),
    );
    assert!(
        a.1 <= b.0 || b.1 <= a.0,
        "two 1-CPU tasks overlapped in a 1-CPU bundle: {a:?} {b:?}"
    );
    manta::remove_placement_group(&one).unwrap();
    if ctx.mode == Mode::Embedded {
        let after = manta::status().unwrap();
        let cpu = after.resources.iter().find(|r| r.0 == "CPU").unwrap();
        assert_eq!(cpu.1, cpu.2, "every CPU is back: {cpu:?}");
    }
}

fn over_bundle(_: &Ctx) {
    let pg = manta::placement_group(vec![Bundle::cpus(1.0), Bundle::cpus(0.5)], S::Pack).unwrap();
    ready(&pg);
    let r = where_am_i::options()
        .num_cpus(1.0)
        .placement_group(&pg, Some(1))
        .remote(1);
    match r.get_timeout(SHORT) {
        Err(Error::Infeasible { what, .. }) => assert!(what.contains("bundle 1"), "{what}"),
        other => panic!("a task over its bundle: {other:?}"),
    }
    let gpu = where_am_i::options()
        .num_gpus(1.0)
        .placement_group(&pg, None)
        .remote(1);
    assert!(
        matches!(gpu.get_timeout(SHORT), Err(Error::Infeasible { .. })),
        "a GPU task in a CPU-only group"
    );
    let a = Holder::options()
        .num_cpus(2.0)
        .placement_group(&pg, Some(0))
        .remote();
    assert!(matches!(
        a.ready().get_timeout(SHORT),
        Err(Error::Infeasible { .. })
    ));
    manta::remove_placement_group(&pg).unwrap();
}

#[manta::actor]
pub(crate) struct Holder {
    calls: u64,
}

#[manta::actor]
impl Holder {
    pub(crate) fn new() -> Self {
        Holder { calls: 0 }
    }
    pub(crate) fn poke(&mut self) -> u64 {
        self.calls += 1;
        self.calls
    }
}

fn removal(ctx: &Ctx) {
    let pg = manta::placement_group(vec![Bundle::cpus(1.0)], S::StrictPack).unwrap();
    ready(&pg);
    let actor = Holder::options()
        .num_cpus(1.0)
        .placement_group(&pg, Some(0))
        .remote();
    assert_eq!(actor.poke().get_timeout(LONG).unwrap(), 1);
    // The actor holds the bundle's CPU: this task waits in the queue.
    let queued = where_am_i::options()
        .placement_group(&pg, Some(0))
        .remote(3);
    match queued.get_timeout(SHORT) {
        Err(Error::Timeout { .. }) => {}
        other => panic!("the bundle's CPU is held by the actor: {other:?}"),
    }
    let cpu_now = || {
        let status = manta::status().unwrap();
        status.resources.iter().find(|r| r.0 == "CPU").unwrap().1
    };
    let cpu_before = cpu_now();
    manta::remove_placement_group(&pg).unwrap();
    match actor.poke().get_timeout(LONG) {
        Err(Error::ActorDied { .. }) => {}
        other => panic!("an actor of a removed group: {other:?}"),
    }
    match queued.get_timeout(LONG) {
        Err(Error::PlacementGroupRemoved { .. }) => {}
        other => panic!("a queued task of a removed group: {other:?}"),
    }
    if ctx.mode == Mode::Embedded {
        assert_eq!(cpu_now(), cpu_before + 1.0, "the bundle's CPU came back");
        let after = manta::status().unwrap();
        assert!(
            !after
                .reserved
                .iter()
                .any(|r| r.0.ends_with(&pg.id().to_string())),
            "no resource of the group is left: {:?}",
            after.reserved
        );
    }
    // Used again.
    let again = where_am_i::options()
        .placement_group(&pg, Some(0))
        .remote(4);
    assert!(matches!(
        again.get_timeout(SHORT),
        Err(Error::PlacementGroupRemoved { .. })
    ));
    assert!(matches!(
        manta::remove_placement_group(&pg),
        Err(Error::PlacementGroupRemoved { .. })
    ));
    let late = Holder::options().placement_group(&pg, None).remote();
    assert!(matches!(
        late.ready().get_timeout(SHORT),
        Err(Error::PlacementGroupRemoved { .. })
    ));
}

fn bad_input(_: &Ctx) {
    let invalid = |bundles: Vec<Bundle>, what: &str| match manta::placement_group(bundles, S::Pack)
    {
        Err(Error::InvalidArgument { .. }) => {}
        other => panic!("{what}: {other:?}"),
    };
    invalid(vec![], "an empty bundle list");
    invalid(vec![Bundle::new()], "an empty bundle");
    invalid(vec![Bundle::cpus(0.0)], "a zero amount");
    invalid(vec![Bundle::cpus(-1.0)], "a negative amount");
    invalid(vec![Bundle::cpus(f64::NAN)], "a NaN amount");
    invalid(vec![Bundle::cpus(f64::INFINITY)], "an infinite amount");
    invalid(
        vec![Bundle::cpus(1.0), Bundle::new().resource("custom", 0.0)],
        "a zero custom amount",
    );
    invalid(vec![Bundle::cpus(1.5)], "a fractional amount over 1");
    // A bundle no node can hold fails at once (Ray's infeasible group).
    match manta::placement_group(vec![Bundle::cpus(1024.0)], S::Pack) {
        Err(Error::Infeasible { .. }) => {}
        other => panic!("a bundle larger than any node: {other:?}"),
    }
    let pg = manta::placement_group(cpus(2, 0.5), S::Pack).unwrap();
    ready(&pg);
    let r = where_am_i::options()
        .placement_group(&pg, Some(2))
        .remote(1);
    match r.get_timeout(SHORT) {
        Err(Error::InvalidArgument { what, .. }) => assert!(what.contains("bundle"), "{what}"),
        other => panic!("a bundle index out of range: {other:?}"),
    }
    let a = Holder::options().placement_group(&pg, Some(5)).remote();
    assert!(matches!(
        a.ready().get_timeout(SHORT),
        Err(Error::InvalidArgument { .. })
    ));
    manta::remove_placement_group(&pg).unwrap();
}

fn named(_: &Ctx) {
    let pg = manta::placement_group_builder(cpus(1, 0.5), S::Pack)
        .name("pg-semantics-named")
        .create()
        .unwrap();
    let found = manta::get_placement_group("pg-semantics-named").unwrap();
    assert_eq!(found.id(), pg.id());
    assert_eq!(found.name(), Some("pg-semantics-named"));
    ready(&found);
    match manta::placement_group_builder(cpus(1, 0.5), S::Pack)
        .name("pg-semantics-named")
        .create()
    {
        Err(Error::InvalidArgument { .. }) => {}
        other => panic!("a taken name: {other:?}"),
    }
    assert!(
        manta::list_placement_groups()
            .unwrap()
            .iter()
            .any(|g| g.id == pg.id() && g.state == manta::PlacementGroupState::Created)
    );
    manta::remove_placement_group(&found).unwrap();
    assert!(matches!(
        manta::get_placement_group("pg-semantics-named"),
        Err(Error::InvalidArgument { .. })
    ));
    assert_eq!(pg.state(), manta::PlacementGroupState::Removed);
}

fn pending_then_placed(ctx: &Ctx) {
    // Every CPU of every node reserved.
    let n = cpu_nodes(ctx);
    let strategy = if n > 1 { S::StrictSpread } else { S::Pack };
    let big = manta::placement_group(cpus(n, ctx.cpus), strategy).unwrap();
    ready(&big);
    let small = manta::placement_group(cpus(2, 0.5), S::Pack).unwrap();
    still_pending(&small);
    // Work for the pending group waits for it.
    let early = where_am_i::options()
        .num_cpus(0.5)
        .placement_group(&small, Some(0))
        .remote(5);
    match early.get_timeout(SHORT) {
        Err(Error::Timeout { .. }) => {}
        other => panic!("a task of a pending group: {other:?}"),
    }
    // An actor for it waits for it too (Ray's), and so do the calls made to it meanwhile.
    let early_actor = Holder::options().placement_group(&small, Some(1)).remote();
    let early_calls = [early_actor.poke(), early_actor.poke()];
    for (what, r) in [
        ("ready", early_actor.ready().get_timeout(SHORT).map(drop)),
        ("call", early_calls[0].get_timeout(SHORT).map(drop)),
    ] {
        match r {
            Err(Error::Timeout { .. }) => {}
            other => panic!("{what} of an actor of a pending group: {other:?}"),
        }
    }
    // One for a group removed while pending dies with its calls, at once.
    let doomed_pg = manta::placement_group(cpus(1, 0.5), S::Pack).unwrap();
    let doomed = Holder::options()
        .placement_group(&doomed_pg, Some(0))
        .remote();
    let doomed_call = doomed.poke();
    manta::remove_placement_group(&doomed_pg).unwrap();
    for (what, r) in [
        ("ready", doomed.ready().get_timeout(LONG).map(drop)),
        ("call", doomed_call.get_timeout(LONG).map(drop)),
    ] {
        match r {
            Err(Error::ActorDied { .. } | Error::PlacementGroupRemoved { .. }) => {}
            other => panic!("{what} of an actor whose pending group was removed: {other:?}"),
        }
    }
    let t = Instant::now();
    manta::remove_placement_group(&big).unwrap();
    ready(&small);
    assert!(t.elapsed() < Duration::from_secs(10), "placed once freed");
    assert_eq!(early.get_timeout(LONG).unwrap(), 5);
    early_actor.ready().get_timeout(LONG).unwrap();
    assert_eq!(early_calls[0].get_timeout(LONG).unwrap(), 1);
    assert_eq!(early_calls[1].get_timeout(LONG).unwrap(), 2);
    assert_eq!(early_actor.poke().get_timeout(LONG).unwrap(), 3);
    let late = where_am_i::options()
        .num_cpus(0.5)
        .placement_group(&small, Some(1))
        .remote(6);
    assert_eq!(late.get_timeout(LONG).unwrap(), 6);
    manta::remove_placement_group(&small).unwrap();
}

/// The node this runs on (0 embedded).
#[manta::remote]
fn node_here() -> u64 {
    manta::status().ok().and_then(|s| s.node_id).unwrap_or(0)
}

/// Given a group's handle: runs a task in bundle `i` and creates an actor there, and says
/// where the task ran and what the actor answered.
#[manta::remote]
fn use_bundle(pg: PlacementGroup, i: usize) -> Result<(u64, u64, u64), String> {
    let node = node_here::options()
        .num_cpus(0.0)
        .placement_group(&pg, Some(i))
        .remote()
        .get_timeout(LONG)
        .map_err(|e| format!("{e:?}"))?;
    let holder = Holder::options().placement_group(&pg, Some(i)).remote();
    let poked = holder
        .poke()
        .get_timeout(LONG)
        .map_err(|e| format!("{e:?}"))?;
    let n = pg.bundle_count() as u64;
    Ok((node, poked, n))
}

/// A `PlacementGroup` handle passes to a task (another process in a cluster), which schedules
/// work into the group's bundles with it; once the group is removed, work through the handle
/// there fails with `PlacementGroupRemoved`.
fn handle_passes(ctx: &Ctx) {
    let pg = manta::placement_group(cpus(2, 0.25), S::Pack).unwrap();
    ready(&pg);
    let (node, poked, n) = use_bundle::options()
        .num_cpus(0.25)
        .remote(pg.clone(), 1)
        .get_timeout(LONG)
        .unwrap();
    assert_eq!((poked, n), (1, 2));
    if ctx.is_cluster() {
        assert_eq!(node, pg.bundle_nodes()[1], "ran on bundle 1's node");
    }
    manta::remove_placement_group(&pg).unwrap();
    match use_bundle::options()
        .num_cpus(0.25)
        .remote(pg.clone(), 0)
        .get_timeout(LONG)
    {
        Err(Error::Task(e)) if e.to_string().contains("PlacementGroupRemoved") => {}
        other => panic!("a removed group through a passed handle: {other:?}"),
    }
}

/// An actor keeping a group's handle (in a cluster, in another process than the group's
/// owner): it sees the group's state, and schedules into it.
#[manta::actor]
pub(crate) struct Keeper {
    pg: PlacementGroup,
}

#[manta::actor]
impl Keeper {
    pub(crate) fn new(pg: PlacementGroup) -> Self {
        Keeper { pg }
    }
    pub(crate) fn state(&self) -> String {
        self.pg.state().to_string()
    }
    pub(crate) fn nodes(&self) -> Vec<u64> {
        self.pg.bundle_nodes()
    }
    /// Runs a task in bundle `i`: where it ran, or the error.
    pub(crate) fn run_in(&self, i: usize) -> Result<u64, String> {
        node_here::options()
            .num_cpus(0.0)
            .placement_group(&self.pg, Some(i))
            .remote()
            .get_timeout(LONG)
            .map_err(|e| format!("{e:?}"))
    }
}

/// A handle kept by an actor sees its group removed by the creator, and scheduling into it
/// then fails as it does for the creator (`PlacementGroupRemoved`), not as an unknown
/// resource.
fn kept_handle(ctx: &Ctx) {
    let pg = manta::placement_group(cpus(2, 0.25), S::Pack).unwrap();
    ready(&pg);
    let keeper = Keeper::options().num_cpus(0.0).remote(pg.clone());
    assert_eq!(keeper.state().get_timeout(LONG).unwrap(), "CREATED");
    let ran = keeper.run_in(1).get_timeout(LONG).unwrap().unwrap();
    if ctx.is_cluster() {
        assert_eq!(ran, pg.bundle_nodes()[1]);
        assert_eq!(keeper.nodes().get_timeout(LONG).unwrap(), pg.bundle_nodes());
    }
    manta::remove_placement_group(&pg).unwrap();
    let deadline = Instant::now() + LONG;
    while keeper.state().get_timeout(LONG).unwrap() != "REMOVED" {
        assert!(
            Instant::now() < deadline,
            "the kept handle never saw the removal"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    match keeper.run_in(0).get_timeout(LONG).unwrap() {
        Err(e) if e.contains("PlacementGroupRemoved") => {}
        other => panic!("a removed group through a kept handle: {other:?}"),
    }
}

fn any_bundle(_: &Ctx) {
    let pg = manta::placement_group(vec![Bundle::cpus(0.5), Bundle::cpus(1.0)], S::Pack).unwrap();
    ready(&pg);
    // Up to the largest bundle; the whole group's 1.5 CPUs run tasks of any bundle.
    let r = nap::options()
        .num_cpus(1.0)
        .placement_group(&pg, None)
        .remote(10);
    assert_eq!(r.get_timeout(LONG).unwrap(), 10);
    let zero = where_am_i::options()
        .num_cpus(0.0)
        .placement_group(&pg, Some(0))
        .remote(9);
    assert_eq!(zero.get_timeout(LONG).unwrap(), 9);
    manta::remove_placement_group(&pg).unwrap();
}

/// The CPUs the calling thread may run on, as `sched_getaffinity` reports them.
fn thread_cpus() -> Vec<usize> {
    // SAFETY: a zeroed cpu_set_t is a valid empty set; sched_getaffinity writes at most its
    // size into it, and CPU_ISSET only reads it.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        assert_eq!(
            libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set),
            0
        );
        (0..libc::CPU_SETSIZE as usize)
            .filter(|&c| libc::CPU_ISSET(c, &set))
            .collect()
    }
}

#[manta::remote]
fn cpus_here() -> Vec<usize> {
    thread_cpus()
}

/// An actor that reports the CPUs its constructor and its calls ran on.
#[manta::actor]
pub(crate) struct CpuReporter {
    at_start: Vec<usize>,
}

#[manta::actor]
impl CpuReporter {
    pub(crate) fn new() -> Self {
        CpuReporter {
            at_start: thread_cpus(),
        }
    }
    pub(crate) fn cpus(&self) -> (Vec<usize>, Vec<usize>) {
        (self.at_start.clone(), thread_cpus())
    }
}

/// A bundle asking for whole CPUs gets a CPU set of its own, disjoint from the other bundles':
/// its tasks and actors (constructor and calls) run pinned to it; work in any bundle runs on
/// the union; the sets come back on removal. Where a node has too few CPUs in its mask, the
/// group is created all the same and says why it is not pinned.
fn pinned_cpus(ctx: &Ctx) {
    let pg = manta::placement_group(vec![Bundle::cpus(1.0); 2], S::StrictPack).unwrap();
    ready(&pg);
    let sets: Vec<Vec<usize>> = pg.bundle_cpus().into_iter().map(|l| l.0).collect();
    eprintln!(
        "[{}] bundle CPU sets {sets:?} ({:?})",
        ctx.mode,
        pg.cpu_note()
    );
    assert_eq!(sets.len(), 2);
    if sets.iter().any(Vec::is_empty) {
        let note = pg.cpu_note().expect("an unpinned bundle says why");
        assert!(note.contains("affinity mask"), "{note}");
        assert!(
            ctx.mode == crate::harness::Mode::Srun,
            "{}: bundles of 1 CPU on a 2-CPU node are pinned ({note})",
            ctx.mode
        );
        manta::remove_placement_group(&pg).unwrap();
        return;
    }
    assert!(sets.iter().all(|s| s.len() == 1), "one CPU each: {sets:?}");
    assert_ne!(sets[0], sets[1], "disjoint: {sets:?}");
    assert_eq!(pg.cpu_note(), None);
    for (i, set) in sets.iter().enumerate() {
        let task = cpus_here::options()
            .num_cpus(1.0)
            .placement_group(&pg, Some(i))
            .remote()
            .get_timeout(LONG)
            .unwrap();
        assert_eq!(&task, set, "a task in bundle {i}");
        let a = CpuReporter::options()
            .placement_group(&pg, Some(i))
            .remote();
        for _ in 0..2 {
            let (ctor, call) = a.cpus().get_timeout(LONG).unwrap();
            assert_eq!((&ctor, &call), (set, set), "an actor in bundle {i}");
        }
    }
    let mut union: Vec<usize> = sets.concat();
    union.sort_unstable();
    let any = cpus_here::options()
        .num_cpus(1.0)
        .placement_group(&pg, None)
        .remote()
        .get_timeout(LONG)
        .unwrap();
    // Any bundle: the sets of the bundles held where it runs (under srun the node's ranks
    // may hold one bundle each).
    assert!(
        any == union || sets.contains(&any),
        "any bundle: the group's CPUs there, got {any:?} of {sets:?}"
    );
    // The listing shows the sets.
    let listed = manta::list_placement_groups()
        .unwrap()
        .into_iter()
        .find(|g| g.id == pg.id())
        .unwrap();
    let listed: Vec<Vec<usize>> = listed.bundle_cpus.into_iter().map(|l| l.0).collect();
    assert_eq!(listed, sets);
    manta::remove_placement_group(&pg).unwrap();
    // Given back: a new group of the same shape is pinned again.
    let again = manta::placement_group(vec![Bundle::cpus(1.0); 2], S::StrictPack).unwrap();
    ready(&again);
    let mut sets2: Vec<Vec<usize>> = again.bundle_cpus().into_iter().map(|l| l.0).collect();
    sets2.sort();
    let mut sorted = sets.clone();
    sorted.sort();
    assert_eq!(sets2, sorted, "the CPUs came back");
    manta::remove_placement_group(&again).unwrap();
}

#[manta::actor]
pub(crate) struct Shard {
    rank: usize,
    /// What `group_rank` said in the constructor.
    ctor_rank: Option<usize>,
    seen: Vec<u64>,
}

#[manta::actor]
impl Shard {
    pub(crate) fn new(rank: usize) -> Self {
        Shard {
            rank,
            ctor_rank: manta::group_rank(),
            seen: Vec::new(),
        }
    }
    pub(crate) fn whoami(&self) -> (usize, usize, usize) {
        assert_eq!(
            self.ctor_rank,
            Some(self.rank),
            "the constructor knew its rank"
        );
        (
            self.rank,
            manta::group_rank().unwrap_or(usize::MAX),
            manta::group_world_size().unwrap_or(0),
        )
    }
    pub(crate) fn push(&mut self, x: u64) -> usize {
        self.seen.push(x);
        self.seen.len()
    }
    pub(crate) fn seen(&self) -> Vec<u64> {
        self.seen.clone()
    }
    pub(crate) fn nap(&self, ms: u64) -> usize {
        std::thread::sleep(Duration::from_millis(ms));
        self.rank
    }
}

fn shards(n: usize) -> (PlacementGroup, ActorGroup<Shard>) {
    let pg = manta::placement_group(cpus(n, 0.25), S::Pack).unwrap();
    ready(&pg);
    let group = ActorGroup::spawn(&pg, |m| {
        let rank = m.rank();
        Shard::options().group_member(&m).remote(rank)
    })
    .unwrap();
    (pg, group)
}

fn rank_order(_: &Ctx) {
    let (pg, group) = shards(4);
    assert_eq!((group.len(), group.world_size()), (4, 4));
    let who = manta::get_all(&group.call(|m| m.whoami())).unwrap();
    assert_eq!(
        who,
        (0..4).map(|r| (r, r, 4)).collect::<Vec<_>>(),
        "results in rank order, each member knowing its rank"
    );
    assert_eq!(manta::group_rank(), None, "the driver is no member");
    manta::remove_placement_group(&pg).unwrap();
}

fn slicing(_: &Ctx) {
    let (pg, group) = shards(4);
    let tail = group.slice(2..).unwrap();
    assert_eq!(tail.ranks(), 2..4);
    assert_eq!(tail.world_size(), 4);
    let who = manta::get_all(&tail.call(|m| m.whoami())).unwrap();
    assert_eq!(who, vec![(2, 2, 4), (3, 3, 4)]);
    assert!(group.slice(3..5).is_err(), "a slice beyond the group");
    assert!(tail.slice(0..1).is_err(), "a slice outside the slice");
    // Calls from one caller stay ordered per member.
    for i in 0..50u64 {
        let _ = group.call_ranked(|r, m| m.push(i * 10 + r as u64));
    }
    let seen = manta::get_all(&group.call(|m| m.seen())).unwrap();
    for (r, s) in seen.iter().enumerate() {
        let want: Vec<u64> = (0..50u64).map(|i| i * 10 + r as u64).collect();
        assert_eq!(s, &want, "member {r}'s calls in order");
    }
    manta::remove_placement_group(&pg).unwrap();
}

fn member_killed(_: &Ctx) {
    let (pg, group) = shards(3);
    manta::get_all(&group.call(|m| m.whoami())).unwrap();
    let calls = group.call(|m| m.nap(300));
    std::thread::sleep(Duration::from_millis(50));
    let t = Instant::now();
    manta::kill(group.member(1).unwrap()).unwrap();
    match calls[1].get_timeout(LONG) {
        Err(Error::ActorDied { reason, .. }) => {
            assert!(reason.contains("rank 1 of 3"), "names the rank: {reason}");
            assert!(reason.contains("node"), "names the node: {reason}");
            assert!(!reason.contains("node ?"), "knows the node: {reason}");
        }
        other => panic!("the killed member's call: {other:?}"),
    }
    assert!(t.elapsed() < Duration::from_secs(5), "failed promptly");
    assert_eq!(calls[0].get_timeout(LONG).unwrap(), 0);
    assert_eq!(calls[2].get_timeout(LONG).unwrap(), 2);
    manta::remove_placement_group(&pg).unwrap();
    match group.member(0).unwrap().whoami().get_timeout(LONG) {
        Err(Error::ActorDied { .. }) => {}
        other => panic!("a member of a removed group: {other:?}"),
    }
}

/// A member that reduces across its group through the group's communicator.
#[manta::actor]
pub(crate) struct Reducer {
    comm: manta::collective::Communicator,
}

#[manta::actor]
impl Reducer {
    pub(crate) fn new(group: String) -> Self {
        let comm = manta::collective::Communicator::join_group(&group).expect("join the group");
        Reducer { comm }
    }
    /// The sum over the group of `rank + 1`, and this member's rank in the communicator.
    pub(crate) fn sum(&self) -> (f64, usize) {
        let mut x = [(self.comm.rank() + 1) as f64];
        self.comm
            .allreduce(&mut x, manta::collective::ReduceOp::Sum)
            .expect("allreduce");
        (x[0], self.comm.rank())
    }
}

/// Members of an actor group get a communicator from the group alone: its name from the
/// `GroupMember`, their ranks from the group (no rank bookkeeping); outside a member
/// `join_group` is refused.
fn group_allreduce(_: &Ctx) {
    let n = 2;
    let pg = manta::placement_group(cpus(n, 0.25), S::Pack).unwrap();
    ready(&pg);
    let group = ActorGroup::spawn(&pg, |m| {
        Reducer::options()
            .group_member(&m)
            .remote(m.collective_name())
    })
    .unwrap();
    let sums = manta::get_all(&group.call(|m| m.sum())).unwrap();
    assert_eq!(sums, vec![(3.0, 0), (3.0, 1)], "sums in rank order");
    match manta::collective::Communicator::join_group("not-a-member") {
        Err(Error::InvalidArgument { .. }) => {}
        other => panic!("join_group outside a member: {other:?}"),
    }
    manta::remove_placement_group(&pg).unwrap();
}

/// Calls every member of `group` and sums their ranks.
#[manta::remote]
fn sum_ranks(group: ActorGroup<Shard>) -> usize {
    manta::get_all(&group.call(|m| m.whoami()))
        .unwrap()
        .iter()
        .map(|w| w.1)
        .sum()
}

fn passes_to_task(_: &Ctx) {
    let (pg, group) = shards(3);
    // Half a CPU: under srun each rank's 1-CPU share lost a quarter to the group.
    let sum = sum_ranks::options().num_cpus(0.5).remote(group.clone());
    assert_eq!(sum.get_timeout(LONG).unwrap(), 3);
    manta::remove_placement_group(&pg).unwrap();
}

fn spawn_checks(_: &Ctx) {
    let pg = manta::placement_group(cpus(2, 0.25), S::Pack).unwrap();
    ready(&pg);
    match ActorGroup::<Shard>::spawn(&pg, |m| Shard::remote(m.rank())) {
        Err(Error::InvalidArgument { .. }) => {}
        other => panic!("members created without their GroupMember: {other:?}"),
    }
    manta::remove_placement_group(&pg).unwrap();
}
