//! The configuration catalogue: every tunable of the runtime, declared once.
//!
//! Each entry names its field, type, default, `MANTA_*` environment override and a doc line,
//! in the manner of Ray's `ray_config_def.h`. Nothing else in Manta hard-codes a tunable:
//! code reads it from the [`Config`] value the runtime was started with.
//!
//! Precedence: a value set on the [`Config`] builder wins over the environment, which wins over
//! the default. A malformed environment value is an error at `init`, never silently ignored.
//!
//! Names are regular: entry `foo_bar` is `MANTA_FOO_BAR`, with `_US` appended for a duration
//! (microseconds in the environment); a unit test holds every entry to it. Each entry has a
//! [`Scope`]: who reads it, and whether a driver hands its value to its worker processes.
//! `manta config` prints the catalogue with the values this environment resolves to;
//! `docs/CONFIG.md` is generated from it (`manta config --markdown`; a unit test fails when the
//! file is stale). The variables Manta sets for its own child processes, and those only its
//! test suite reads, are listed in [`INTERNAL`]; any other `MANTA_*` variable in a process's
//! environment is reported at `init` as unknown (a typo, or a name that changed).

use std::fmt;
use std::time::Duration;

use crate::error::Error;
use crate::sync::{Arc, RwLock};

/// A value that can be read from a `MANTA_*` environment variable, and written back as one
/// (`to_env(parse_env(x)) == x` up to spelling).
trait FromEnv: Sized {
    /// Whether the value is a duration (microseconds in the environment, `_US` in its name).
    const DURATION: bool = false;
    fn parse_env(raw: &str) -> Result<Self, String>;
    fn to_env(&self) -> String;
}

macro_rules! from_env_via_fromstr {
    ($($t:ty),*) => {$(
        impl FromEnv for $t {
            fn parse_env(raw: &str) -> Result<Self, String> {
                raw.trim().parse::<$t>().map_err(|e| e.to_string())
            }
            fn to_env(&self) -> String {
                self.to_string()
            }
        }
    )*};
}
from_env_via_fromstr!(f64, usize, u64, u32);

impl FromEnv for bool {
    fn parse_env(raw: &str) -> Result<Self, String> {
        match raw.trim().to_ascii_lowercase().as_str() {
            "1" | "true" | "yes" | "on" => Ok(true),
            "0" | "false" | "no" | "off" => Ok(false),
            other => Err(format!("expected true/false, got {other:?}")),
        }
    }
    fn to_env(&self) -> String {
        self.to_string()
    }
}

impl FromEnv for Duration {
    const DURATION: bool = true;
    fn parse_env(raw: &str) -> Result<Self, String> {
        let micros = raw.trim().parse::<u64>().map_err(|e| e.to_string())?;
        Ok(Duration::from_micros(micros))
    }
    fn to_env(&self) -> String {
        self.as_micros().to_string()
    }
}

/// A duration, or `auto` (empty in the environment too): the runtime picks one.
impl FromEnv for Option<Duration> {
    const DURATION: bool = true;
    fn parse_env(raw: &str) -> Result<Self, String> {
        match raw.trim() {
            "" | "auto" => Ok(None),
            micros => Duration::parse_env(micros)
                .map(Some)
                .map_err(|e| format!("expected microseconds or auto: {e}")),
        }
    }
    fn to_env(&self) -> String {
        self.map_or_else(|| "auto".to_owned(), |d| d.to_env())
    }
}

impl FromEnv for String {
    fn parse_env(raw: &str) -> Result<Self, String> {
        Ok(raw.to_string())
    }
    fn to_env(&self) -> String {
        self.clone()
    }
}

impl FromEnv for CpuList {
    fn parse_env(raw: &str) -> Result<Self, String> {
        CpuList::parse(raw)
    }
    fn to_env(&self) -> String {
        self.to_string()
    }
}

impl FromEnv for CustomResources {
    fn parse_env(raw: &str) -> Result<Self, String> {
        CustomResources::parse(raw)
    }
    fn to_env(&self) -> String {
        self.to_string()
    }
}

/// Custom resources a node offers (e.g. `{"accelerator": 4}`), as `name=amount` pairs.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct CustomResources(pub Vec<(String, f64)>);

impl CustomResources {
    /// Parses `name=amount[,name=amount…]`, e.g. `MANTA_RESOURCES="custom=100,ssd=1"`.
    pub fn parse(raw: &str) -> Result<Self, String> {
        let mut out = Vec::new();
        for part in raw.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (name, amount) = part
                .split_once('=')
                .ok_or_else(|| format!("expected name=amount, got {part:?}"))?;
            let amount: f64 = amount
                .trim()
                .parse()
                .map_err(|e| format!("{part:?}: {e}"))?;
            out.push((name.trim().to_string(), amount));
        }
        Ok(CustomResources(out))
    }
}

/// A set of CPUs (or of NUMA nodes) in the kernel's list notation (`0-3,8`), ascending and
/// without repeats; empty means "none given".
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CpuList(pub Vec<usize>);

