//! Who holds which granule of the node arena: the server's policy, sans I/O.
//!
//! The arena is cut into granules per NUMA span (a granule never straddles two spans; a span's
//! tail shorter than a granule stays unused). Each granule is free, granted to a live client,
//! or *dead-held*: its client's connection closed and some other process may still read it in
//! place. [`Granules::sweep`] frees dead-held granules that a caller-supplied probe finds
//! unlocked; the probe is `fcntl(F_OFD_GETLK)` in the server and a closure in the tests.

use std::fmt;

/// A client connection's id, unique for the server's lifetime.
pub(crate) type ClientId = u64;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Owner {
    Free,
    Live(ClientId),
    Dead(ClientId),
}

#[derive(Clone, Copy, Debug)]
struct Slot {
    offset: usize,
    span: usize,
    owner: Owner,
}

/// Why a give-back was refused (nothing was freed).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// The range is not a whole number of granules starting on one.
    NotGranules,
    /// Some granule of the range is not the client's.
    NotOwned,
}

/// The granule table.
pub(crate) struct Granules {
    granule: usize,
    slots: Vec<Slot>,
    /// The NUMA node of each span; `None` for an unbound span.
    span_nodes: Vec<Option<u32>>,
}

impl fmt::Debug for Granules {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Granules")
            .field("granule", &self.granule)
            .field("granules", &self.slots.len())
            .field("granted", &self.granted())
            .field("held_back", &self.held_back())
            .finish()
    }
}

/// The granule size for an arena of `arena_len` bytes on pages of `page` bytes: `requested`
/// raised to a multiple of `page`, lowered (not below one page) so the arena holds at least 8.
pub(crate) fn granule_size(requested: usize, arena_len: usize, page: usize) -> usize {
    let page = page.max(1);
    let raised = requested.max(1).next_multiple_of(page);
    let eighth = (arena_len / 8) / page * page;
    raised.min(eighth.max(page))
}

/// The granules of `spans` (`(offset, len)`, address order): `(offset, span index)` each.
pub(crate) fn layout(spans: &[(usize, usize)], granule: usize) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    if granule == 0 {
        return out;
    }
    for (i, &(offset, len)) in spans.iter().enumerate() {
        out.extend((0..len / granule).map(|k| (offset + k * granule, i)));
    }
    out
}

impl Granules {
    /// All free: the granules of `spans`, span `i` bound to `nodes[i]` (`nodes` empty: unbound).
    pub(crate) fn new(spans: &[(usize, usize)], nodes: &[u32], granule: usize) -> Self {
        let slots = layout(spans, granule)
            .into_iter()
            .map(|(offset, span)| Slot {
                offset,
                span,
                owner: Owner::Free,
            })
            .collect();
        Granules {
            granule,
            slots,
            span_nodes: (0..spans.len()).map(|i| nodes.get(i).copied()).collect(),
        }
    }

    /// Bytes in whole granules.
    pub(crate) fn capacity(&self) -> usize {
        self.slots.len() * self.granule
    }

    /// Bytes granted to live or dead-held clients.
    pub(crate) fn granted(&self) -> usize {
        self.count(|o| o != Owner::Free) * self.granule
    }

    /// Bytes of dead clients' granules not yet freed (read-locked at the last sweep).
    pub(crate) fn held_back(&self) -> usize {
        self.count(|o| matches!(o, Owner::Dead(_))) * self.granule
    }

    /// Whether any granule is dead-held (the server's sweeper runs only then).
    pub(crate) fn any_dead(&self) -> bool {
        self.held_back() > 0
    }

    fn count(&self, pred: impl Fn(Owner) -> bool) -> usize {
        self.slots.iter().filter(|s| pred(s.owner)).count()
    }

    /// Grants `client` the first run of `n` free contiguous granules within a span bound to
    /// `prefer`, else within any span; `(offset, len)` in bytes. Runs never straddle spans.
    pub(crate) fn claim(
        &mut self,
        client: ClientId,
        n: usize,
        prefer: Option<u32>,
    ) -> Option<(usize, usize)> {
        if n == 0 {
            return None;
        }
        let start = prefer
            .and_then(|node| self.find_run(n, |span| span == Some(node)))
            .or_else(|| self.find_run(n, |_| true))?;
        for slot in &mut self.slots[start..start + n] {
            slot.owner = Owner::Live(client);
        }
        Some((self.slots[start].offset, n * self.granule))
    }

