//! Which GPUs a task or actor holds: Ray's GPU instances.
//!
//! The node's `GPU` counter (in [`NodeResources`](crate::resources::NodeResources)) says how
//! much GPU is free; this table says which devices. A request of `n ≥ 1` GPUs (whole, as the
//! request's validation demands) takes `n` devices nobody holds any of; a fraction takes part
//! of one device, the fullest one it fits on (best fit, so whole devices stay free for whole
//! requests). A request admitted by the counter that no device fits (fractions spread over
//! every device) is refused as a whole and waits, as Ray's instance accounting does.
//!
//! Devices are numbered as the process sees them: CUDA's ordinals after the
//! `CUDA_VISIBLE_DEVICES` the raylet or the launcher set for it, so `gpu_ids()[0]` is what
//! `manta_gpu::Gpu::open` takes. Only GPU requests touch the table (a mutex: GPU tasks are
//! few and long); CPU tasks never read it.

use std::cell::Cell;

use crate::sync::{AtomicU64, Mutex, Ordering, lock};

/// Thousandths of a device (`1.0 GPU = 1000`), as the resource counters count.
const WHOLE: i64 = 1000;

/// A grant being acquired: taken by [`GpuGrant::reserve`], replaced by the devices' mask.
const RESERVED: u64 = 1 << 63;

/// The devices one demand holds while acquired: bit `i` is device `i`.
///
/// The scheduler may try to acquire one task's demand on two threads at once (a slot, and a
/// waiter that would run it inline); only one of them then claims the task. Counters tolerate
/// that (the loser gives back), but a demand has one grant, so its acquisition is reserved
/// first: the second thread finds the grant taken and fails before it touches any counter, and
/// so can neither replace the first's devices (leaking them) nor hold counters another task
/// needs meanwhile.
#[derive(Debug, Default)]
pub(crate) struct GpuGrant(AtomicU64, AtomicU64);

impl GpuGrant {
    /// The devices held, as a bit mask (0 while not held or being acquired).
    pub(crate) fn mask(&self) -> u64 {
        let m = self.0.load(Ordering::Acquire);
        if m == RESERVED { 0 } else { m }
    }

    /// Takes the grant for one acquisition; false if it is held or being acquired.
    pub(crate) fn reserve(&self) -> bool {
        self.0
            .compare_exchange(0, RESERVED, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }

    /// Asks for exactly the devices of `mask` when a whole-device request is acquired, if they
    /// are all wholly free then (else the usual choice): a placement group's carve, whose
    /// devices were chosen by topology.
    pub(crate) fn prefer(&self, mask: u64) {
        self.1.store(mask & !RESERVED, Ordering::Relaxed);
    }

    /// Gives up a reservation whose acquisition failed.
    pub(crate) fn unreserve(&self) {
        let _ = self
            .0
            .compare_exchange(RESERVED, 0, Ordering::AcqRel, Ordering::Acquire);
    }
}

/// The node's devices and what is free of each.
#[derive(Debug)]
pub(crate) struct GpuInstances {
    free: Mutex<Vec<i64>>,
}

impl GpuInstances {
    /// A table of `ceil(total)` devices for a node with `total` thousandths of GPU (the last
    /// holds the remainder of a fractional total); `None` for no GPU, or more than 63 devices
    /// (the grant's mask, less its reserved bit), which then count without ids.
    pub(crate) fn new(total: i64) -> Option<Self> {
        let devices = (total + WHOLE - 1) / WHOLE;
        if devices <= 0 || devices > 63 {
            return None;
        }
        let free = (0..devices)
            .map(|d| (total - d * WHOLE).min(WHOLE))
            .collect();
        Some(GpuInstances {
            free: Mutex::new(free),
        })
    }

    /// Takes devices for `amount` thousandths into `grant`, which the caller reserved
    /// ([`GpuGrant::reserve`]); false (nothing taken, the reservation kept) when no set of
    /// devices fits.
    pub(crate) fn acquire(&self, amount: i64, grant: &GpuGrant) -> bool {
        let mut free = lock(&self.free);
        debug_assert_eq!(grant.0.load(Ordering::Acquire), RESERVED);
        let mut mask = 0u64;
        if amount >= WHOLE {
            let want = (amount / WHOLE) as usize;
            let whole: Vec<usize> = (0..free.len()).filter(|&d| free[d] == WHOLE).collect();
            if whole.len() < want {
                return false;
            }
            let preferred = grant.1.load(Ordering::Relaxed);
            let chosen: Vec<usize> = whole
                .iter()
                .copied()
                .filter(|d| preferred & (1 << d) != 0)
                .collect();
            let whole = if chosen.len() == want && preferred.count_ones() as usize == want {
                chosen
            } else {
                whole
            };
            for &d in &whole[..want] {
                free[d] = 0;
                mask |= 1 << d;
            }
        } else {
            let best = (0..free.len())
                .filter(|&d| free[d] >= amount)
                .min_by_key(|&d| (free[d], d));
            let Some(d) = best else {
                return false;
            };
            free[d] -= amount;
            mask = 1 << d;
        }
        grant.0.store(mask, Ordering::Release);
        true
    }