impl CpuList {
    /// The largest index accepted (the kernel's CPU and node masks are far smaller).
    pub const MAX: usize = (1 << 16) - 1;

    /// Parses `0-3,8,10-11` (whitespace around items allowed, an empty string is the empty
    /// list). Anything else — `x-`, `3-1`, an index above [`CpuList::MAX`] — is an error naming
    /// the item.
    pub fn parse(raw: &str) -> Result<Self, String> {
        let mut out = std::collections::BTreeSet::new();
        let index = |part: &str, n: &str| {
            let n: usize = n.trim().parse().map_err(|_| {
                format!("{part:?}: expected a number or a range like 0-3 (in a list like 0-3,8)")
            })?;
            if n > Self::MAX {
                return Err(format!("{part:?}: {n} is above {}", Self::MAX));
            }
            Ok(n)
        };
        for part in raw.split(',').map(str::trim) {
            if part.is_empty() {
                if raw.trim().is_empty() {
                    continue;
                }
                return Err(format!("{raw:?}: an empty item"));
            }
            match part.split_once('-') {
                Some((a, b)) => {
                    let (a, b) = (index(part, a)?, index(part, b)?);
                    if a > b {
                        return Err(format!("{part:?}: the range runs backwards"));
                    }
                    out.extend(a..=b);
                }
                None => {
                    out.insert(index(part, part)?);
                }
            }
        }
        Ok(CpuList(out.into_iter().collect()))
    }

    /// Whether no CPU is listed.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl std::str::FromStr for CpuList {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        CpuList::parse(s)
    }
}

impl fmt::Display for CpuList {
    /// The kernel's notation, ranges compacted: `0-3,8`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let v = &self.0;
        let mut i = 0;
        while i < v.len() {
            let mut j = i;
            while j + 1 < v.len() && v[j + 1] == v[j] + 1 {
                j += 1;
            }
            if i > 0 {
                f.write_str(",")?;
            }
            if i == j {
                write!(f, "{}", v[i])?;
            } else {
                write!(f, "{}-{}", v[i], v[j])?;
            }
            i = j + 1;
        }
        Ok(())
    }
}

/// Who reads an entry of the catalogue, and whether a driver hands it to its workers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Scope {
    /// The job's: the driver's value (set on its [`Config`] or in its environment) is given to
    /// every worker process of its job, so a task reads what its driver set.
    Job,
    /// The node's: read by a raylet (`manta start`), which sets it for the worker processes it
    /// starts; embedded, the process's own. A driver's value is not forwarded.
    Node,
    /// The head's: read by the GCS (`manta start --head`).
    Head,
    /// Each process's own, never forwarded (a raylet sets a worker's address and token).
    Process,
}

impl Scope {
    /// The scope's name as `manta config` prints it.
    pub fn name(self) -> &'static str {
        match self {
            Scope::Job => "job",
            Scope::Node => "node",
            Scope::Head => "head",
            Scope::Process => "process",
        }
    }
}

/// One entry of the catalogue.
#[derive(Clone, Copy, Debug)]
#[non_exhaustive]
pub struct Entry {
    /// The [`Config`] builder method and [`Resolved`] field.
    pub name: &'static str,
    /// The environment variable.
    pub env: &'static str,
    /// Who reads it.
    pub scope: Scope,
    /// What it means (its doc comment).
    pub doc: &'static str,
    /// Whether it is a duration (microseconds in the environment).
    pub duration: bool,
}

impl Entry {
    /// Its doc comment on one line.
    fn meaning(&self) -> String {
        self.doc.split_whitespace().collect::<Vec<_>>().join(" ")
    }
}

/// The `MANTA_*` variables outside the catalogue that Manta sets for its own child processes
/// or reads in its launchers: every reader and writer names them from here.
pub mod vars {
    /// Set by a raylet for the worker processes it starts: its address.
    pub const WORKER_RAYLET: &str = "MANTA_WORKER_RAYLET";
    /// Set by a raylet for a worker process: the job it works for.
    pub const JOB_ID: &str = "MANTA_JOB_ID";
    /// Set by a raylet for a worker process: its node.
    pub const NODE_ID: &str = "MANTA_NODE_ID";
    /// Set by a raylet for a worker process: the address it listens on.
    pub const NODE_IP: &str = "MANTA_NODE_IP";
    /// Set by `manta start` for its background process: the session directory.
    pub const SESSION_DIR: &str = "MANTA_SESSION_DIR";
    /// Where session directories live (default /tmp/manta).
    pub const SESSION_ROOT: &str = "MANTA_SESSION_ROOT";
    /// `0` turns the srun/mpirun bootstrap off for this process.
    pub const SPMD: &str = "MANTA_SPMD";
    /// `0` makes an mpirun launch derive ports and token instead of exchanging them.
    pub const MPI_EXCHANGE: &str = "MANTA_MPI_EXCHANGE";
    /// What a raylet sets for each worker process it starts (never forwarded by a driver).
    pub const SET_BY_RAYLET: [&str; 4] = [WORKER_RAYLET, JOB_ID, NODE_ID, NODE_IP];
}

