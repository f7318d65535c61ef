//! Multi-host test harness: each "host" is a network namespace with its own IPv4 address,
//! all joined by one bridge in the root namespace.
//!
//! ```text
//!   root ns:  bridge mbr<pid:06x>  10.a.b.254/24
//!               ├─ veth mv<pid:06x>-0  ⇄  eth0 in manta-<pid>-0  10.a.b.1/24
//!               ├─ veth mv<pid:06x>-1  ⇄  eth0 in manta-<pid>-1  10.a.b.2/24
//!               └─ ...
//! ```
//!
//! The subnet `10.a.b.0/24` is derived from the test process's pid (and skips any subnet a
//! route on this machine already covers), so parallel test processes don't collide. The
//! bridge's own address lets the root namespace (a head running outside) reach every host.
//!
//! Needs root (CAP_NET_ADMIN) and `ip` from iproute2; without them [`Hosts::create`] returns
//! `Err` with the reason, and the test prints `skipped: ...` and returns.
//!
//! Found by hand while writing this (kernel 6.18, iproute2 6.1):
//! - Every link starts down: the bridge, both veth ends and each namespace's `lo` need
//!   `ip link set ... up` (a namespace's loopback is down, so even 127.0.0.1 fails without it).
//!   With STP off (the default) a bridge port forwards as soon as it is up; no wait needed.
//! - br_netfilter is loaded on many hosts (`net.bridge.bridge-nf-call-iptables = 1` here):
//!   then bridged IPv4 between two namespaces passes the root namespace's iptables FORWARD
//!   chain, and a Docker host's `-P FORWARD DROP` silently drops it (connects time out).
//!   The per-bridge `nf_call_iptables 0` option cannot turn it off while the global sysctl
//!   is 1, so where `iptables` exists we insert `FORWARD -i <bridge> -o <bridge> -j ACCEPT`
//!   and delete it on drop. (This machine has no iptables binary and no rules.)
//! - `ip netns del` only unmounts the name: a process still inside keeps the namespace, and
//!   with it the veth pair and its address, alive. Deleting the root-side veth end removes
//!   both ends at once, so drop deletes the veths first, then the namespaces, then the bridge.
//! - Interface names are at most 15 bytes (IFNAMSIZ - 1); `ip link add` fails beyond that.
//!   The veth peer is created directly inside the namespace (`peer name eth0 netns <ns>`),
//!   so there is no window where it sits in the root namespace under a colliding name.
//! - No `ping` here; connectivity was checked with TCP connects between namespaces.
//! - IPv6 DAD leaves link-local addresses "tentative" for a moment; IPv4 is unaffected.

#![allow(dead_code)] // not every test uses every helper

use std::ffi::OsStr;
use std::net::Ipv4Addr;
use std::path::Path;
use std::process::{Command, Output, Stdio};

/// One emulated host: a network namespace with one address on the shared bridge.
#[derive(Debug)]
pub(crate) struct Host {
    netns: String,
    veth: String,
    ip: Ipv4Addr,
}

impl Host {
    /// This host's address (on `eth0` inside its namespace).
    pub(crate) fn ip(&self) -> Ipv4Addr {
        self.ip
    }

    /// The network namespace's name (`manta-<pid>-<i>`).
    pub(crate) fn netns(&self) -> &str {
        &self.netns
    }
}

/// `n` emulated hosts on one bridge; everything created is deleted on drop.
#[derive(Debug)]
pub(crate) struct Hosts {
    pid: u32,
    bridge: Option<String>,
    bridge_ip: Ipv4Addr,
    forward_rule: bool,
    hosts: Vec<Host>,
}

/// The prefix of this harness's namespace names.
const NETNS_PREFIX: &str = "manta-";
/// The prefix of this harness's bridge names (then the pid as 6 hex digits).
const BRIDGE_PREFIX: &str = "mbr";
/// The prefix of this harness's root-side veth names (then the pid as 6 hex digits, `-<i>`).
const VETH_PREFIX: &str = "mv";

