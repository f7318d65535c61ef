//! Joining a group: members meet in the key-value store and pick a backend by topology.
//!
//! Keys (under `manta.collective/<name>/<world>/`): `<rank>` holds a member's entry
//! (`nonce pid tcp-address host-id`, tab-separated), `shm` rank 0's segment (`pid fd`) when
//! the group uses shared memory across processes. Once every member attached, each member
//! blanks its keys, so a later group may reuse the name without reading stale entries.

use crate::sync::{LazyLock, Mutex, Weak};
use std::collections::HashMap;
use std::time::{Duration, Instant};

use super::hier::HierBackend;
use super::shared::{Choice, Layout, Region, Settings, SharedBackend};
use super::tcp::{TcpBackend, TcpListen};
use super::{Backend, Fault};
use crate::sync::lock;

/// A joined member's backend and its group's nonce.
pub(crate) struct Joined {
    pub(crate) backend: Box<dyn Backend>,
    pub(crate) nonce: u64,
}

struct Entry {
    nonce: u64,
    pid: u32,
    tcp: String,
    host: String,
}

impl Entry {
    fn encode(&self) -> Vec<u8> {
        format!("{}\t{}\t{}\t{}", self.nonce, self.pid, self.tcp, self.host).into_bytes()
    }

    fn decode(raw: &[u8]) -> Option<Entry> {
        let s = std::str::from_utf8(raw).ok()?;
        let mut it = s.splitn(4, '\t');
        Some(Entry {
            nonce: it.next()?.parse().ok()?,
            pid: it.next()?.parse().ok()?,
            tcp: it.next()?.to_owned(),
            host: it.next()?.to_owned(),
        })
    }
}

/// Heap segments of groups whose members are threads of this process, by group nonce.
static THREAD_GROUPS: LazyLock<Mutex<HashMap<u64, Weak<Region>>>> =
    LazyLock::new(|| Mutex::new(HashMap::new()));

/// The token of TCP groups of the embedded runtime, whose members are all in this process.
static PROCESS_TOKEN: LazyLock<String> =
    LazyLock::new(|| format!("{:016x}{:016x}", nonce(), nonce()));

/// A random 64-bit nonce (from the kernel).
fn nonce() -> u64 {
    let mut b = [0u8; 8];
    if std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut b))
        .is_err()
    {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        b = (t ^ (std::process::id() as u64) << 32).to_le_bytes();
    }
    u64::from_le_bytes(b).max(1)
}

fn kv_fault(e: crate::error::Error) -> Fault {
    Fault::Os(format!("the key-value store: {e}"))
}

/// Polls `key` until it holds a non-empty value, or the deadline passes (`rank` is whom it
/// waits for).
fn poll(key: &str, deadline: Instant, start: Instant, rank: usize) -> Result<Vec<u8>, Fault> {
    let mut nap = Duration::from_micros(200);
    loop {
        if let Some(v) = crate::runtime::kv_get(key).map_err(kv_fault)?
            && !v.is_empty()
        {
            return Ok(v);
        }
        let now = Instant::now();
        if now >= deadline {
            return Err(Fault::Timeout {
                rank,
                waited: now - start,
            });
        }
        std::thread::sleep(nap.min(deadline - now));
        nap = (nap * 2).min(Duration::from_millis(20));
    }
}

