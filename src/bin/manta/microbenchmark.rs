//! `manta microbenchmark`: Ray's microbenchmark cases under Ray's own names, plus the latency,
//! scale and start-up cases of Manta's targets.
//!
//! Each throughput case is timed the way Ray's `timeit` does it: a warm-up of half a trial, then
//! `--trials` trials of `--duration` seconds, each repeating the case in steps of a tenth of
//! the warm-up count; the printed figure is the mean and standard deviation over trials of
//! `multiplier × repetitions / seconds`, as `<case> per second <mean> +- <stddev>`.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use indicatif::{ProgressBar, ProgressStyle};
use manta::{ActorHandle, ObjectRef};
use manta_launcher::MicrobenchmarkArgs;
use regex::Regex;
use serde_json::{Value, json};

#[manta::remote]
fn small_value() -> Vec<u8> {
    b"ok".to_vec()
}

#[manta::remote]
fn add(a: u64, b: u64) -> u64 {
    a + b
}

#[manta::remote]
fn one() -> u64 {
    1
}

#[manta::remote]
fn noop() {}

#[manta::remote]
fn do_put_small() -> Result<(), String> {
    for _ in 0..100 {
        manta::put(0u64).map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// `np.zeros(n, dtype=np.int64)` as numpy allocates it: `calloc`'d, so its pages are untouched
/// zeros, and (being 4 MiB or more) advised for transparent huge pages, so a first read maps the
/// huge zero page 2 MiB at a time (`manta_store::advise_huge_pages` says why that matters; a
/// plain `vec![0; n]` faults once per 4 KiB page instead). Ray's put cases put such arrays.
fn numpy_zeros(n: usize) -> Vec<i64> {
    let v = vec![0i64; n];
    if n * size_of::<i64>() >= manta_store::NUMPY_HUGEPAGE_THRESHOLD {
        manta_store::advise_huge_pages(&v);
    }
    v
}

#[manta::remote]
fn do_put() -> Result<(), String> {
    // Ray's `ray.put(np.zeros(10 * 1024 * 1024, dtype=np.int64))`, 10 times: fresh arrays.
    for _ in 0..10 {
        manta::put(numpy_zeros(10 * 1024 * 1024)).map_err(|e| e.to_string())?;
    }
    Ok(())
}

#[manta::remote]
fn do_put_plain_vec() -> Result<(), String> {
    for _ in 0..10 {
        manta::put(vec![0i64; 10 * 1024 * 1024]).map_err(|e| e.to_string())?;
    }
    Ok(())
}

#[manta::remote]
fn create_object_containing_ref() -> Result<Vec<ObjectRef<u64>>, String> {
    (0..10_000)
        .map(|_| manta::put(1u64).map_err(|e| e.to_string()))
        .collect()
}

/// Inside tasks and actor methods: waits for every call's result, reporting a failure as text
/// (the bodies return `Result<(), String>`, which is serialisable).
fn wait_all(refs: &[ObjectRef<Vec<u8>>]) -> Result<(), String> {
    manta::get_all(refs).map(drop).map_err(|e| e.to_string())
}

#[manta::remote]
fn work(actors: Vec<ActorHandle<Server>>, n: usize) -> Result<(), String> {
    let refs: Vec<_> = (0..n)
        .map(|i| actors[i % actors.len()].small_value())
        .collect();
    wait_all(&refs)
}

#[manta::remote]
fn async_actor_work(actors: Vec<ActorHandle<AsyncServer>>, n: usize) -> Result<(), String> {
    let refs: Vec<_> = (0..n)
        .map(|i| actors[i % actors.len()].small_value())
        .collect();
    wait_all(&refs)
}

/// Ray's `Actor` (num_cpus=0).
#[manta::actor]
pub(crate) struct Server;

#[manta::actor]
impl Server {
    pub(crate) fn new() -> Self {
        Server
    }
    pub(crate) fn small_value(&self) -> Vec<u8> {
        b"ok".to_vec()
    }
    pub(crate) fn small_value_arg(&self, _x: u64) -> Vec<u8> {
        b"ok".to_vec()
    }
    pub(crate) fn small_value_batch(&self, n: usize) -> Result<(), String> {
        let refs: Vec<_> = (0..n).map(|_| small_value::remote()).collect();
        wait_all(&refs)
    }
}

/// Ray's `AsyncActor`: its methods are `async fn`s.
#[manta::actor]
pub(crate) struct AsyncServer;

#[manta::actor]
impl AsyncServer {
    pub(crate) fn new() -> Self {
        AsyncServer
    }
    pub(crate) async fn small_value(&self) -> Vec<u8> {
        b"ok".to_vec()
    }
    pub(crate) async fn small_value_with_arg(&self, _x: u64) -> Vec<u8> {
        b"ok".to_vec()
    }
}

/// Ray's `Client` actor, over sync servers.
#[manta::actor]
pub(crate) struct Client {
    servers: Vec<ActorHandle<Server>>,
}

#[manta::actor]
impl Client {
    pub(crate) fn new(servers: Vec<ActorHandle<Server>>) -> Self {
        Client { servers }
    }
    pub(crate) fn small_value_batch(&self, n: usize) -> Result<(), String> {
        let refs: Vec<_> = self
            .servers
            .iter()
            .flat_map(|s| (0..n).map(move |_| s.small_value()))
            .collect();
        wait_all(&refs)
    }
    pub(crate) fn small_value_batch_arg(&self, n: usize) -> Result<(), String> {
        let x = manta::put(0u64).map_err(|e| e.to_string())?;
        let refs: Vec<_> = self
            .servers
            .iter()
            .flat_map(|s| (0..n).map(|_| s.small_value_arg(&x)).collect::<Vec<_>>())
            .collect();
        wait_all(&refs)
    }
}

/// Ray's `Client` actor, over async servers.
#[manta::actor]
pub(crate) struct AsyncClient {
    servers: Vec<ActorHandle<AsyncServer>>,
}

#[manta::actor]
impl AsyncClient {
    pub(crate) fn new(servers: Vec<ActorHandle<AsyncServer>>) -> Self {
        AsyncClient { servers }
    }
    pub(crate) fn small_value_batch(&self, n: usize) -> Result<(), String> {
        let refs: Vec<_> = self
            .servers
            .iter()
            .flat_map(|s| (0..n).map(move |_| s.small_value()))
            .collect();
        wait_all(&refs)
    }
}

struct Runner {
    filter: Option<Regex>,
    duration: Duration,
    trials: u32,
    list: bool,
    results: BTreeMap<String, Value>,
    progress: ProgressBar,
}

impl Runner {
    fn wants(&self, name: &str) -> bool {
        if self.list {
            println!("{name}");
            return false;
        }
        self.filter.as_ref().is_none_or(|re| re.is_match(name))
    }

    /// Whether to run the case `name`; if so, shows it in the progress line.
    fn begin(&self, name: &str) -> bool {
        let wanted = self.wants(name);
        if wanted {
            self.progress.set_message(name.to_string());
        }
        wanted
    }

    /// Ray's `timeit`: see the module docs.
    fn timeit(
        &mut self,
        name: &str,
        multiplier: f64,
        mut f: impl FnMut() -> Result<()>,
    ) -> Result<()> {
        if !self.begin(name) {
            return Ok(());
        }
        let warmup = self.duration / 2;
        let start = Instant::now();
        let mut count = 0u64;
        while start.elapsed() < warmup || count == 0 {
            f().with_context(|| format!("case {name:?}"))?;
            count += 1;
        }
        let step = count / 10 + 1;
        let mut stats = Vec::new();
        for _ in 0..self.trials {
            let start = Instant::now();
            let mut count = 0u64;
            while start.elapsed() < self.duration {
                for _ in 0..step {
                    f().with_context(|| format!("case {name:?}"))?;
                }
                count += step;
            }
            stats.push(multiplier * count as f64 / start.elapsed().as_secs_f64());
        }
        let mean = stats.iter().sum::<f64>() / stats.len() as f64;
        let sd =
            (stats.iter().map(|s| (s - mean).powi(2)).sum::<f64>() / stats.len() as f64).sqrt();
        self.record(
            name,
            format!("per second {mean:.2} +- {sd:.2}"),
            json!({"per_second": round2(mean), "stddev": round2(sd)}),
        );
        Ok(())
    }

    /// Round-trip latency of `f`: p50 and p99 over `samples` runs after a warm-up.
    fn latency(
        &mut self,
        name: &str,
        samples: usize,
        mut f: impl FnMut() -> Result<()>,
    ) -> Result<()> {
        if !self.begin(name) {
            return Ok(());
        }
        for _ in 0..samples / 4 {
            f()?;
        }
        let mut times = Vec::with_capacity(samples);
        for _ in 0..samples {
            let t = Instant::now();
            f()?;
            times.push(t.elapsed().as_secs_f64() * 1e6);
        }
        times.sort_by(f64::total_cmp);
        let p50 = times[times.len() / 2];
        let p99 = times[(times.len() * 99 / 100).min(times.len() - 1)];
        self.record(
            name,
            format!("p50 {p50:.2} us p99 {p99:.2} us"),
            json!({"p50_us": round2(p50), "p99_us": round2(p99)}),
        );
        Ok(())
    }

    /// Prints `<name> <line>` and keeps `value` for the JSON output.
    fn record(&mut self, name: &str, line: String, value: Value) {
        self.progress.suspend(|| println!("{name} {line}"));
        self.results.insert(name.to_string(), value);
        self.progress.inc(1);
    }
}

fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

/// Resident set size now and at its peak, in MB, from /proc (Linux).
fn rss_mb() -> (f64, f64) {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |key: &str| {
        status
            .lines()
            .find(|l| l.starts_with(key))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse::<f64>().ok())
            .map_or(f64::NAN, |kb| kb / 1024.0)
    };
    (field("VmRSS:"), field("VmHWM:"))
}

fn get<T: serde::de::DeserializeOwned + 'static>(r: &ObjectRef<T>) -> Result<T> {
    Ok(r.get()?)
}