    /// The index of the first run of `n` free granules of one span that `span_ok` accepts.
    fn find_run(&self, n: usize, span_ok: impl Fn(Option<u32>) -> bool) -> Option<usize> {
        let mut run_start = 0;
        let mut run_len = 0;
        for (i, slot) in self.slots.iter().enumerate() {
            let usable = slot.owner == Owner::Free
                && span_ok(self.span_nodes.get(slot.span).copied().flatten());
            if !usable || (run_len > 0 && self.slots[run_start].span != slot.span) {
                run_len = 0;
            }
            if usable {
                if run_len == 0 {
                    run_start = i;
                }
                run_len += 1;
                if run_len == n {
                    return Some(run_start);
                }
            }
        }
        None
    }

    /// The slot index of the granule starting at `offset`.
    fn index_of(&self, offset: usize) -> Option<usize> {
        self.slots.binary_search_by_key(&offset, |s| s.offset).ok()
    }

    /// Frees `[offset, offset + len)` if it is whole granules, all `client`'s; else nothing.
    pub(crate) fn release(
        &mut self,
        client: ClientId,
        offset: usize,
        len: usize,
    ) -> Result<(), Refusal> {
        if len == 0 || !len.is_multiple_of(self.granule) {
            return Err(Refusal::NotGranules);
        }
        let first = self.index_of(offset).ok_or(Refusal::NotGranules)?;
        let n = len / self.granule;
        let run = self
            .slots
            .get(first..first + n)
            .ok_or(Refusal::NotGranules)?;
        // Contiguous in the arena: each granule starts where the previous ends.
        let contiguous = run
            .windows(2)
            .all(|w| w[1].offset == w[0].offset + self.granule);
        if !contiguous {
            return Err(Refusal::NotGranules);
        }
        if run.iter().any(|s| s.owner != Owner::Live(client)) {
            return Err(Refusal::NotOwned);
        }
        for slot in &mut self.slots[first..first + n] {
            slot.owner = Owner::Free;
        }
        Ok(())
    }

    /// `client`'s connection closed: its granules become dead-held. Returns how many.
    pub(crate) fn client_gone(&mut self, client: ClientId) -> usize {
        let mut n = 0;
        for slot in &mut self.slots {
            if slot.owner == Owner::Live(client) {
                slot.owner = Owner::Dead(client);
                n += 1;
            }
        }
        n
    }

