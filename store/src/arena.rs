//! The arena: one shared mapping of one memfd per store (or per node: `node.rs`), and its
//! read-only twin in attached processes.
//!
//! # Why memfd
//! A memfd has no name in any filesystem: the memory lives exactly as long as some process holds
//! the fd or a mapping of it. A store process that dies, however it dies, leaves nothing in
//! `/dev/shm` to clean up. Other processes get the arena by receiving the fd over a Unix socket
//! ([`crate::fdpass`]).
//!
//! # Page kinds, in the order tried
//! 1. `MFD_HUGETLB | MFD_HUGE_1GB`: with [`PageRequest::Gigantic`] always (the size rounded up
//!    to whole GiB); with [`PageRequest::Auto`] when the capacity rounded *down* to whole GiB
//!    keeps at least 7/8 of it (an arena of 1 GiB, 2 GiB, 7.2 GiB → 7 GiB, any size from 8 GiB
//!    on), so the arena never exceeds what was asked and loses at most an eighth of it.
//! 2. `MFD_HUGETLB | MFD_HUGE_2MB` (hugetlb reserves the pages at `mmap`, so an empty or short
//!    pool fails there with `ENOMEM`, never later with `SIGBUS`; the same holds for 1 GiB
//!    pages, so a node with no or too few of them falls through to the next kind).
//! 3. A plain memfd with `MADV_HUGEPAGE` (transparent huge pages if the kernel's
//!    `shmem_enabled` allows; 4 KiB pages otherwise).
//!
//! # Size is fixed
//! The memfd is sealed against shrinking and growing (`F_SEAL_SHRINK | F_SEAL_GROW`) right after
//! it is sized. That is what makes mapping it sound in any process: nobody can truncate it under
//! a mapping (which would turn reads into `SIGBUS`). [`AttachedArena`] checks the seals, and so
//! does a node client mapping the node's arena read-write.
//!
//! # Read holds
//! An [`AttachedArena`] reopens the memfd, so it has an open file description of its own, and
//! [`AttachedArena::hold`] takes OFD read locks on it (`ofd.rs`): the node's server does not
//! reuse a dead process's granule while any reader holds one on it (`node.rs`).

use std::collections::BTreeMap;
use std::ffi::CStr;
use std::fmt;
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use memmap2::{Advice, Mmap, MmapOptions, MmapRaw};
use tracing::{info, warn};

use crate::config::PageRequest;
use crate::error::StoreError;
use crate::key::Location;
use crate::ofd::{self, LockOp};

/// The kind of page that backs an arena (shown by `manta status`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PageKind {
    /// 1 GiB hugetlb pages.
    Huge1GiB,
    /// 2 MiB hugetlb pages.
    Huge2MiB,
    /// 4 KiB pages, transparent huge pages advised (used if the kernel allows them for shmem).
    Small4KiB,
}

impl PageKind {
    /// Page size in bytes.
    pub const fn page_size(self) -> usize {
        match self {
            PageKind::Huge1GiB => 1 << 30,
            PageKind::Huge2MiB => 2 << 20,
            PageKind::Small4KiB => 4 << 10,
        }
    }
}

impl fmt::Display for PageKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            PageKind::Huge1GiB => "1 GiB huge pages",
            PageKind::Huge2MiB => "2 MiB huge pages",
            PageKind::Small4KiB => "4 KiB pages (THP advised)",
        })
    }
}

/// The store's shared memory: a sealed-size memfd mapped read-write.
pub struct Arena {
    file: File,
    map: MmapRaw,
    kind: PageKind,
    prefault: Option<Duration>,
}

impl fmt::Debug for Arena {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Arena")
            .field("len", &self.len())
            .field("kind", &self.kind)
            .field("fd", &self.file.as_raw_fd())
            .field("prefault", &self.prefault)
            .finish()
    }
}