fn check(r: Result<(), String>) -> Result<()> {
    r.map_err(anyhow::Error::msg)
}

/// Gets task results that report their own failure as `Err(String)`.
fn get_checked(refs: &[ObjectRef<Result<(), String>>]) -> Result<()> {
    manta::get_all(refs)?.into_iter().try_for_each(check)
}

/// Gets the results of fallible remote functions (their `Err` is a task error).
fn get_done(refs: &[ObjectRef<()>]) -> Result<()> {
    manta::get_all(refs)?;
    Ok(())
}

pub(crate) fn run(args: &MicrobenchmarkArgs) -> Result<()> {
    let filter = match &args.cases {
        Some(re) => Some(
            Regex::new(re)
                .with_context(|| format!("--cases {re:?} is not a valid regular expression"))?,
        ),
        None => None,
    };
    let progress = if args.list {
        ProgressBar::hidden()
    } else {
        ProgressBar::new(32)
    };
    progress.set_style(
        ProgressStyle::with_template("{spinner} [{pos}/{len}] {msg}")
            .unwrap_or_else(|_| ProgressStyle::default_spinner()),
    );
    progress.enable_steady_tick(Duration::from_millis(200));
    let mut r = Runner {
        filter,
        duration: Duration::from_secs_f64(args.duration),
        trials: args.trials,
        list: args.list,
        results: BTreeMap::new(),
        progress,
    };

    // Start-up first: this must be the process's first runtime.
    if r.wants("init to first result") {
        let t = Instant::now();
        manta::init()?;
        get(&one::remote())?;
        let secs = t.elapsed().as_secs_f64();
        r.record(
            "init to first result",
            format!("{:.3} ms", secs * 1e3),
            json!({"seconds": secs}),
        );
    } else {
        manta::init()?;
    }
    if r.wants("idle RSS") {
        std::thread::sleep(Duration::from_millis(500));
        let (rss, _) = rss_mb();
        r.record(
            "idle RSS",
            format!("{rss:.1} MB"),
            json!({"mb": round2(rss)}),
        );
    }

    // Before any case that allocates large objects, so the process's peak RSS is this case's.
    if r.wants("1m queued no-op tasks") {
        let t = Instant::now();
        let refs: Vec<_> = (0..1_000_000).map(|_| noop::remote()).collect();
        manta::get_all(&refs)?;
        let secs = t.elapsed().as_secs_f64();
        drop(refs);
        let (_, peak) = rss_mb();
        r.record(
            "1m queued no-op tasks",
            format!("{secs:.3} s, peak RSS {peak:.1} MB"),
            json!({"seconds": secs, "peak_rss_mb": round2(peak)}),
        );
    }
    ray_cases(&mut r)?;
    extra_cases(&mut r)?;
    group_cases(&mut r)?;
    manta::shutdown();

    // The same round trip with `get` never running the task itself: the cross-thread path.
    if r.wants("task round trip (no inline get)") {
        manta::init_with(manta::Config::default().inline_get(false))?;
        r.latency("task round trip (no inline get)", 2000, || {
            get(&small_value::remote()).map(drop)
        })?;
        manta::shutdown();
    }

    r.progress.finish_and_clear();
    if let Some(path) = &args.json {
        let text = serde_json::to_string_pretty(&r.results)?;
        std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))?;
    }
    if !args.list && r.results.is_empty() {
        bail!(
            "no case matched --cases {:?}; see --list",
            args.cases.as_deref().unwrap_or("")
        );
    }
    Ok(())
}