impl Hosts {
    /// Creates `n` hosts (namespaces `manta-<pid>-<i>` at `10.a.b.<i+1>/24`) on a new bridge
    /// at `10.a.b.254/24`. Removes stale leftovers of dead test processes first.
    ///
    /// Returns `Err` (never panics) when not root, `ip` is missing, or a step fails; whatever
    /// was created before the failure is deleted again.
    pub(crate) fn create(n: usize) -> Result<Hosts, String> {
        if !(1..=253).contains(&n) {
            return Err(format!("netns: {n} hosts asked for, 1 to 253 fit a /24"));
        }
        // SAFETY: geteuid has no preconditions and cannot fail.
        let euid = unsafe { libc::geteuid() };
        if euid != 0 {
            return Err(format!(
                "netns: needs root for network namespaces (euid {euid})"
            ));
        }
        match Command::new("ip").arg("-V").output() {
            Ok(o) if o.status.success() => {}
            Ok(o) => return Err(format!("netns: `ip -V` failed: {}", stderr(&o))),
            Err(e) => return Err(format!("netns: `ip` (iproute2) not runnable: {e}")),
        }
        Hosts::cleanup_stale();

        let pid = std::process::id();
        let [a, b] = free_subnet(pid)?;
        let mut hosts = Hosts {
            pid,
            bridge: None,
            bridge_ip: Ipv4Addr::new(10, a, b, 254),
            forward_rule: false,
            hosts: Vec::with_capacity(n),
        };
        // On any error `hosts` drops here and deletes what was made so far.
        let bridge = format!("{BRIDGE_PREFIX}{pid:06x}");
        ip(&["link", "add", &bridge, "type", "bridge"])?;
        hosts.bridge = Some(bridge.clone());
        ip(&[
            "addr",
            "add",
            &format!("{}/24", hosts.bridge_ip),
            "dev",
            &bridge,
        ])?;
        ip(&["link", "set", &bridge, "up"])?;
        hosts.forward_rule = allow_bridged_forwarding(&bridge);

        for i in 0..n {
            let netns = format!("{NETNS_PREFIX}{pid}-{i}");
            let veth = format!("{VETH_PREFIX}{pid:06x}-{i}");
            ip(&["netns", "add", &netns])?;
            hosts.hosts.push(Host {
                netns: netns.clone(),
                veth: veth.clone(),
                ip: Ipv4Addr::new(10, a, b, i as u8 + 1),
            });
            let addr = format!("{}/24", hosts.hosts[i].ip);
            ip(&[
                "link", "add", &veth, "type", "veth", "peer", "name", "eth0", "netns", &netns,
            ])?;
            ip(&["link", "set", &veth, "master", &bridge, "up"])?;
            ip(&["-n", &netns, "link", "set", "lo", "up"])?;
            ip(&["-n", &netns, "addr", "add", &addr, "dev", "eth0"])?;
            ip(&["-n", &netns, "link", "set", "eth0", "up"])?;
        }
        Ok(hosts)
    }

    /// How many hosts there are.
    pub(crate) fn len(&self) -> usize {
        self.hosts.len()
    }

    /// Whether there are no hosts (never, once created).
    pub(crate) fn is_empty(&self) -> bool {
        self.hosts.is_empty()
    }

    /// Host `i`.
    pub(crate) fn host(&self, i: usize) -> &Host {
        &self.hosts[i]
    }

    /// The bridge's address in the root namespace (`10.a.b.254`): what the hosts reach the
    /// root namespace at, e.g. a head running outside the namespaces.
    pub(crate) fn bridge_ip(&self) -> Ipv4Addr {
        self.bridge_ip
    }