/// `memfd_create(name, flags)` as an owned file.
fn memfd(flags: libc::c_uint) -> io::Result<File> {
    const NAME: &CStr = c"manta-arena";
    // SAFETY: NAME is a valid NUL-terminated string; memfd_create does not keep the pointer.
    let fd = unsafe { libc::memfd_create(NAME.as_ptr(), flags) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: memfd_create returned a fresh fd that nothing else owns.
    Ok(File::from(unsafe { OwnedFd::from_raw_fd(fd) }))
}

/// Seals `file` against any size change.
fn seal_size(file: &File) -> io::Result<()> {
    let seals = libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_SEAL;
    // SAFETY: fcntl on an fd we own, with an integer argument; no memory is passed.
    if unsafe { libc::fcntl(file.as_raw_fd(), libc::F_ADD_SEALS, seals) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Whether `fd` is sealed against shrinking (so a mapping of it can never lose its pages).
fn is_size_sealed(fd: BorrowedFd<'_>) -> bool {
    // SAFETY: fcntl F_GET_SEALS takes no argument and only reads the fd's seals.
    let seals = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GET_SEALS) };
    seals >= 0 && seals & libc::F_SEAL_SHRINK != 0
}

/// The arena length on 1 GiB pages for [`PageRequest::Auto`]: `capacity` rounded down to whole
/// GiB, if that is at least one page and keeps at least 7/8 of `capacity`.
fn gigantic_len(capacity: usize) -> Option<usize> {
    let page = PageKind::Huge1GiB.page_size();
    let len = capacity / page * page;
    (len >= page && len >= capacity - capacity / 8).then_some(len)
}

/// A memfd of `len` bytes (a multiple of the page size) with `flags`, sized, sealed and mapped.
fn map_memfd(len: usize, flags: libc::c_uint) -> io::Result<(File, MmapRaw)> {
    let file = memfd(libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING | flags)?;
    file.set_len(len as u64)?;
    seal_size(&file)?;
    let map = MmapOptions::new().len(len).map_raw(&file)?;
    Ok((file, map))
}

impl Arena {
    /// An arena of at least `capacity` bytes (rounded up to whole pages) with the pages
    /// `request` asks for, falling back as the module doc describes. Not yet touched: see
    /// [`Arena::prefault`].
    pub fn create(capacity: usize, request: PageRequest) -> Result<Arena, StoreError> {
        let mut tries = Vec::new();
        let gigantic = match request {
            PageRequest::Gigantic => {
                Some(capacity.next_multiple_of(PageKind::Huge1GiB.page_size()))
            }
            PageRequest::Auto => gigantic_len(capacity),
            PageRequest::Small => None,
        };
        if let Some(len) = gigantic {
            tries.push((
                PageKind::Huge1GiB,
                libc::MFD_HUGETLB | libc::MFD_HUGE_1GB,
                len,
            ));
        }
        if request != PageRequest::Small {
            let len = capacity.next_multiple_of(PageKind::Huge2MiB.page_size());
            tries.push((
                PageKind::Huge2MiB,
                libc::MFD_HUGETLB | libc::MFD_HUGE_2MB,
                len,
            ));
        }
        let mut mapped = None;
        for (kind, flags, len) in tries {
            match map_memfd(len, flags) {
                Ok(pair) => {
                    mapped = Some((kind, pair));
                    break;
                }
                Err(e) => {
                    info!(%kind, len, error = %e, "arena: no huge pages of this size, falling back")
                }
            }
        }
        let (kind, (file, map)) = match mapped {
            Some(m) => m,
            None => {
                let len = capacity.next_multiple_of(PageKind::Small4KiB.page_size());
                let pair = map_memfd(len, 0).map_err(|source| StoreError::Arena {
                    op: "memfd mapping",
                    source,
                })?;
                if let Err(e) = pair.1.advise(Advice::HugePage) {
                    info!(error = %e, "arena: MADV_HUGEPAGE refused; plain 4 KiB pages");
                }
                (PageKind::Small4KiB, pair)
            }
        };
        let arena = Arena {
            file,
            map,
            kind,
            prefault: None,
        };
        info!(len = arena.len(), pages = %kind, "arena created");
        Ok(arena)
    }

    /// Touches every page once so that no object pays the first-touch fault; the time it took
    /// is logged and kept ([`Arena::prefault_time`]). Call before any object is created.
    pub fn prefault(&mut self) {
        self.prefault = Some(self.prefault_pages());
    }

    fn prefault_pages(&self) -> Duration {
        let start = Instant::now();
        if let Err(e) = self.map.advise(Advice::PopulateWrite) {
            warn!(error = %e, "arena: MADV_POPULATE_WRITE refused; touching pages one by one");
            let page = self.kind.page_size();
            let base = self.map.as_mut_ptr();
            for off in (0..self.len()).step_by(page) {
                // SAFETY: off < len, inside the mapping; the arena was just created so no object
                // lives there yet, and writing 0 over fresh (zeroed) memory changes nothing.
                unsafe { base.add(off).write_volatile(0) };
            }
        }
        let took = start.elapsed();
        let gbps = self.len() as f64 / took.as_secs_f64().max(1e-9) / 1e9;
        info!(len = self.len(), pages = %self.kind, ?took, gbps, "arena pre-faulted");
        took
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Always false: arenas have at least one page.
    pub fn is_empty(&self) -> bool {
        self.map.len() == 0
    }

    /// Which pages back the arena.
    pub fn page_kind(&self) -> PageKind {
        self.kind
    }

    /// How long pre-faulting took, if it was done.
    pub fn prefault_time(&self) -> Option<Duration> {
        self.prefault
    }

    /// The memfd, to send to other processes on the node ([`crate::fdpass::send_fd`]).
    pub fn fd(&self) -> BorrowedFd<'_> {
        self.file.as_fd()
    }

    /// The node arena `fd` received by a client process (`node.rs`), mapped read-write: the
    /// client's store writes its objects into the granules it was granted. Checks that the fd
    /// is sealed against shrinking and exactly `len` bytes long.
    pub(crate) fn map_shared(fd: OwnedFd, kind: PageKind, len: usize) -> io::Result<Arena> {
        let invalid = |what: &str| io::Error::new(io::ErrorKind::InvalidData, what.to_owned());
        if !is_size_sealed(fd.as_fd()) {
            return Err(invalid("the node arena fd is not size-sealed"));
        }
        let (_, size) = identity_and_len(fd.as_fd())?;
        if size != len as u64 || len == 0 || !len.is_multiple_of(kind.page_size()) {
            return Err(invalid(
                "the node arena's size does not match its description",
            ));
        }
        let file = File::from(fd);
        let map = MmapOptions::new().len(len).map_raw(&file)?;
        Ok(Arena {
            file,
            map,
            kind,
            prefault: None,
        })
    }

    /// Base address of the mapping. Pointers derived from it are valid for `len()` bytes for as
    /// long as the arena lives; who may read or write which bytes is the object table's rule.
    pub(crate) fn base(&self) -> *mut u8 {
        self.map.as_mut_ptr()
    }
}

/// A read-only mapping of a store's arena in another process, attached from the memfd.
///
/// It keeps an open file description of its own (see [`AttachedArena::attach`]), on which
/// [`AttachedArena::hold`] takes the read locks that keep a node arena's granule from being
/// reclaimed while this process reads it in place (`node.rs`).
pub struct AttachedArena {
    map: Mmap,
    /// The memfd, reopened: this process's own open file description (`private`), or the
    /// received fd itself when reopening failed (then `hold` refuses: locks on a shared
    /// description would be the sender's too).
    file: File,
    private: bool,
    /// `(offset, len)` → holds on that exact range; the kernel lock exists while the count is
    /// above 0.
    holds: Mutex<BTreeMap<(u64, u64), u32>>,
}

impl fmt::Debug for AttachedArena {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AttachedArena")
            .field("len", &self.map.len())
            .field("private", &self.private)
            .finish()
    }
}