/// `MANTA_*` variables outside the catalogue: [`vars`], and what only Manta's tests and
/// benchmarks read, as `(name or prefix*, meaning)`.
pub const INTERNAL: &[(&str, &str)] = &[
    (
        vars::WORKER_RAYLET,
        "set by a raylet for the worker processes it starts: its address",
    ),
    (
        vars::JOB_ID,
        "set by a raylet for a worker process: the job it works for",
    ),
    (
        vars::NODE_ID,
        "set by a raylet for a worker process: its node",
    ),
    (
        vars::NODE_IP,
        "set by a raylet for a worker process: the address it listens on",
    ),
    (
        vars::SESSION_DIR,
        "set by `manta start` for its background process: the session directory",
    ),
    (
        vars::SESSION_ROOT,
        "where session directories live (default /tmp/manta)",
    ),
    (
        vars::SPMD,
        "0 turns the srun/mpirun bootstrap off for this process",
    ),
    (
        vars::MPI_EXCHANGE,
        "0 makes an mpirun launch derive ports and token instead of exchanging them through MPI",
    ),
    (
        "MANTA_TESTING_*",
        "test hooks (delays, faults) read only when set by a test",
    ),
    (
        "MANTA_TEST_CASE",
        "the semantics matrix: run only these cases",
    ),
    ("MANTA_CHAOS_*", "the chaos test: its duration and seed"),
    ("MANTA_BENCH_*", "benchmarks: the date they record"),
    ("MANTA_BIN", "tests and scripts: the manta binary to run"),
    (
        "MANTA_STORE_REQUIRE_*",
        "store tests: fail instead of skipping without huge pages",
    ),
];

/// The current name of a catalogue variable whose name changed.
const RENAMED: &[(&str, &str)] = &[
    ("MANTA_SPIN_US", "MANTA_SPIN_BEFORE_PARK_US"),
    ("MANTA_TASK_MAX_RETRIES", "MANTA_MAX_TASK_RETRIES"),
    ("MANTA_TASK_SYSTEM_RETRIES", "MANTA_MAX_TASK_SYSTEM_RETRIES"),
];

/// Whether `name` is a catalogue variable or an internal one.
pub fn is_known(name: &str) -> bool {
    Config::catalogue().iter().any(|e| e.env == name)
        || INTERNAL.iter().any(|(n, _)| match n.strip_suffix('*') {
            Some(prefix) => name.starts_with(prefix),
            None => *n == name,
        })
}

/// The `MANTA_*` variables among `vars` that Manta does not know, each with a hint (the new
/// name of a renamed one).
pub fn unknown_vars(vars: impl IntoIterator<Item = String>) -> Vec<String> {
    vars.into_iter()
        .filter(|k| k.starts_with("MANTA_") && !is_known(k))
        .map(|k| match RENAMED.iter().find(|(old, _)| *old == k) {
            Some((_, new)) => format!("{k} (renamed {new})"),
            None => k,
        })
        .collect()
}