pub(crate) fn join(
    name: &str,
    rank: usize,
    world: usize,
    settings: &Settings,
    token: Option<String>,
    bind_host: Option<String>,
) -> Result<Joined, Fault> {
    let start = Instant::now();
    let deadline = start + settings.timeout;
    let prefix = format!("manta.collective/{name}/{world}");
    let me = Entry {
        nonce: nonce(),
        pid: std::process::id(),
        tcp: String::new(),
        host: crate::remote::host_id(),
    };
    // A listener unless the group must be threads; its token is the cluster's (embedded: a
    // fresh one, as only this process's members can use it).
    let token = token.unwrap_or_else(|| PROCESS_TOKEN.clone());
    let listen = if settings.choice == Choice::Threads || world == 1 {
        None
    } else {
        Some(TcpListen::bind(
            bind_host.as_deref().unwrap_or("127.0.0.1"),
        )?)
    };
    let me = Entry {
        tcp: listen
            .as_ref()
            .map(|l| l.address().to_owned())
            .unwrap_or_default(),
        ..me
    };
    let my_key = format!("{prefix}/{rank}");
    // A member of an earlier group of this name may not have blanked its entry yet.
    let mut nap = Duration::from_micros(200);
    while crate::runtime::kv_get(&my_key)
        .map_err(kv_fault)?
        .is_some_and(|v| !v.is_empty())
    {
        if Instant::now() >= deadline {
            return Err(Fault::Os(format!(
                "rank {rank} of group {name:?} is still held by a member of an earlier group \
                 that never finished joining"
            )));
        }
        std::thread::sleep(nap);
        nap = (nap * 2).min(Duration::from_millis(20));
    }
    crate::runtime::kv_put(&my_key, &me.encode()).map_err(kv_fault)?;
    let result = (|| {
        let mut entries = Vec::with_capacity(world);
        for r in 0..world {
            if r == rank {
                entries.push(Entry { ..clone_entry(&me) });
                continue;
            }
            let raw = poll(&format!("{prefix}/{r}"), deadline, start, r)?;
            entries.push(Entry::decode(&raw).ok_or_else(|| Fault::Peer {
                rank: r,
                message: format!("rank {r}'s entry in the key-value store is malformed"),
            })?);
        }
        let group_nonce = entries[0].nonce;
        let same_process = entries.iter().all(|e| e.pid == me.pid && e.host == me.host);
        let same_host = entries.iter().all(|e| e.host == me.host);
        let choice = match settings.choice {
            _ if world == 1 => Choice::Threads,
            Choice::Auto if same_process => Choice::Threads,
            Choice::Auto if same_host => Choice::Shm,
            Choice::Auto => Choice::Tcp,
            Choice::Threads if !same_process => {
                return Err(Fault::Os(
                    "collective_backend is threads, but the members are in several processes"
                        .into(),
                ));
            }
            Choice::Shm if !same_host => {
                return Err(Fault::Os(
                    "collective_backend is shm, but the members are on several nodes".into(),
                ));
            }
            other => other,
        };
        let layout = Layout {
            world,
            chunk: settings.chunk,
        };
        let backend: Box<dyn Backend> = match choice {
            Choice::Threads | Choice::Auto => {
                let region = {
                    let mut groups = lock(&THREAD_GROUPS);
                    groups.retain(|_, w| w.strong_count() > 0);
                    match groups.get(&group_nonce).and_then(Weak::upgrade) {
                        Some(r) => r,
                        None => {
                            let r = crate::sync::Arc::new(Region::heap(layout, group_nonce)?);
                            groups.insert(group_nonce, crate::sync::Arc::downgrade(&r));
                            r
                        }
                    }
                };
                Box::new(SharedBackend::new(region, rank, None, settings.timeout))
            }
            Choice::Shm => {
                let all: Vec<usize> = (0..world).collect();
                let pids = entries.iter().map(|e| e.pid).collect();
                let seg = Segment {
                    key: format!("{prefix}/shm"),
                    members: &all,
                    pids,
                    nonce: group_nonce,
                    deadline,
                    start,
                };
                Box::new(seg.join(rank, settings)?)
            }
            Choice::Tcp => {
                let listen = listen.ok_or_else(|| Fault::Os("no TCP listener".into()))?;
                let addrs: Vec<String> = entries.iter().map(|e| e.tcp.clone()).collect();
                let tcp = TcpBackend::connect(
                    listen,
                    rank,
                    &addrs,
                    group_nonce,
                    token.as_bytes(),
                    deadline,
                    settings,
                )?;
                // Several nodes, some with several members: hierarchical (by topology only).
                let local: Vec<usize> =
                    (0..world).filter(|&r| entries[r].host == me.host).collect();
                let mut leaders: Vec<usize> = (0..world)
                    .filter(|&r| (0..r).all(|q| entries[q].host != entries[r].host))
                    .collect();
                leaders.sort_unstable();
                if settings.choice == Choice::Auto && leaders.len() > 1 && leaders.len() < world {
                    let seg = Segment {
                        key: format!("{prefix}/shm{}", local[0]),
                        members: &local,
                        pids: local.iter().map(|&r| entries[r].pid).collect(),
                        nonce: group_nonce ^ local[0] as u64,
                        deadline,
                        start,
                    };
                    let shared = seg.join(rank, settings)?;
                    let leader_of: Vec<usize> = (0..world)
                        .map(|r| {
                            (0..=r)
                                .find(|&q| entries[q].host == entries[r].host)
                                .unwrap_or(r)
                        })
                        .collect();
                    Box::new(HierBackend::new(
                        shared, tcp, rank, leaders, local, leader_of,
                    ))
                } else {
                    Box::new(tcp)
                }
            }
        };
        Ok((backend, group_nonce))
    })();
    let (mut backend, group_nonce) = match result {
        Ok(x) => x,
        Err(f) => {
            let _ = crate::runtime::kv_put(&my_key, b"");
            return Err(f);
        }
    };
    // Every member read every entry once this barrier passes.
    let done = backend.barrier(&super::Header::barrier());
    let _ = crate::runtime::kv_put(&my_key, b"");
    done?;
    Ok(Joined {
        backend,
        nonce: group_nonce,
    })
}