fn ray_cases(r: &mut Runner) -> Result<()> {
    let n_cpu = (std::thread::available_parallelism().map_or(2, |n| n.get()) / 2).max(1);

    let value = manta::put(0u64)?;
    r.timeit("single client get calls (Plasma Store)", 1.0, || {
        get(&value).map(drop)
    })?;
    r.timeit("single client put calls (Plasma Store)", 1.0, || {
        Ok(manta::put(0u64).map(drop)?)
    })?;
    r.timeit("multi client put calls (Plasma Store)", 1000.0, || {
        let refs: Vec<_> = (0..10).map(|_| do_put_small::remote()).collect();
        get_done(&refs)
    })?;
    if r.wants("single client put gigabytes") {
        let arr = numpy_zeros(100 * 1024 * 1024);
        r.timeit("single client put gigabytes", 8.0 * 0.1, || {
            // As Ray's `ray.put(arr)`: the array is encoded straight into a new object in the
            // shared-memory store (one memcpy: a Vec of numbers skips serde) and stays the caller's.
            Ok(manta::put_ref(&arr).map(drop)?)
        })?;
    }
    if r.wants("put gigabytes, touched source") {
        // Ray's case puts an untouched np.zeros array, whose pages all map the kernel's zero
        // page, which flatters any copy. The same put from memory that holds data:
        let arr: Vec<i64> = (0..100 * 1024 * 1024).collect();
        r.timeit("put gigabytes, touched source", 8.0 * 0.1, || {
            Ok(manta::put_ref(&arr).map(drop)?)
        })?;
    }
    r.timeit("single client tasks and get batch", 1.0, || {
        let refs: Vec<_> = (0..1000).map(|_| small_value::remote()).collect();
        Ok(manta::get_all(&refs).map(drop)?)
    })?;
    r.timeit("multi client put gigabytes", 10.0 * 8.0 * 0.1, || {
        let refs: Vec<_> = (0..10).map(|_| do_put::remote()).collect();
        get_done(&refs)
    })?;
    // The same from Rust's own `vec![0; n]` (no huge-page advice: one fault per 4 KiB page of
    // the source), which a Rust program writes unless it allocates as numpy does.
    r.timeit(
        "multi client put gigabytes, plain vec source",
        10.0 * 8.0 * 0.1,
        || {
            let refs: Vec<_> = (0..10).map(|_| do_put_plain_vec::remote()).collect();
            get_done(&refs)
        },
    )?;
    if r.wants("single client get object containing 10k refs") {
        let obj = create_object_containing_ref::remote();
        r.timeit("single client get object containing 10k refs", 1.0, || {
            let refs = get(&obj)?;
            anyhow::ensure!(refs.len() == 10_000);
            Ok(())
        })?;
    }
    r.timeit("single client wait 1k refs", 1.0, || {
        let mut not_ready: Vec<_> = (0..1000).map(|_| small_value::remote()).collect();
        for _ in 0..1000 {
            let (_ready, rest) = manta::wait(not_ready, 1, None)?;
            not_ready = rest;
        }
        Ok(())
    })?;
    r.timeit("single client tasks sync", 1.0, || {
        get(&small_value::remote()).map(drop)
    })?;
    r.timeit("single client tasks async", 1000.0, || {
        let refs: Vec<_> = (0..1000).map(|_| small_value::remote()).collect();
        Ok(manta::get_all(&refs).map(drop)?)
    })?;
    {
        let (n, m) = (10_000, 4);
        let actors: Vec<_> = (0..m).map(|_| Server::remote()).collect();
        r.timeit("multi client tasks async", (n * m) as f64, || {
            let refs: Vec<_> = actors.iter().map(|a| a.small_value_batch(n)).collect();
            get_checked(&refs)
        })?;
    }
    let a = Server::remote();
    r.timeit("1:1 actor calls sync", 1.0, || {
        get(&a.small_value()).map(drop)
    })?;
    r.timeit("1:1 actor calls async", 1000.0, || {
        let refs: Vec<_> = (0..1000).map(|_| a.small_value()).collect();
        Ok(manta::get_all(&refs).map(drop)?)
    })?;
    let concurrent = Server::options().max_concurrency(16).remote();
    r.timeit("1:1 actor calls concurrent", 1000.0, || {
        let refs: Vec<_> = (0..1000).map(|_| concurrent.small_value()).collect();
        Ok(manta::get_all(&refs).map(drop)?)
    })?;
    {
        let n = 5000;
        let actors: Vec<_> = (0..n_cpu).map(|_| Server::remote()).collect();
        let client = Client::remote(actors.clone());
        r.timeit("1:n actor calls async", (n * actors.len()) as f64, || {
            check(get(&client.small_value_batch(n))?)
        })?;
        let m = 4;
        r.timeit("n:n actor calls async", (m * n) as f64, || {
            let refs: Vec<_> = (0..m).map(|_| work::remote(actors.clone(), n)).collect();
            get_done(&refs)
        })?;
        let n = 1000;
        let clients: Vec<_> = (0..n_cpu)
            .map(|_| Client::remote(vec![Server::remote()]))
            .collect();
        r.timeit(
            "n:n actor calls with arg async",
            (n * clients.len()) as f64,
            || {
                let refs: Vec<_> = clients.iter().map(|c| c.small_value_batch_arg(n)).collect();
                get_checked(&refs)
            },
        )?;
    }
    let aa = AsyncServer::remote();
    r.timeit("1:1 async-actor calls sync", 1.0, || {
        get(&aa.small_value()).map(drop)
    })?;
    r.timeit("1:1 async-actor calls async", 1000.0, || {
        let refs: Vec<_> = (0..1000).map(|_| aa.small_value()).collect();
        Ok(manta::get_all(&refs).map(drop)?)
    })?;
    r.timeit("1:1 async-actor calls with args async", 1000.0, || {
        let refs: Vec<_> = (0..1000u64).map(|i| aa.small_value_with_arg(i)).collect();
        Ok(manta::get_all(&refs).map(drop)?)
    })?;
    {
        let n = 5000;
        let actors: Vec<_> = (0..n_cpu).map(|_| AsyncServer::remote()).collect();
        let client = AsyncClient::remote(actors.clone());
        r.timeit(
            "1:n async-actor calls async",
            (n * actors.len()) as f64,
            || check(get(&client.small_value_batch(n))?),
        )?;
        let m = 4;
        r.timeit("n:n async-actor calls async", (m * n) as f64, || {
            let refs: Vec<_> = (0..m)
                .map(|_| async_actor_work::remote(actors.clone(), n))
                .collect();
            get_done(&refs)
        })?;
    }
    // Ray's case: 100 groups of one tiny bundle created, waited for, removed.
    let num_pgs = 100;
    r.timeit("placement group create/removal", num_pgs as f64, || {
        let pgs = (0..num_pgs)
            .map(|_| {
                manta::placement_group(
                    vec![manta::Bundle::cpus(0.001)],
                    manta::PlacementStrategy::Pack,
                )
            })
            .collect::<Result<Vec<_>, _>>()?;
        for pg in &pgs {
            pg.ready().get_timeout(Duration::from_secs(30))?;
        }
        for pg in &pgs {
            manta::remove_placement_group(pg)?;
        }
        Ok(())
    })?;
    Ok(())
}