macro_rules! catalogue {
    ($(
        $(#[doc = $doc:literal])+
        $field:ident : $ty:ty = $default:expr, env $env:literal, $scope:ident;
    )*) => {
        /// Runtime configuration: one field per tunable, each with a default and a `MANTA_*`
        /// environment override (see the module docs for precedence).
        ///
        /// ```
        /// let config = manta_core::Config::default().num_cpus(4.0).num_gpus(1.0);
        /// assert_eq!(config.get_num_cpus(), 4.0);
        /// ```
        #[derive(Clone, Debug, Default)]
        pub struct Config {
            $( $field: Option<$ty>, )*
        }

        impl Config {
            $(
                $(#[doc = $doc])+
                #[doc = concat!("\n\nEnvironment override: `", $env, "`.")]
                pub fn $field(mut self, value: $ty) -> Self {
                    self.$field = Some(value);
                    self
                }
            )*

            /// Resolves every entry: builder value, else environment, else default.
            pub fn resolve(&self) -> Result<Resolved, Error> {
                self.resolve_from(|key| std::env::var(key).ok())
            }

            /// [`Config::resolve`] with the environment read through `var` (sans I/O, for
            /// tests).
            pub(crate) fn resolve_from(
                &self,
                var: impl Fn(&str) -> Option<String>,
            ) -> Result<Resolved, Error> {
                let mut explicit = 0u64;
                let mut index = 0usize;
                $(
                    if self.$field.is_some() || var($env).is_some() {
                        explicit |= 1 << index;
                    }
                    index += 1;
                )*
                debug_assert!(index <= 64, "the explicit mask holds 64 entries");
                Ok(Resolved {
                    explicit,
                    $( $field: match &self.$field {
                        Some(v) => v.clone(),
                        None => match var($env) {
                            Some(raw) => <$ty as FromEnv>::parse_env(&raw).map_err(|message| {
                                Error::Config { key: $env.to_string(), message }
                            })?,
                            None => $default,
                        },
                    }, )*
                })
            }

            /// Every entry of the catalogue, in declaration order.
            pub fn catalogue() -> &'static [Entry] {
                const ENTRIES: &[Entry] = &[ $( Entry {
                    name: stringify!($field),
                    env: $env,
                    scope: Scope::$scope,
                    doc: concat!($($doc, "\n"),+),
                    duration: <$ty as FromEnv>::DURATION,
                } ),* ];
                ENTRIES
            }
        }

        /// A [`Config`] with every entry resolved to a value.
        #[derive(Clone, Debug)]
        pub struct Resolved {
            /// Bit `i`: entry `i` of the catalogue was set (on the builder or in the
            /// environment) rather than defaulted.
            explicit: u64,
            $( $(#[doc = $doc])+ pub $field: $ty, )*
        }

        impl Resolved {
            /// Every entry's value as its environment variable spells it, in the order of
            /// [`Config::catalogue`].
            pub fn env_values(&self) -> Vec<String> {
                vec![ $( <$ty as FromEnv>::to_env(&self.$field) ),* ]
            }

            /// Every entry's default as `manta config` prints it (`(per host)` where the
            /// default is computed from the machine), in the order of [`Config::catalogue`].
            pub fn default_values() -> Vec<String> {
                vec![ $(
                    if stringify!($default).starts_with("default_") {
                        "(per host)".to_owned()
                    } else {
                        <$ty as FromEnv>::to_env(&$default)
                    }
                ),* ]
            }
        }
    };
}

fn default_cpus() -> f64 {
    std::thread::available_parallelism()
        .map(|n| n.get() as f64)
        .unwrap_or(1.0)
}

catalogue! {
    /// CPUs this node offers to tasks and actors (default: the host's available parallelism).
    num_cpus: f64 = default_cpus(), env "MANTA_NUM_CPUS", Node;
    /// GPUs this node offers (default 0; GPU discovery arrives with the `gpu` crate).
    num_gpus: f64 = 0.0, env "MANTA_NUM_GPUS", Node;
    /// Custom resources this node offers, `name=amount,…`.
    resources: CustomResources = CustomResources::default(), env "MANTA_RESOURCES", Node;
    /// Worker slots (threads) started with the runtime; 0 means one per whole CPU, at least 1.
    num_slots: usize = 0, env "MANTA_NUM_SLOTS", Job;
    /// CPUs the slot threads pin themselves to, in the kernel's list notation (`0-3,8`): slot
    /// `i` runs on the `i`-th CPU of the list, round-robin. Empty (the default) pins nothing.
    /// The launcher sets it for the workers it starts (the node's or the rank's CPUs); a
    /// failed pin is a warning, not an error.
    cpu_affinity: CpuList = CpuList::default(), env "MANTA_CPU_AFFINITY", Node;
    /// Upper bound on slot threads, reached only when slots block in `get` inside tasks.
    max_slots: usize = 1024, env "MANTA_MAX_SLOTS", Job;
    /// How long an idle slot, or a caller waiting in `get`, spins before it parks (microseconds).
    spin_before_park: Duration = Duration::from_micros(100), env "MANTA_SPIN_BEFORE_PARK_US", Job;
    /// Whether a `get` (without timeout) that finds its task still queued runs it on the caller.
    inline_get: bool = true, env "MANTA_INLINE_GET", Job;
    /// How many times a task whose body panics or returns `Err` is run again before `get`
    /// reports the error, when its options do not say (`retry_exceptions`; Ray retries no
    /// application error by default).
    max_task_retries: u32 = 0, env "MANTA_MAX_TASK_RETRIES", Job;
    /// Values whose encoding is at most this many bytes travel inline in task messages.
    max_inline_object_bytes: usize = 100 * 1024, env "MANTA_MAX_INLINE_OBJECT_BYTES", Job;
    /// In a cluster, at most this many bytes of a task's arguments travel inline in its
    /// message (Ray's `task_rpc_inlined_bytes_limit`); the rest are held by the caller and
    /// pulled by the executor, so a task message always fits in one transport frame (4 MiB).
    max_inline_args_bytes: usize = 2 << 20, env "MANTA_MAX_INLINE_ARGS_BYTES", Job;
    /// Size of the node's shared-memory object store in bytes (default: 30% of physical memory,
    /// as Ray's). Objects larger than `max_inline_object_bytes` live there.
    object_store_memory: usize = default_object_store_memory(), env "MANTA_OBJECT_STORE_MEMORY", Node;
    /// Whether to touch every page of the object store at `init`, so that no put pays
    /// first-touch page faults (slow start and resident memory for faster first puts).
    object_store_prefault: bool = false, env "MANTA_OBJECT_STORE_PREFAULT", Node;
    /// Whether to back the object store with huge pages when the node's pool has enough free
    /// ones: 1 GiB pages when the store is large enough (its size rounded down to whole GiB keeps
    /// 7/8 of it), else 2 MiB pages (else 4 KiB pages with transparent huge pages advised, as
    /// when this is false).
    object_store_huge_pages: bool = true, env "MANTA_OBJECT_STORE_HUGE_PAGES", Node;
    /// NUMA nodes to split the object store's arena across (a node list like `0-1`), one span
    /// bound to each; empty (the default) means every NUMA node of the machine with the
    /// `hwloc` feature, else one unplaced span. The launcher sets it to the NUMA nodes of the
    /// CPUs the node's (or rank's) workers run on.
    object_store_numa_nodes: CpuList = CpuList::default(), env "MANTA_OBJECT_STORE_NUMA_NODES", Node;
    /// Fraction of the object store in use above which unpinned objects are spilled to disk.
    object_spilling_threshold: f64 = 0.8, env "MANTA_OBJECT_SPILLING_THRESHOLD", Node;
    /// Directory for spill files (unlinked from birth: nothing is left there); empty means
    /// the system's temporary directory.
    object_spilling_directory: String = String::new(), env "MANTA_OBJECT_SPILLING_DIRECTORY", Node;
    /// How long a put (or a task result) waits for room in a full object store before failing
    /// with `ObjectStoreFull` (microseconds in the environment).
    object_store_put_timeout: Duration = Duration::from_secs(10), env "MANTA_OBJECT_STORE_PUT_TIMEOUT_US", Job;
    /// The GCS (`host:port`) of a running cluster to join; empty runs the embedded single-node
    /// runtime. A driver that joins runs no tasks itself: its tasks and actors go to worker
    /// processes the cluster's raylets start from this same binary.
    address: String = String::new(), env "MANTA_ADDRESS", Process;
    /// The cluster's token (printed by `manta start --head`); empty means the one in the
    /// session directory of the cluster at `address`, if this host has it.
    token: String = String::new(), env "MANTA_TOKEN", Process;
    /// Whether processes of one host talk over shared-memory rings (else loopback TCP).
    shm_transport: bool = true, env "MANTA_SHM_TRANSPORT", Job;
    /// Whether a read of an object held by another process of this host (same boot and network
    /// namespace, as for `shm_transport`) maps that process's store arena and reads the object
    /// in place, pinned there while read, instead of copying it into this process's store.
    zero_copy_node: bool = true, env "MANTA_ZERO_COPY_NODE", Job;
    /// Whether the processes of a cluster node share one object-store arena that the node's
    /// raylet creates (`object_store_memory` is then the node's, and the raylet's environment
    /// sets it), each allocating in extents the raylet grants it; else each process has an
    /// arena of its own of `object_store_memory` bytes. Read by raylets and by the processes
    /// that join them; a process that cannot reach its raylet's arena keeps its own.
    node_object_store: bool = true, env "MANTA_NODE_OBJECT_STORE", Node;
    /// How long `shutdown` waits for slot threads to finish the task each is running (a task
    /// stuck in user code past it is left running, with a warning; microseconds in the
    /// environment).
    shutdown_timeout: Duration = Duration::from_secs(10), env "MANTA_SHUTDOWN_TIMEOUT_US", Job;
    /// The namespace of this job's actor names (Ray's `ray.init(namespace=...)`): `get_actor`
    /// and `ActorOptions::name` use it unless told another. Empty (the default) is the
    /// cluster's default namespace, shared by every job that sets none. A driver's namespace
    /// is its workers'.
    namespace: String = String::new(), env "MANTA_NAMESPACE", Job;
    /// How many times a task whose worker process dies (killed, crashed, or lost with its
    /// node) is run again on a live worker before `get` reports the death; Ray's default is 3.
    /// A task's own `max_retries` sets this and its panic retries (`max_task_retries`) alike.
    max_task_system_retries: u32 = 3, env "MANTA_MAX_TASK_SYSTEM_RETRIES", Job;
    /// Bytes of task specifications an owner keeps to rebuild lost task outputs (Ray's
    /// `max_lineage_bytes`): a stored result's task is kept, with its arguments, while the
    /// result is referenced. Past this, the oldest are dropped, and a loss of their outputs
    /// fails with `ObjectReconstructionFailedLineageEvicted`. An argument's value counts here
    /// (it is kept alive with the specification).
    max_lineage_bytes: usize = 1 << 30, env "MANTA_MAX_LINEAGE_BYTES", Job;
    /// The delay before the first retry of a task whose worker died, doubled at each further
    /// retry up to one second (microseconds in the environment).
    task_retry_delay: Duration = Duration::from_millis(50), env "MANTA_TASK_RETRY_DELAY_US", Job;
    /// How many workers each hop of an actor group's call forwards it to (`ActorGroup::call`
    /// in a cluster: the caller sends one message, the workers hosting members relay it as a
    /// tree of this fan-out); 0 sends one call per member from the caller instead.
    group_call_fanout: u32 = 2, env "MANTA_GROUP_CALL_FANOUT", Job;
    /// How long a collective operation (`manta::collective`) waits for the other members of
    /// its group, and `Communicator::join` for all of them to join, before it fails naming a
    /// member it still waits for (microseconds in the environment). A member whose process
    /// died or whose communicator was dropped fails the operation sooner, at once.
    collective_timeout: Duration = Duration::from_secs(120), env "MANTA_COLLECTIVE_TIMEOUT_US", Job;
    /// Bytes each member of a shared-memory collective group (threads of one process, or
    /// processes of one node) stages per step; a larger message is processed in chunks of
    /// this size, and the group's segment holds about `2 × members + 1` of them.
    collective_chunk_bytes: usize = 1 << 20, env "MANTA_COLLECTIVE_CHUNK_BYTES", Job;
    /// The backend of new collective groups: `auto` (by topology: threads when every member
    /// is in one process, shared memory when all are on one node, else TCP), `threads`, `shm`
    /// or `tcp` (a backend the topology cannot support is an error at `join`).
    collective_backend: String = "auto".to_owned(), env "MANTA_COLLECTIVE_BACKEND", Job;
    /// A node whose raylet missed this many heartbeats in a row (`heartbeat_interval` ×
    /// this of silence) is declared dead by the GCS, which then tells it so: it stops its
    /// workers and exits (Ray's `health_check_failure_threshold`; the head's value and its
    /// `heartbeat_interval` are the ones that count, so give every node the same interval).
    health_check_failure_threshold: u32 = 10, env "MANTA_HEALTH_CHECK_FAILURE_THRESHOLD", Head;
    /// Whether the head syncs its saved tables (`gcs_tables` in the session directory) to the
    /// disk before it acknowledges a change, so that a crash of the machine, not only of the
    /// head process, loses nothing acknowledged; off, the kernel writes them back when it
    /// likes (faster on a slow disk, for clusters nobody needs back after a crash).
    gcs_sync: bool = true, env "MANTA_GCS_SYNC", Head;
    /// Worker log files a raylet keeps: those of this many latest jobs (and of every job
    /// still running there); older ones are deleted when it starts a worker for a new job.
    worker_log_jobs: usize = 100, env "MANTA_WORKER_LOG_JOBS", Node;
    /// How often a raylet reports to the GCS that it lives, with its free resources; a node
    /// silent for `health_check_failure_threshold` intervals is dead.
    heartbeat_interval: Duration = Duration::from_secs(1), env "MANTA_HEARTBEAT_INTERVAL_US", Node;
    /// How long a raylet, worker or driver that lost its connection to the GCS keeps trying
    /// to rejoin it (the head restarted on the same session: `manta start --head`), with
    /// backoff, before it fails: a raylet stops, a worker exits, a driver's calls that need
    /// the GCS fail. Calls that need the GCS meanwhile wait (within their `call_timeout`).
    gcs_reconnect_timeout: Duration = Duration::from_secs(30), env "MANTA_GCS_RECONNECT_TIMEOUT_US", Node;
    /// How long a request of the cluster's control plane (to the GCS, a raylet or another
    /// process: registering, placing a worker, a listing) waits for its reply before it fails
    /// with a cluster error naming what it waited for.
    call_timeout: Duration = Duration::from_secs(30), env "MANTA_CALL_TIMEOUT_US", Job;
    /// Bytes of object pulls a process has in flight at once (its pull window); more wait in
    /// priority order (`get` before `wait` before task arguments). One pull always may run,
    /// however large.
    pull_window_bytes: u64 = 256 << 20, env "MANTA_PULL_WINDOW_BYTES", Job;
    /// How long a cluster I/O thread spins on an empty shared-memory ring before it parks;
    /// `auto` (the default) is 50 µs on nodes with at least 8 usable cores, else 0.
    shm_spin: Option<Duration> = None, env "MANTA_SHM_SPIN_US", Job;
}

/// 30% of physical memory, as Ray's default object store size.
fn default_object_store_memory() -> usize {
    manta_store::StoreConfig::default().capacity
}

impl Config {
    /// Shorthand for adding one custom resource to [`Config::resources`].
    pub fn resource(mut self, name: &str, amount: f64) -> Self {
        let mut res = self.resources.take().unwrap_or_default();
        res.0.push((name.to_string(), amount));
        self.resources = Some(res);
        self
    }

    /// The CPU count this config resolves to (for examples and tests).
    pub fn get_num_cpus(&self) -> f64 {
        self.num_cpus.unwrap_or_else(default_cpus)
    }
}

impl fmt::Display for CustomResources {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, (name, amount)) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{name}={amount}")?;
        }
        Ok(())
    }
}