/// `fd` opened again through `/proc/self/fd`: the same memfd on a new open file description.
fn reopen(fd: BorrowedFd<'_>) -> io::Result<File> {
    // std opens with O_CLOEXEC; read-only is all a reader and its read locks need.
    File::open(format!("/proc/self/fd/{}", fd.as_raw_fd()))
}

/// `(st_dev, st_ino)` and size of `fd`.
pub(crate) fn identity_and_len(fd: BorrowedFd<'_>) -> io::Result<((u64, u64), u64)> {
    let meta = File::from(fd.try_clone_to_owned()?).metadata()?;
    Ok(((meta.dev(), meta.ino()), meta.len()))
}

impl AttachedArena {
    /// Maps the arena memfd `fd` (as received with [`crate::fdpass::recv_fd`]) read-only.
    ///
    /// The memfd is reopened through `/proc/self/fd` first, so this mapping's read locks
    /// ([`AttachedArena::hold`]) live on an open file description of this process's own: an fd
    /// received over `SCM_RIGHTS` shares the sender's description, and with it its locks. If
    /// the reopen fails (no `/proc`), the mapping still works and `hold` answers `None`.
    ///
    /// Fails with `InvalidInput` if `fd` is not sealed against shrinking (not a store arena).
    pub fn attach(fd: OwnedFd) -> io::Result<AttachedArena> {
        if !is_size_sealed(fd.as_fd()) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "fd is not a size-sealed store arena",
            ));
        }
        let (file, private) = match reopen(fd.as_fd()) {
            Ok(own) => (own, true),
            Err(e) => {
                warn!(error = %e, "arena attach: cannot reopen the memfd; no read locks");
                (File::from(fd), false)
            }
        };
        // SAFETY: the memfd is sealed against shrinking (checked above; seals belong to the
        // inode, which the reopened file shares), so no process can truncate it under this
        // mapping. Its bytes may change while mapped (the store writes objects being created);
        // readers only look at sealed objects, whose bytes no longer change, and the slices
        // handed out are of those.
        let map = unsafe { MmapOptions::new().map(&file)? };
        Ok(AttachedArena {
            map,
            file,
            private,
            holds: Mutex::new(BTreeMap::new()),
        })
    }

    /// Takes a read lock (`F_OFD_SETLK`, `F_RDLCK`) on the bytes of the object at `loc`, on
    /// this mapping's own open file description, for as long as the returned hold lives.
    ///
    /// Holds are counted per range inside this `AttachedArena`: two holds on one range are one
    /// kernel lock, released when the last drops. `None` (logged) if `loc` is empty or outside
    /// the mapping, if this mapping has no description of its own, or if the kernel refuses.
    /// A reader takes one for as long as it reads another process's object of a node arena in
    /// place: the node's server does not reclaim a dead process's granule while any part of
    /// it is read-locked (`node.rs`, "Why read locks").
    pub fn hold(self: &Arc<Self>, loc: Location) -> Option<ReadHold> {
        if loc.len == 0 || self.bytes(loc).is_none() {
            warn!(
                ?loc,
                len = self.len(),
                "read hold: location outside the arena"
            );
            return None;
        }
        if !self.private {
            warn!(
                ?loc,
                "read hold: the arena has no open file description of its own"
            );
            return None;
        }
        let range = (loc.offset, loc.len);
        let mut holds = self.lock_holds();
        let count = holds.entry(range).or_insert(0);
        if *count == 0
            && let Err(e) = ofd::set(self.file.as_fd(), LockOp::Read, loc.offset, loc.len)
        {
            holds.remove(&range);
            warn!(?loc, error = %e, "read hold: lock refused");
            return None;
        }
        *count += 1;
        Some(ReadHold {
            arena: self.clone(),
            range,
        })
    }

    fn lock_holds(&self) -> MutexGuard<'_, BTreeMap<(u64, u64), u32>> {
        // The map is changed only after each fallible step, so a poisoned lock is consistent.
        self.holds.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A hold's drop: counts down and unlocks at zero.
    fn unhold(&self, range: (u64, u64)) {
        let mut holds = self.lock_holds();
        let Some(count) = holds.get_mut(&range) else {
            debug_assert!(false, "a hold's range vanished");
            return;
        };
        *count -= 1;
        if *count > 0 {
            return;
        }
        holds.remove(&range);
        let fd = self.file.as_fd();
        if let Err(e) = ofd::set(fd, LockOp::Unlock, range.0, range.1) {
            warn!(?range, error = %e, "read hold: unlock failed");
        }
        // Locks of one description merge: unlocking this range also unlocked any part of it
        // that another held range overlaps. Lock those again (store objects never overlap, so
        // this loop finds nothing unless a caller holds overlapping views).
        let (start, end) = (range.0, range.0 + range.1);
        for &(offset, len) in holds.keys() {
            if offset < end
                && start < offset + len
                && let Err(e) = ofd::set(fd, LockOp::Read, offset, len)
            {
                warn!(offset, len, error = %e, "read hold: re-lock after an overlap failed");
            }
        }
    }

    /// Ranges read-locked now, with their hold counts (for tests and `manta status`).
    pub fn held(&self) -> Vec<(Location, u32)> {
        self.lock_holds()
            .iter()
            .map(|(&(offset, len), &n)| (Location { offset, len }, n))
            .collect()
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.map.len()
    }

    /// Always false: arenas have at least one page.
    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    /// The bytes of the object at `loc` (no copy), or `None` if `loc` is outside the arena.
    ///
    /// The caller must hold a pin on the object (taken for it by the store process) for as long
    /// as it reads: an unpinned object may be spilled and its block reused.
    pub fn bytes(&self, loc: Location) -> Option<&[u8]> {
        let start = usize::try_from(loc.offset).ok()?;
        let end = start.checked_add(usize::try_from(loc.len).ok()?)?;
        self.map.get(start..end)
    }

    /// The object at `loc` as a slice of `T` (no copy), or `None` if `loc` is outside the arena
    /// or its length is not a whole number of `T`s. Store offsets are 4 KiB aligned.
    pub fn view<T: bytemuck::Pod>(&self, loc: Location) -> Option<&[T]> {
        bytemuck::try_cast_slice(self.bytes(loc)?).ok()
    }
}