/// Members of an actor group of `n` [`Server`]s, one per tiny bundle, spread over the nodes
/// (embedded: one node).
fn server_group(n: usize) -> Result<(manta::PlacementGroup, manta::ActorGroup<Server>)> {
    let pg = manta::placement_group(
        (0..n).map(|_| manta::Bundle::cpus(0.001)).collect(),
        manta::PlacementStrategy::Spread,
    )?;
    pg.ready().get_timeout(Duration::from_secs(60))?;
    let group = manta::ActorGroup::spawn(&pg, |m| Server::options().group_member(&m).remote())?;
    manta::get_all(&group.call(|m| m.small_value()))?;
    Ok((pg, group))
}

/// p50 of `samples` rounds of: `group.call` to every member (the time until `call` returned,
/// and until every result was in), then the same members called one by one from here (the
/// same two times).
fn group_rounds(group: &manta::ActorGroup<Server>, samples: usize) -> Result<[f64; 4]> {
    let mut v: [Vec<f64>; 4] = Default::default();
    for _ in 0..samples {
        let t = Instant::now();
        let refs = group.call(|m| m.small_value());
        v[0].push(t.elapsed().as_secs_f64() * 1e6);
        manta::get_all(&refs)?;
        v[1].push(t.elapsed().as_secs_f64() * 1e6);
        let t = Instant::now();
        let refs: Vec<_> = group.members().iter().map(|m| m.small_value()).collect();
        v[2].push(t.elapsed().as_secs_f64() * 1e6);
        manta::get_all(&refs)?;
        v[3].push(t.elapsed().as_secs_f64() * 1e6);
    }
    Ok(v.map(|mut x| {
        x.sort_by(f64::total_cmp);
        x[x.len() / 2]
    }))
}