impl Resolved {
    /// Whether entry `i` of the catalogue was set rather than defaulted.
    fn is_explicit(&self, i: usize) -> bool {
        self.explicit & (1 << i) != 0
    }

    /// The [`Scope::Job`] entries this configuration set (on the builder or in the
    /// environment), as environment variables: what a driver gives its worker processes.
    pub(crate) fn job_env(&self) -> Vec<(String, String)> {
        let values = self.env_values();
        Config::catalogue()
            .iter()
            .zip(values)
            .enumerate()
            .filter(|(i, (e, _))| e.scope == Scope::Job && self.is_explicit(*i))
            .map(|(_, (e, v))| (e.env.to_owned(), v))
            .collect()
    }
}

/// The environment a driver gives its worker processes: the [`Scope::Job`] entries it set (on
/// its [`Config`] or in its environment), every `MANTA_*` variable of its environment outside
/// the catalogue and not set by raylets (test hooks), and `RUST_LOG`/`RUST_BACKTRACE`. Node,
/// head and process entries are not forwarded: a worker reads those from its raylet.
pub(crate) fn forwarded_env(config: &Resolved) -> Vec<(String, String)> {
    let mut env: Vec<(String, String)> = std::env::vars()
        .filter(|(k, _)| {
            (k.starts_with("MANTA_")
                && !Config::catalogue().iter().any(|e| e.env == k)
                && !vars::SET_BY_RAYLET.contains(&k.as_str()))
                || k == "RUST_LOG"
                || k == "RUST_BACKTRACE"
        })
        .collect();
    env.extend(config.job_env());
    env
}