/// A read lock on one object's bytes in an [`AttachedArena`] ([`AttachedArena::hold`]);
/// dropping it counts the range's holds down and unlocks it at zero.
pub struct ReadHold {
    arena: Arc<AttachedArena>,
    range: (u64, u64),
}

impl fmt::Debug for ReadHold {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReadHold")
            .field("offset", &self.range.0)
            .field("len", &self.range.1)
            .finish()
    }
}

impl ReadHold {
    /// The locked location.
    pub fn location(&self) -> Location {
        Location {
            offset: self.range.0,
            len: self.range.1,
        }
    }

    /// The arena it locks.
    pub fn arena(&self) -> &Arc<AttachedArena> {
        &self.arena
    }
}

impl Drop for ReadHold {
    fn drop(&mut self) {
        self.arena.unhold(self.range);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_pages_when_forced() {
        let mut a = Arena::create(3 << 20, PageRequest::Small).expect("arena");
        assert!(a.prefault_time().is_none());
        a.prefault();
        assert_eq!(a.page_kind(), PageKind::Small4KiB);
        assert_eq!(a.len(), 3 << 20);
        assert!(a.prefault_time().is_some());
        assert!(is_size_sealed(a.fd()));
    }

    #[test]
    fn gigantic_pages_only_when_rounding_down_keeps_seven_eighths() {
        const GIB: usize = 1 << 30;
        assert_eq!(gigantic_len(GIB - 4096), None, "below one page");
        assert_eq!(gigantic_len(GIB), Some(GIB));
        assert_eq!(
            gigantic_len(GIB + GIB / 2),
            None,
            "1.5 GiB would lose a third"
        );
        assert_eq!(gigantic_len(2 * GIB + (200 << 20)), Some(2 * GIB));
        assert_eq!(
            gigantic_len(7 * GIB + GIB / 5),
            Some(7 * GIB),
            "30% of 24 GiB"
        );
        assert_eq!(gigantic_len(8 * GIB + GIB - 1), Some(8 * GIB));
    }

    #[test]
    fn size_is_sealed() {
        let a = Arena::create(1 << 20, PageRequest::Small).expect("arena");
        let dup = a.fd().try_clone_to_owned().expect("dup");
        let f = File::from(dup);
        assert!(f.set_len(0).is_err(), "a sealed arena cannot shrink");
        assert!(f.set_len(2 << 20).is_err(), "a sealed arena cannot grow");
    }

    #[test]
    fn holds_lock_on_a_description_of_their_own_and_survive_overlaps() {
        let a = Arena::create(1 << 20, PageRequest::Small).expect("arena");
        let attached = Arc::new(
            AttachedArena::attach(a.fd().try_clone_to_owned().expect("dup")).expect("attach"),
        );
        let locked = |offset, len| ofd::locked_by_others(a.fd(), offset, len).expect("probe");
        let whole = Location {
            offset: 0,
            len: 8192,
        };
        let tail = Location {
            offset: 4096,
            len: 4096,
        };
        let h1 = attached.hold(whole).expect("hold");
        let h2 = attached.hold(tail).expect("overlapping hold");
        assert!(
            locked(0, 4096),
            "the reopened description's lock is seen by the creator's"
        );
        drop(h1);
        assert!(!locked(0, 4096));
        assert!(locked(4096, 4096), "the overlapping hold is still locked");
        drop(h2);
        assert!(!locked(0, 1 << 20));
        assert!(
            attached.hold(Location { offset: 0, len: 0 }).is_none(),
            "empty"
        );
        assert!(
            attached
                .hold(Location {
                    offset: 1 << 20,
                    len: 1
                })
                .is_none(),
            "outside"
        );
    }

    #[test]
    fn attach_refuses_unsealed_fds() {
        let f = memfd(libc::MFD_CLOEXEC).expect("memfd");
        f.set_len(4096).expect("size");
        assert!(AttachedArena::attach(OwnedFd::from(f)).is_err());
    }
}