    /// A command running `program` inside host `i`'s namespace
    /// (`ip netns exec manta-<pid>-<i> program ...`); add arguments, env and stdio as usual.
    ///
    /// Whoever spawns it owns the child; as a backstop drop kills the processes left in the
    /// namespaces that descend from this process.
    pub(crate) fn command(&self, i: usize, program: impl AsRef<OsStr>) -> Command {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.hosts[i].netns])
            .arg(program);
        cmd
    }

    /// Deletes leftovers of test processes that are gone (killed before their drop ran):
    /// namespaces `manta-<pid>-*`, bridges `mbr<pid>`, veths `mv<pid>-*` and their FORWARD
    /// rules, where no process `<pid>` exists. Best effort; returns what it deleted.
    pub(crate) fn cleanup_stale() -> Vec<String> {
        let mut removed = Vec::new();
        if let Ok(o) = Command::new("ip").args(["-o", "link", "show"]).output() {
            for line in String::from_utf8_lossy(&o.stdout).lines() {
                // "12: mv0012ab-0@if11: <...>" or "9: mbr0012ab: <...>"
                let Some(name) = line.split(": ").nth(1) else {
                    continue;
                };
                let name = name.split('@').next().unwrap_or(name);
                let Some(pid) = link_pid(name) else { continue };
                if !alive(pid) && ip(&["link", "del", name]).is_ok() {
                    if name.starts_with(BRIDGE_PREFIX) {
                        remove_forward_rule(name);
                    }
                    removed.push(name.to_string());
                }
            }
        }
        if let Ok(o) = Command::new("ip").args(["netns", "list"]).output() {
            for line in String::from_utf8_lossy(&o.stdout).lines() {
                let name = line.split_whitespace().next().unwrap_or("");
                let Some(pid) = netns_pid(name) else { continue };
                if !alive(pid) && ip(&["netns", "del", name]).is_ok() {
                    removed.push(name.to_string());
                }
            }
        }
        removed
    }
}

impl std::ops::Index<usize> for Hosts {
    type Output = Host;

    fn index(&self, i: usize) -> &Host {
        &self.hosts[i]
    }
}

impl Drop for Hosts {
    fn drop(&mut self) {
        // Processes of ours still inside would keep a namespace alive: kill them (only
        // descendants of this process; anything else is left alone).
        for h in &self.hosts {
            kill_descendants_in(&h.netns, self.pid);
        }
        // Best effort throughout: report, never panic in drop.
        let mut failed = Vec::new();
        for h in &self.hosts {
            if let Err(e) = ip(&["link", "del", &h.veth]) {
                // Gone already if the namespace went first; only report if it's still there.
                if ip(&["link", "show", &h.veth]).is_ok() {
                    failed.push(e);
                }
            }
            if let Err(e) = ip(&["netns", "del", &h.netns]) {
                failed.push(e);
            }
        }
        if let Some(bridge) = &self.bridge {
            if let Err(e) = ip(&["link", "del", bridge]) {
                failed.push(e);
            }
            if self.forward_rule {
                remove_forward_rule(bridge);
            }
        }
        for e in failed {
            eprintln!("netns cleanup: {e}");
        }
    }
}

/// Runs `ip args...`; `Err` carries the command line and its stderr.
fn ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("ip {}: {e}", args.join(" ")))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!("ip {}: {}", args.join(" "), stderr(&out)))
    }
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).trim().to_string()
}

