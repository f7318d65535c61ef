//! The configuration catalogue: every tunable of the runtime, declared once.
//!
//! Each entry names its field, type, default, `MANTA_*` environment override and a doc line,
//! in the manner of Ray's `ray_config_def.h`. Nothing else in Manta hard-codes a tunable:
//! code reads it from the [`Config`] value the runtime was started with.
//!
//! Precedence: a value set on the [`Config`] builder wins over the environment, which wins over
//! the default. A malformed environment value is an error at `init`, never silently ignored.

use std::fmt;
use std::time::Duration;

use crate::error::Error;

/// A value that can be read from a `MANTA_*` environment variable.
trait FromEnv: Sized {
    fn parse_env(raw: &str) -> Result<Self, String>;
}

macro_rules! from_env_via_fromstr {
    ($($t:ty),*) => {$(
        impl FromEnv for $t {
            fn parse_env(raw: &str) -> Result<Self, String> {
                raw.trim().parse::<$t>().map_err(|e| e.to_string())
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
}

impl FromEnv for Duration {
    fn parse_env(raw: &str) -> Result<Self, String> {
        let micros = raw.trim().parse::<u64>().map_err(|e| e.to_string())?;
        Ok(Duration::from_micros(micros))
    }
}

impl FromEnv for String {
    fn parse_env(raw: &str) -> Result<Self, String> {
        Ok(raw.to_string())
    }
}

impl FromEnv for CpuList {
    fn parse_env(raw: &str) -> Result<Self, String> {
        CpuList::parse(raw)
    }
}

impl FromEnv for CustomResources {
    fn parse_env(raw: &str) -> Result<Self, String> {
        CustomResources::parse(raw)
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

macro_rules! catalogue {
    ($(
        $(#[doc = $doc:literal])+
        $field:ident : $ty:ty = $default:expr, env $env:literal;
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
                Ok(Resolved {
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

            /// Every entry of the catalogue as `(env var, doc)`, for `manta config --help`-style listings.
            pub fn catalogue() -> &'static [(&'static str, &'static str)] {
                &[ $( ($env, concat!($($doc),+)) ),* ]
            }
        }

        /// A [`Config`] with every entry resolved to a value.
        #[derive(Clone, Debug)]
        pub struct Resolved {
            $( $(#[doc = $doc])+ pub $field: $ty, )*
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
    num_cpus: f64 = default_cpus(), env "MANTA_NUM_CPUS";
    /// GPUs this node offers (default 0; GPU discovery arrives with the `gpu` crate).
    num_gpus: f64 = 0.0, env "MANTA_NUM_GPUS";
    /// Custom resources this node offers, `name=amount,…`.
    resources: CustomResources = CustomResources::default(), env "MANTA_RESOURCES";
    /// Worker slots (threads) started with the runtime; 0 means one per whole CPU, at least 1.
    num_slots: usize = 0, env "MANTA_NUM_SLOTS";
    /// CPUs the slot threads pin themselves to, in the kernel's list notation (`0-3,8`): slot
    /// `i` runs on the `i`-th CPU of the list, round-robin. Empty (the default) pins nothing.
    /// The launcher sets it for the workers it starts (the node's or the rank's CPUs); a
    /// failed pin is a warning, not an error.
    cpu_affinity: CpuList = CpuList::default(), env "MANTA_CPU_AFFINITY";
    /// Upper bound on slot threads, reached only when slots block in `get` inside tasks.
    max_slots: usize = 1024, env "MANTA_MAX_SLOTS";
    /// How long an idle slot, or a caller waiting in `get`, spins before it parks (microseconds).
    spin_before_park: Duration = Duration::from_micros(100), env "MANTA_SPIN_US";
    /// Whether a `get` (without timeout) that finds its task still queued runs it on the caller.
    inline_get: bool = true, env "MANTA_INLINE_GET";
    /// How many times a task whose body panics is run again before `get` reports the panic.
    max_task_retries: u32 = 0, env "MANTA_TASK_MAX_RETRIES";
    /// Values whose encoding is at most this many bytes travel inline in task messages.
    max_inline_object_bytes: usize = 100 * 1024, env "MANTA_MAX_INLINE_OBJECT_BYTES";
    /// In a cluster, at most this many bytes of a task's arguments travel inline in its
    /// message (Ray's `task_rpc_inlined_bytes_limit`); the rest are held by the caller and
    /// pulled by the executor, so a task message always fits in one transport frame (4 MiB).
    max_inline_args_bytes: usize = 2 << 20, env "MANTA_MAX_INLINE_ARGS_BYTES";
    /// Size of the node's shared-memory object store in bytes (default: 30% of physical memory,
    /// as Ray's). Objects larger than `max_inline_object_bytes` live there.
    object_store_memory: usize = default_object_store_memory(), env "MANTA_OBJECT_STORE_MEMORY";
    /// Whether to touch every page of the object store at `init`, so that no put pays
    /// first-touch page faults (slow start and resident memory for faster first puts).
    object_store_prefault: bool = false, env "MANTA_OBJECT_STORE_PREFAULT";
    /// Whether to back the object store with huge pages when the node's pool has enough free
    /// ones: 1 GiB pages when the store is large enough (its size rounded down to whole GiB keeps
    /// 7/8 of it), else 2 MiB pages (else 4 KiB pages with transparent huge pages advised, as
    /// when this is false).
    object_store_huge_pages: bool = true, env "MANTA_OBJECT_STORE_HUGE_PAGES";
    /// NUMA nodes to split the object store's arena across (a node list like `0-1`), one span
    /// bound to each; empty (the default) means every NUMA node of the machine with the
    /// `hwloc` feature, else one unplaced span. The launcher sets it to the NUMA nodes of the
    /// CPUs the node's (or rank's) workers run on.
    object_store_numa_nodes: CpuList = CpuList::default(), env "MANTA_OBJECT_STORE_NUMA_NODES";
    /// Fraction of the object store in use above which unpinned objects are spilled to disk.
    object_spilling_threshold: f64 = 0.8, env "MANTA_OBJECT_SPILLING_THRESHOLD";
    /// Directory for spill files (unlinked from birth: nothing is left there); empty means
    /// the system's temporary directory.
    object_spilling_directory: String = String::new(), env "MANTA_OBJECT_SPILLING_DIRECTORY";
    /// How long a put (or a task result) waits for room in a full object store before failing
    /// with `ObjectStoreFull` (microseconds in the environment).
    object_store_put_timeout: Duration = Duration::from_secs(10), env "MANTA_OBJECT_STORE_PUT_TIMEOUT_US";
    /// The GCS (`host:port`) of a running cluster to join; empty runs the embedded single-node
    /// runtime. A driver that joins runs no tasks itself: its tasks and actors go to worker
    /// processes the cluster's raylets start from this same binary.
    address: String = String::new(), env "MANTA_ADDRESS";
    /// The cluster's token (printed by `manta start --head`); empty means the one in the
    /// session directory of the cluster at `address`, if this host has it.
    token: String = String::new(), env "MANTA_TOKEN";
    /// Whether processes of one host talk over shared-memory rings (else loopback TCP).
    shm_transport: bool = true, env "MANTA_SHM_TRANSPORT";
    /// Whether a read of an object held by another process of this host (same boot and network
    /// namespace, as for `shm_transport`) maps that process's store arena and reads the object
    /// in place, pinned there while read, instead of copying it into this process's store.
    zero_copy_node: bool = true, env "MANTA_ZERO_COPY_NODE";
    /// Whether the processes of a cluster node share one object-store arena that the node's
    /// raylet creates (`object_store_memory` is then the node's, and the raylet's environment
    /// sets it), each allocating in extents the raylet grants it; else each process has an
    /// arena of its own of `object_store_memory` bytes. Read by raylets and by the processes
    /// that join them; a process that cannot reach its raylet's arena keeps its own.
    node_object_store: bool = true, env "MANTA_NODE_OBJECT_STORE";
    /// How long `shutdown` waits for slot threads to finish the task each is running (a task
    /// stuck in user code past it is left running, with a warning; microseconds in the
    /// environment).
    shutdown_timeout: Duration = Duration::from_secs(10), env "MANTA_SHUTDOWN_TIMEOUT_US";
    /// The namespace of this job's actor names (Ray's `ray.init(namespace=...)`): `get_actor`
    /// and `ActorOptions::name` use it unless told another. Empty (the default) is the
    /// cluster's default namespace, shared by every job that sets none. A driver's namespace
    /// is its workers'.
    namespace: String = String::new(), env "MANTA_NAMESPACE";
    /// How many times a task whose worker process dies (killed, crashed, or lost with its
    /// node) is run again on a live worker before `get` reports the death; Ray's default is 3.
    /// A task's own `max_retries` sets this and its panic retries (`max_task_retries`) alike.
    max_task_system_retries: u32 = 3, env "MANTA_TASK_SYSTEM_RETRIES";
    /// The delay before the first retry of a task whose worker died, doubled at each further
    /// retry up to one second (microseconds in the environment).
    task_retry_delay: Duration = Duration::from_millis(50), env "MANTA_TASK_RETRY_DELAY_US";
    /// How long a collective operation (`manta::collective`) waits for the other members of
    /// its group, and `Communicator::join` for all of them to join, before it fails naming a
    /// member it still waits for (microseconds in the environment). A member whose process
    /// died or whose communicator was dropped fails the operation sooner, at once.
    collective_timeout: Duration = Duration::from_secs(120), env "MANTA_COLLECTIVE_TIMEOUT_US";
    /// Bytes each member of a shared-memory collective group (threads of one process, or
    /// processes of one node) stages per step; a larger message is processed in chunks of
    /// this size, and the group's segment holds about `2 × members + 1` of them.
    collective_chunk_bytes: usize = 4 << 20, env "MANTA_COLLECTIVE_CHUNK_BYTES";
    /// The backend of new collective groups: `auto` (by topology: threads when every member
    /// is in one process, shared memory when all are on one node, else TCP), `threads`, `shm`
    /// or `tcp` (a backend the topology cannot support is an error at `join`).
    collective_backend: String = "auto".to_owned(), env "MANTA_COLLECTIVE_BACKEND";
    /// A node whose raylet sent no heartbeat for this long is declared dead by the GCS, which
    /// then tells it so: it stops its workers and exits (microseconds in the environment; the
    /// head's is the one that counts). Raylets heartbeat every second.
    node_timeout: Duration = Duration::from_secs(10), env "MANTA_NODE_TIMEOUT_US";
    /// Worker log files a raylet keeps: those of this many latest jobs (and of every job
    /// still running there); older ones are deleted when it starts a worker for a new job.
    worker_log_jobs: usize = 100, env "MANTA_WORKER_LOG_JOBS";
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
}