/// Actor groups: `group.call` on 64 members against 64 single calls back to back (the same
/// 64 actors, the ratio printed), and the time of one call to every member of 16..1024, with
/// its growth from 16 members beside the growth of N and of log N.
fn group_cases(r: &mut Runner) -> Result<()> {
    if r.begin("actor group call 64 members vs 64 single calls") {
        let (pg, group) = server_group(64)?;
        let [gi, g, si, s] = group_rounds(&group, 300)?;
        manta::remove_placement_group(&pg)?;
        r.record(
            "actor group call 64 members vs 64 single calls",
            format!(
                "group.call p50 {g:.2} us (issued in {gi:.2}), 64 single calls p50 {s:.2} us \
                 (issued in {si:.2}), ratio {:.2}",
                g / s
            ),
            json!({"group_us": round2(g), "single_us": round2(s), "ratio": round2(g / s),
                   "group_issue_us": round2(gi), "single_issue_us": round2(si)}),
        );
    }
    if r.begin("actor group broadcast 16..1024 members") {
        let mut curve = Vec::new();
        let mut line = Vec::new();
        let mut first: Option<(f64, f64)> = None;
        for n in [16usize, 64, 256, 1024] {
            let (pg, group) = server_group(n)?;
            let [gi, g, si, s] = group_rounds(&group, 50)?;
            manta::remove_placement_group(&pg)?;
            let (g16, gi16) = *first.get_or_insert((g, gi));
            line.push(format!(
                "{n}: {g:.1} us, x{:.2} of 16's (N x{:.0}, log N x{:.2}), issued in {gi:.1} us \
                 (x{:.2}); single calls {s:.1} us (issued in {si:.1} us), ratio {:.2}",
                g / g16,
                n as f64 / 16.0,
                (n as f64).log2() / 4.0,
                gi / gi16,
                g / s
            ));
            curve.push(
                json!({"members": n, "p50_us": round2(g), "issue_p50_us": round2(gi),
                "single_p50_us": round2(s), "single_issue_p50_us": round2(si),
                "growth_from_16": round2(g / g16), "issue_growth_from_16": round2(gi / gi16)}),
            );
        }
        r.record(
            "actor group broadcast 16..1024 members",
            line.join("; "),
            json!({"curve": curve}),
        );
    }
    Ok(())
}