/// The configuration of this process for code with no runtime at hand (the cluster's I/O
/// paths, a raylet, the GCS): the one [`install`]ed last.
static CURRENT: RwLock<Option<Arc<Resolved>>> = RwLock::new(None);

/// Makes `config` the process's (the runtime at `init`, a raylet or GCS at start).
pub(crate) fn install(config: &Resolved) {
    let mut current = CURRENT.write().unwrap_or_else(|p| p.into_inner());
    *current = Some(Arc::new(config.clone()));
}

/// The process's configuration ([`install`]), else the environment's; a malformed environment
/// gives the defaults here (`init` and `manta start` report it as an error).
pub(crate) fn current() -> Arc<Resolved> {
    if let Some(c) = CURRENT.read().unwrap_or_else(|p| p.into_inner()).as_ref() {
        return c.clone();
    }
    let resolved = Config::default()
        .resolve()
        .or_else(|_| Config::default().resolve_from(|_| None))
        .expect("the defaults resolve");
    Arc::new(resolved)
}

/// The catalogue as a table for a terminal: entry, variable, scope, default, value in this
/// process's environment (`*` marks one set there), meaning; then any unknown `MANTA_*`
/// variable of the environment.
pub fn render_table(resolved: &Resolved) -> String {
    let mut out = String::new();
    let defaults = Resolved::default_values();
    let values = resolved.env_values();
    for (i, e) in Config::catalogue().iter().enumerate() {
        let mark = if resolved.is_explicit(i) { "*" } else { " " };
        let value = if e.name == "token" && !values[i].is_empty() {
            "(hidden)"
        } else {
            &values[i]
        };
        let doc = e.meaning();
        let meaning = doc.split(". ").next().unwrap_or("");
        out.push_str(&format!(
            "{:<26} {:<34} {:<7} default {:<12} {mark} {:<14} {}\n",
            e.name,
            e.env,
            e.scope.name(),
            defaults[i],
            value,
            meaning.trim().trim_end_matches('.'),
        ));
    }
    let unknown = unknown_vars(std::env::vars().map(|(k, _)| k));
    if !unknown.is_empty() {
        out.push_str(&format!(
            "\nunknown MANTA_* variables: {}\n",
            unknown.join(", ")
        ));
    }
    out
}