    /// Frees every dead-held granule for which `locked(offset, len)` says no other process
    /// read-locks any of its bytes. Returns the bytes freed.
    pub(crate) fn sweep(&mut self, mut locked: impl FnMut(usize, usize) -> bool) -> usize {
        let granule = self.granule;
        let mut freed = 0;
        for slot in &mut self.slots {
            if matches!(slot.owner, Owner::Dead(_)) && !locked(slot.offset, granule) {
                slot.owner = Owner::Free;
                freed += granule;
            }
        }
        freed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const G: usize = 1 << 20;

    /// Two spans of 4 granules each (plus an unused half-granule tail on the first), bound to
    /// nodes 0 and 1.
    fn two_spans() -> Granules {
        Granules::new(&[(0, 4 * G + G / 2), (4 * G + G / 2, 4 * G)], &[0, 1], G)
    }

    #[test]
    fn granule_size_is_page_multiple_and_leaves_eight() {
        let page = 4096;
        assert_eq!(granule_size(64 << 20, 1 << 30, page), 64 << 20);
        assert_eq!(
            granule_size(64 << 20, 64 << 20, page),
            8 << 20,
            "lowered to 1/8"
        );
        assert_eq!(granule_size(5000, 1 << 30, page), 8192, "raised to pages");
        assert_eq!(
            granule_size(64 << 20, 4096, page),
            4096,
            "never below a page"
        );
        assert_eq!(granule_size(1 << 30, 16 << 30, 1 << 30), 1 << 30);
    }

    #[test]
    fn claims_first_fit_prefers_the_node_and_never_straddles() {
        let mut g = two_spans();
        assert_eq!(g.capacity(), 8 * G, "the tail is not a granule");
        assert_eq!(
            g.claim(1, 1, Some(1)),
            Some((4 * G + G / 2, G)),
            "node 1's span"
        );
        assert_eq!(g.claim(1, 2, None), Some((0, 2 * G)));
        // Span 0 has 2 free, span 1 has 3 free: a run of 3 comes from span 1.
        assert_eq!(g.claim(2, 3, Some(0)), Some((5 * G + G / 2, 3 * G)));
        // 2 free granules left in span 0 only; a run of 3 fits nowhere.
        assert_eq!(g.claim(2, 3, None), None);
        assert_eq!(g.claim(2, 2, Some(1)), Some((2 * G, 2 * G)), "falls back");
        assert_eq!(g.granted(), 8 * G);
        assert_eq!(g.claim(3, 1, None), None, "full");
        assert_eq!(g.claim(3, 0, None), None, "nothing to grant");
    }

    #[test]
    fn a_run_never_straddles_two_spans() {
        // Span 0's last granule and span 1's first are free and adjacent in index order, but
        // not one run.
        let mut g = Granules::new(&[(0, 2 * G), (2 * G, 2 * G)], &[], G);
        assert_eq!(g.claim(1, 1, None), Some((0, G)));
        assert_eq!(g.claim(1, 1, None), Some((G, G)));
        assert_eq!(g.release(1, 0, G), Ok(()));
        // Free: granule 0 (span 0), granules 2–3 (span 1).
        assert_eq!(g.claim(2, 2, None), Some((2 * G, 2 * G)));
        g.release(2, 2 * G, 2 * G).expect("own");
        g.release(1, G, G).expect("own");
        // Now everything is free; 2 spans of 2: a run of 3 does not exist.
        assert_eq!(g.claim(3, 3, None), None);
    }

    #[test]
    fn release_only_what_the_client_owns() {
        let mut g = two_spans();
        let (off, len) = g.claim(7, 2, Some(0)).expect("room");
        assert_eq!(g.release(8, off, len), Err(Refusal::NotOwned), "foreign");
        assert_eq!(
            g.release(7, off, 3 * G),
            Err(Refusal::NotOwned),
            "past its run"
        );
        assert_eq!(g.release(7, off + 1, G), Err(Refusal::NotGranules));
        assert_eq!(g.release(7, off, G / 2), Err(Refusal::NotGranules));
        assert_eq!(g.release(7, off, 0), Err(Refusal::NotGranules));
        assert_eq!(
            g.release(7, 3 * G, 2 * G),
            Err(Refusal::NotGranules),
            "across the tail"
        );
        assert_eq!(g.release(7, usize::MAX - G, G), Err(Refusal::NotGranules));
        assert_eq!(g.granted(), 2 * G, "refusals free nothing");
        assert_eq!(g.release(7, off + G, G), Ok(()), "part of a grant");
        assert_eq!(g.release(7, off, G), Ok(()));
        assert_eq!(g.granted(), 0);
    }

    #[test]
    fn a_gone_clients_granules_wait_for_unlocked_sweeps() {
        let mut g = two_spans();
        let (a, _) = g.claim(1, 2, Some(0)).expect("room");
        let (b, _) = g.claim(2, 1, Some(0)).expect("room");
        assert_eq!(g.client_gone(1), 2);
        assert_eq!(g.client_gone(1), 0, "already gone");
        assert_eq!(g.held_back(), 2 * G);
        assert_eq!(g.granted(), 3 * G, "dead-held still counts as granted");
        assert_eq!(
            g.release(1, a, G),
            Err(Refusal::NotOwned),
            "a dead client frees nothing"
        );
        // The second granule of the dead client is read-locked by someone.
        let freed = g.sweep(|off, len| {
            assert_eq!(len, G);
            off == a + G
        });
        assert_eq!(freed, G);
        assert!(g.any_dead());
        assert_eq!(
            g.claim(3, 1, Some(0)),
            Some((a, G)),
            "the unlocked one is free again"
        );
        assert_eq!(
            g.claim(3, 1, Some(0)),
            Some((b + G, G)),
            "the locked one is not"
        );
        assert_eq!(g.sweep(|_, _| false), G);
        assert!(!g.any_dead());
        assert_eq!(g.held_back(), 0);
        assert_eq!(g.granted(), 3 * G, "clients 2 and 3");
    }
}