/// The shared segment of some members of a group (all of them, or one node's): its first
/// member creates it and publishes it under `key`; the others map it.
struct Segment<'a> {
    key: String,
    /// The members' group ranks, ascending.
    members: &'a [usize],
    pids: Vec<u32>,
    nonce: u64,
    deadline: Instant,
    start: Instant,
}

impl Segment<'_> {
    fn join(self, rank: usize, settings: &Settings) -> Result<SharedBackend, Fault> {
        let creator = self.members[0];
        let index = self
            .members
            .iter()
            .position(|&r| r == rank)
            .ok_or_else(|| Fault::Os("a segment of members that exclude this one".into()))?;
        let layout = Layout {
            world: self.members.len(),
            chunk: settings.chunk,
        };
        let (region, fd) = if index == 0 {
            let (region, fd) = Region::create_memfd(layout, self.nonce)?;
            let entry = format!("{} {fd}", std::process::id());
            crate::runtime::kv_put(&self.key, entry.as_bytes()).map_err(kv_fault)?;
            (region, Some(fd))
        } else {
            let raw = poll(&self.key, self.deadline, self.start, creator)?;
            let text = String::from_utf8_lossy(&raw);
            let (pid, fd) = text
                .split_once(' ')
                .and_then(|(p, f)| Some((p.parse().ok()?, f.parse().ok()?)))
                .ok_or_else(|| Fault::Peer {
                    rank: creator,
                    message: format!("rank {creator}'s segment entry is malformed"),
                })?;
            let region = Region::attach(pid, fd, layout, self.nonce).map_err(|f| match f {
                Fault::Peer { message, .. } => Fault::Peer {
                    rank: creator,
                    message,
                },
                other => other,
            })?;
            (region, None)
        };
        let mut b = SharedBackend::named(
            crate::sync::Arc::new(region),
            index,
            Some(self.pids),
            settings.timeout,
            self.members.to_vec(),
        );
        // Every member mapped the segment once this barrier passes.
        let done = b.barrier(&super::Header::barrier());
        if let Some(fd) = fd {
            // SAFETY: our own descriptor, closed once (the mappings keep the memory).
            unsafe { libc::close(fd) };
            crate::runtime::kv_put(&self.key, b"").map_err(kv_fault)?;
        }
        done?;
        Ok(b)
    }
}

fn clone_entry(e: &Entry) -> Entry {
    Entry {
        nonce: e.nonce,
        pid: e.pid,
        tcp: e.tcp.clone(),
        host: e.host.clone(),
    }
}