/// The catalogue as the Markdown of `docs/CONFIG.md` (defaults only: nothing of this host).
pub fn render_markdown() -> String {
    let mut out = String::from(
        "# Configuration\n\n\
         <!-- Generated by `manta config --markdown` from core/src/config.rs; do not edit. -->\n\n\
         Every tunable of Manta is one entry of the catalogue in `core/src/config.rs`: set it on\n\
         `manta::Config` (`Config::default().name(value)`) or in the environment (`MANTA_*`;\n\
         durations in microseconds). The builder wins over the environment, which wins over the\n\
         default. `manta config` prints this table with the values of the current environment.\n\n\
         Scopes: **job**: the driver's value, given to its worker processes; **node**: read by a\n\
         raylet (`manta start`), which sets it for its workers (embedded: the process's own);\n\
         **head**: read by the GCS; **process**: each process's own, never forwarded.\n\n\
         | entry | variable | scope | default | meaning |\n|---|---|---|---|---|\n",
    );
    let defaults = Resolved::default_values();
    for (i, e) in Config::catalogue().iter().enumerate() {
        let doc = e.meaning();
        let default = if defaults[i].is_empty() {
            "(empty)".to_owned()
        } else {
            format!("`{}`", defaults[i])
        };
        out.push_str(&format!(
            "| `{}` | `{}` | {} | {default} | {} |\n",
            e.name,
            e.env,
            e.scope.name(),
            doc.replace('|', "\\|"),
        ));
    }
    out.push_str(
        "\nVariables outside the catalogue (set by Manta for its own processes, or read only by\n\
         its tests); any other `MANTA_*` variable is reported at `init` as unknown:\n\n\
         | variable | meaning |\n|---|---|\n",
    );
    for (name, meaning) in INTERNAL {
        out.push_str(&format!("| `{name}` | {meaning} |\n"));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn builder_beats_default() {
        let r = Config::default().num_cpus(3.0).resolve().unwrap();
        assert_eq!(r.num_cpus, 3.0);
        assert_eq!(r.max_slots, 1024);
    }

    #[test]
    fn custom_resources_parse_and_reject() {
        let r = CustomResources::parse("custom=100, ssd=1.5").unwrap();
        assert_eq!(r.0, vec![("custom".into(), 100.0), ("ssd".into(), 1.5)]);
        assert!(CustomResources::parse("custom").is_err());
        assert!(CustomResources::parse("custom=lots").is_err());
    }

    #[test]
    fn cpu_lists_parse_print_and_reject() {
        let l = CpuList::parse(" 8, 0-3 ,2\n").unwrap();
        assert_eq!(l.0, vec![0, 1, 2, 3, 8]);
        assert_eq!(l.to_string(), "0-3,8");
        assert!(CpuList::parse("").unwrap().is_empty());
        for bad in ["x-", "3-1", "0,,1", "1-", "70000"] {
            let e = CpuList::parse(bad).unwrap_err();
            assert!(e.contains('"'), "{bad}: {e}");
        }
    }

    #[test]
    fn a_bad_cpu_list_in_the_environment_is_a_config_error() {
        let env = |k: &str| (k == "MANTA_CPU_AFFINITY").then(|| "x-".to_string());
        match Config::default().resolve_from(env) {
            Err(Error::Config { key, message }) => {
                assert_eq!(key, "MANTA_CPU_AFFINITY");
                assert!(message.contains("\"x-\""), "{message}");
            }
            other => panic!("expected a config error, got {other:?}"),
        }
        let env = |k: &str| (k == "MANTA_CPU_AFFINITY").then(|| "0-1".to_string());
        let r = Config::default().resolve_from(env).unwrap();
        assert_eq!(r.cpu_affinity, CpuList(vec![0, 1]));
    }

    #[test]
    fn bad_bool_is_an_error() {
        assert!(bool::parse_env("maybe").is_err());
        assert!(bool::parse_env("ON").unwrap());
    }

    #[test]
    fn every_variable_is_named_after_its_entry() {
        for e in Config::catalogue() {
            let mut want = format!("MANTA_{}", e.name.to_ascii_uppercase());
            if e.duration {
                want.push_str("_US");
            }
            assert_eq!(e.env, want, "entry {}", e.name);
        }
    }

    #[test]
    fn values_written_back_read_the_same() {
        let env = |k: &str| match k {
            "MANTA_SHM_SPIN_US" => Some("20".to_string()),
            "MANTA_CPU_AFFINITY" => Some("0-2,5".to_string()),
            "MANTA_RESOURCES" => Some("a=1,b=2.5".to_string()),
            _ => None,
        };
        let r = Config::default().num_cpus(3.5).resolve_from(env).unwrap();
        let values = r.env_values();
        let again = Config::default()
            .resolve_from(|k| {
                let i = Config::catalogue().iter().position(|e| e.env == k)?;
                Some(values[i].clone())
            })
            .unwrap();
        assert_eq!(again.env_values(), values);
        assert_eq!(again.shm_spin, Some(Duration::from_micros(20)));
        assert_eq!(again.num_cpus, 3.5);
    }

    #[test]
    fn a_driver_forwards_the_job_entries_it_set_and_nothing_of_its_node() {
        let env = |k: &str| match k {
            "MANTA_CALL_TIMEOUT_US" => Some("5000000".to_string()),
            "MANTA_OBJECT_STORE_MEMORY" => Some("1000000".to_string()),
            _ => None,
        };
        let r = Config::default()
            .max_inline_object_bytes(1000)
            .num_cpus(2.0)
            .resolve_from(env)
            .unwrap();
        let mut job = r.job_env();
        job.sort();
        assert_eq!(
            job,
            vec![
                ("MANTA_CALL_TIMEOUT_US".to_string(), "5000000".to_string()),
                (
                    "MANTA_MAX_INLINE_OBJECT_BYTES".to_string(),
                    "1000".to_string()
                ),
            ]
        );
    }

    #[test]
    fn unknown_and_renamed_variables_are_reported() {
        let vars = [
            "MANTA_NUM_CPUS",
            "MANTA_NODE_ID",
            "MANTA_TESTING_ANYTHING",
            "MANTA_NUM_CPU",
            "MANTA_SPIN_US",
            "PATH",
        ]
        .map(String::from);
        assert_eq!(
            unknown_vars(vars),
            vec![
                "MANTA_NUM_CPU".to_string(),
                "MANTA_SPIN_US (renamed MANTA_SPIN_BEFORE_PARK_US)".to_string(),
            ]
        );
    }

    #[test]
    fn docs_config_md_is_generated_from_the_catalogue() {
        let on_disk = include_str!("../../docs/CONFIG.md");
        assert!(
            on_disk == render_markdown(),
            "docs/CONFIG.md is stale: run `cargo run --bin manta -- config --markdown > docs/CONFIG.md`"
        );
    }
}