/// A `10.a.b.0/24` derived from `pid` that no route here overlaps.
fn free_subnet(pid: u32) -> Result<[u8; 2], String> {
    // Second octet 128..=227 (clear of the low 10.x ranges Docker and others tend to use),
    // third octet 1..=254.
    const SPAN: u32 = 100 * 254;
    let routes = Command::new("ip")
        .args(["-4", "-o", "route", "show", "table", "all"])
        .output()
        .map_err(|e| format!("ip route: {e}"))?;
    let taken: Vec<(u32, u32)> = String::from_utf8_lossy(&routes.stdout)
        .lines()
        .filter_map(|l| {
            // "10.1.2.0/24 dev ...", "local 10.1.2.3 dev ...", "broadcast ...", "default ..."
            let mut words = l.split_whitespace();
            let mut dst = words.next()?;
            if matches!(
                dst,
                "local" | "broadcast" | "unicast" | "multicast" | "anycast"
            ) {
                dst = words.next()?;
            }
            let (addr, len) = dst.split_once('/').unwrap_or((dst, "32"));
            Some((u32::from(addr.parse::<Ipv4Addr>().ok()?), len.parse().ok()?))
        })
        .collect();
    for k in 0..SPAN {
        let idx = (pid + k) % SPAN;
        let (a, b) = (128 + idx / 254, 1 + idx % 254);
        let net = u32::from(Ipv4Addr::new(10, a as u8, b as u8, 0));
        let overlaps = taken.iter().any(|&(addr, len)| {
            let len = len.min(24);
            let mask = if len == 0 { 0 } else { u32::MAX << (32 - len) };
            addr & mask == net & mask
        });
        if !overlaps {
            return Ok([a as u8, b as u8]);
        }
    }
    Err("netns: no free 10.x.y.0/24 subnet".into())
}

/// The pid in a link name of this harness (`mbr<6 hex>`, `mv<6 hex>-<i>`).
fn link_pid(name: &str) -> Option<u32> {
    let hex = if let Some(rest) = name.strip_prefix(BRIDGE_PREFIX) {
        rest
    } else {
        let (head, i) = name.strip_prefix(VETH_PREFIX)?.split_once('-')?;
        i.parse::<usize>().ok()?;
        head
    };
    if hex.len() != 6 || !hex.bytes().all(|c| c.is_ascii_hexdigit()) {
        return None;
    }
    u32::from_str_radix(hex, 16).ok().filter(|&p| p > 1)
}

/// The pid in a namespace name of this harness (`manta-<pid>-<i>`).
fn netns_pid(name: &str) -> Option<u32> {
    let (pid, i) = name.strip_prefix(NETNS_PREFIX)?.split_once('-')?;
    i.parse::<usize>().ok()?;
    pid.parse().ok().filter(|&p| p > 1)
}

fn alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// The parent of `pid`, from `/proc/<pid>/stat`.
fn parent(pid: u32) -> Option<u32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // "pid (comm) state ppid ..."; comm may hold spaces and parentheses.
    let after = &stat[stat.rfind(')')? + 1..];
    after.split_whitespace().nth(1)?.parse().ok()
}

/// SIGKILLs the processes in `netns` that descend from `ancestor`.
fn kill_descendants_in(netns: &str, ancestor: u32) {
    let Ok(o) = Command::new("ip").args(["netns", "pids", netns]).output() else {
        return;
    };
    for pid in String::from_utf8_lossy(&o.stdout)
        .split_whitespace()
        .filter_map(|p| p.parse::<u32>().ok())
    {
        let mut p = pid;
        let ours = loop {
            match parent(p) {
                Some(pp) if pp == ancestor => break true,
                Some(pp) if pp > 1 => p = pp,
                _ => break false,
            }
        };
        if ours {
            // SAFETY: kill has no memory-safety preconditions. `pid` was a descendant of
            // ours a moment ago; only if it exited and its pid was reused in that window
            // could the signal reach another process, a risk a test harness accepts.
            unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
        }
    }
}

/// Where br_netfilter hands bridged IPv4 to iptables and `iptables` exists, accepts
/// forwarding within `bridge` (a Docker host's FORWARD policy is DROP). Whether it did.
fn allow_bridged_forwarding(bridge: &str) -> bool {
    let nf = std::fs::read_to_string("/proc/sys/net/bridge/bridge-nf-call-iptables");
    if nf.map(|s| s.trim() != "1").unwrap_or(true) {
        return false;
    }
    Command::new("iptables")
        .args([
            "-w", "-I", "FORWARD", "-i", bridge, "-o", bridge, "-j", "ACCEPT",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn remove_forward_rule(bridge: &str) {
    let _ = Command::new("iptables")
        .args([
            "-w", "-D", "FORWARD", "-i", bridge, "-o", bridge, "-j", "ACCEPT",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}