    /// The devices nobody holds any of.
    pub(crate) fn wholly_free(&self) -> std::collections::BTreeSet<usize> {
        let free = lock(&self.free);
        (0..free.len()).filter(|&d| free[d] == WHOLE).collect()
    }

    /// Takes whole `devices` (ordinals; others ignored) for a holder outside the table: their
    /// free amount drops by a whole device, so no request fits on them until [`Self::unhold`]
    /// (work already on one gives back as usual).
    pub(crate) fn hold(&self, devices: &[usize]) {
        let mut free = lock(&self.free);
        for &d in devices {
            if let Some(f) = free.get_mut(d) {
                *f -= WHOLE;
            }
        }
    }

    /// Gives back what [`Self::hold`] took.
    pub(crate) fn unhold(&self, devices: &[usize]) {
        let mut free = lock(&self.free);
        for &d in devices {
            if let Some(f) = free.get_mut(d) {
                *f += WHOLE;
            }
        }
    }

    /// Gives back what `grant` holds of `amount` thousandths.
    pub(crate) fn release(&self, amount: i64, grant: &GpuGrant) {
        let per_device = amount.min(WHOLE);
        let mut free = lock(&self.free);
        let mask = grant.0.swap(0, Ordering::AcqRel) & !RESERVED;
        for (d, f) in free.iter_mut().enumerate() {
            if mask & (1 << d) != 0 {
                *f += per_device;
            }
        }
    }
}

thread_local! {
    /// The devices of the task or actor call the thread runs.
    static CURRENT: Cell<u64> = const { Cell::new(0) };
}

/// Runs `f` as a task or actor call holding the devices of `grant`, else those of its
/// placement-group bundle (`bundle`, a mask; 0: no device).
pub(crate) fn holding<R>(grant: Option<&GpuGrant>, bundle: u64, f: impl FnOnce() -> R) -> R {
    let mask = match grant.map_or(0, GpuGrant::mask) {
        0 => bundle,
        m => m,
    };
    let prev = CURRENT.with(|c| c.replace(mask));
    let r = f();
    CURRENT.with(|c| c.set(prev));
    r
}

/// The GPUs held by the task or actor calling, as device ordinals of this process (Ray's
/// `ray.get_gpu_ids()`): empty outside a task or actor, and for one that asked for no GPU. An
/// actor's devices are its constructor's, held for its life; a fraction of a GPU names the
/// device it shares.
///
/// Unlike Ray, the devices are not made the only visible ones for the call: a worker process
/// runs many calls at once, so it sees every device its raylet or launcher gave it
/// (`CUDA_VISIBLE_DEVICES`), and a call opens the ones it holds by these ordinals.
pub fn gpu_ids() -> Vec<usize> {
    let mask = CURRENT.with(Cell::get);
    (0..64).filter(|d| mask & (1 << d) != 0).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(g: &GpuGrant) -> Vec<usize> {
        (0..64).filter(|d| g.mask() & (1 << d) != 0).collect()
    }

    /// Reserves `g` and acquires `amount` into it, as `NodeResources::try_acquire` does.
    fn take(t: &GpuInstances, amount: i64, g: &GpuGrant) -> bool {
        if !g.reserve() {
            return false;
        }
        let ok = t.acquire(amount, g);
        if !ok {
            g.unreserve();
        }
        ok
    }

    #[test]
    fn whole_requests_take_free_devices_and_give_them_back() {
        let t = GpuInstances::new(4 * WHOLE).unwrap();
        let (a, b, c) = (
            GpuGrant::default(),
            GpuGrant::default(),
            GpuGrant::default(),
        );
        assert!(take(&t, 2 * WHOLE, &a));
        assert_eq!(ids(&a), vec![0, 1]);
        assert!(take(&t, WHOLE, &b));
        assert_eq!(ids(&b), vec![2]);
        assert!(!take(&t, 2 * WHOLE, &c), "one device is left");
        assert_eq!(c.mask(), 0);
        t.release(2 * WHOLE, &a);
        assert!(take(&t, 2 * WHOLE, &c));
        assert_eq!(ids(&c), vec![0, 1]);
    }

    #[test]
    fn fractions_pack_onto_the_fullest_device_that_fits() {
        let t = GpuInstances::new(2 * WHOLE).unwrap();
        let g: Vec<GpuGrant> = (0..4).map(|_| GpuGrant::default()).collect();
        assert!(take(&t, 500, &g[0]));
        assert!(take(&t, 250, &g[1]));
        assert_eq!(ids(&g[1]), ids(&g[0]), "packed onto the device in use");
        assert!(take(&t, 500, &g[2]));
        assert_eq!(ids(&g[2]), vec![1], "does not fit beside the others");
        // A whole GPU: neither device is wholly free although 0.75 is.
        let whole = GpuGrant::default();
        assert!(!take(&t, WHOLE, &whole));
        t.release(500, &g[2]);
        assert!(take(&t, WHOLE, &whole));
        assert_eq!(ids(&whole), vec![1]);
        t.release(500, &g[0]);
        t.release(250, &g[1]);
        assert!(take(&t, WHOLE, &g[3]));
        assert_eq!(ids(&g[3]), vec![0]);
    }

    /// One demand acquired on two threads at once (a slot and an inline waiter): the second
    /// acquisition fails and the first keeps its devices, which come back on release.
    #[test]
    fn a_grant_held_is_not_acquired_again() {
        let t = GpuInstances::new(2 * WHOLE).unwrap();
        let g = GpuGrant::default();
        assert!(take(&t, WHOLE, &g));
        assert_eq!(ids(&g), vec![0]);
        assert!(!g.reserve(), "the grant is held");
        assert_eq!(ids(&g), vec![0], "and keeps its device");
        t.release(WHOLE, &g);
        let (a, b) = (GpuGrant::default(), GpuGrant::default());
        assert!(take(&t, WHOLE, &a) && take(&t, WHOLE, &b), "nothing leaked");
        // A reservation that found no room is given up: the grant can be taken again.
        let c = GpuGrant::default();
        assert!(!take(&t, WHOLE, &c));
        assert!(c.reserve());
    }

    #[test]
    fn a_preferred_set_is_taken_when_wholly_free() {
        let t = GpuInstances::new(4 * WHOLE).unwrap();
        let g = GpuGrant::default();
        g.prefer(0b1100);
        assert!(take(&t, 2 * WHOLE, &g));
        assert_eq!(ids(&g), vec![2, 3], "the preferred devices");
        // Not all free: the usual choice.
        let (a, b) = (GpuGrant::default(), GpuGrant::default());
        a.prefer(0b0110);
        assert!(take(&t, 2 * WHOLE, &a));
        assert_eq!(ids(&a), vec![0, 1]);
        t.release(2 * WHOLE, &g);
        b.prefer(0b0100);
        assert!(
            take(&t, 2 * WHOLE, &b),
            "a preference of the wrong size is ignored"
        );
        assert_eq!(ids(&b), vec![2, 3]);
    }

    #[test]
    fn held_devices_go_to_no_request_until_given_back() {
        let t = GpuInstances::new(3 * WHOLE).unwrap();
        t.hold(&[0, 1, 7]);
        let (a, b) = (GpuGrant::default(), GpuGrant::default());
        assert!(take(&t, WHOLE, &a));
        assert_eq!(ids(&a), vec![2], "the one not held");
        assert!(!take(&t, 500, &b), "not even a fraction of a held one");
        t.unhold(&[0, 1, 7]);
        assert!(take(&t, 500, &b));
        assert_eq!(ids(&b), vec![0]);
    }

    #[test]
    fn odd_tables() {
        assert!(GpuInstances::new(0).is_none());
        assert!(GpuInstances::new(64 * WHOLE).is_none());
        assert!(GpuInstances::new(63 * WHOLE).is_some());
        let half = GpuInstances::new(1500).unwrap();
        let (a, b) = (GpuGrant::default(), GpuGrant::default());
        assert!(take(&half, 500, &a));
        assert_eq!(ids(&a), vec![1], "the fullest that fits is the half device");
        assert!(take(&half, 600, &b));
        assert_eq!(ids(&b), vec![0]);
    }

    #[test]
    fn the_thread_sees_the_devices_it_holds() {
        let t = GpuInstances::new(3 * WHOLE).unwrap();
        let g = GpuGrant::default();
        let skip = GpuGrant::default();
        assert!(take(&t, WHOLE, &skip));
        assert!(take(&t, 2 * WHOLE, &g));
        assert_eq!(gpu_ids(), Vec::<usize>::new());
        let inner = holding(Some(&g), 0, || {
            let outer = gpu_ids();
            let nested = holding(None, 0, gpu_ids);
            let bundle = holding(None, 0b101, gpu_ids);
            (outer, nested, bundle)
        });
        assert_eq!(
            inner,
            (vec![1, 2], vec![], vec![0, 2]),
            "a task run inside holds only its own (a bundle's: the bundle's)"
        );
        assert!(gpu_ids().is_empty());
    }
}