/// Binary reduction tree over `leaves` leaf tasks, built from the driver with refs as arguments.
fn reduction_tree(leaves: usize) -> Result<u64> {
    let mut level: Vec<ObjectRef<u64>> = (0..leaves).map(|_| one::remote()).collect();
    while level.len() > 1 {
        let mut next = Vec::with_capacity(level.len().div_ceil(2));
        for pair in level.chunks(2) {
            next.push(match pair {
                [a, b] => add::remote(a, b),
                [a] => a.clone(),
                _ => unreachable!("chunks(2) yields one or two"),
            });
        }
        level = next;
    }
    get(&level[0])
}

fn extra_cases(r: &mut Runner) -> Result<()> {
    r.latency("task round trip", 2000, || {
        get(&small_value::remote()).map(drop)
    })?;
    let a = Server::remote();
    r.latency("actor call round trip", 2000, || {
        get(&a.small_value()).map(drop)
    })?;
    if r.wants("reduction tree 10k leaves") {
        reduction_tree(1000)?; // warm-up
        let t = Instant::now();
        let sum = reduction_tree(10_000)?;
        let secs = t.elapsed().as_secs_f64();
        anyhow::ensure!(sum == 10_000, "reduction tree summed to {sum}");
        r.record(
            "reduction tree 10k leaves",
            format!("{:.2} ms", secs * 1e3),
            json!({"seconds": secs}),
        );
    }
    if r.wants("100k no-op tasks") {
        let t = Instant::now();
        let refs: Vec<_> = (0..100_000).map(|_| noop::remote()).collect();
        manta::get_all(&refs)?;
        let rate = 100_000.0 / t.elapsed().as_secs_f64();
        r.record(
            "100k no-op tasks",
            format!("per second {rate:.2}"),
            json!({"per_second": round2(rate)}),
        );
    }
    Ok(())
}
