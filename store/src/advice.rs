//! Page advice for memory outside the arena: the one call a benchmark needs to allocate a source
//! array the way numpy does.
//!
//! numpy advises every array buffer of 4 MiB or more for transparent huge pages
//! (`madvise(MADV_HUGEPAGE)` on its whole pages, `indicate_hugepages` in numpy's `alloc.c`; seen
//! with `strace` on numpy 2.4: `np.zeros(10 * 1024 * 1024, dtype=np.int64)` is a `calloc`
//! followed by `madvise(.., 83882000, MADV_HUGEPAGE)`). Where the kernel's THP mode is `madvise`
//! (Debian's default) that changes what a first read of the untouched zeros costs: one fault
//! maps the huge zero page for 2 MiB, instead of one fault per 4 KiB page. A Rust `vec![0; n]`
//! is a plain `calloc`: reading it faults 512 times as often.

use std::ffi::c_void;

/// Bytes from which numpy advises an array's buffer for huge pages (`1 << 22`).
pub const NUMPY_HUGEPAGE_THRESHOLD: usize = 4 << 20;

/// Advises the kernel to back the whole 4 KiB pages inside `buf` with transparent huge pages
/// (`MADV_HUGEPAGE`), as numpy does for its arrays. Returns whether the kernel accepted (it
/// refuses where THP is compiled out; nothing changes then). Contents are never changed.
pub fn advise_huge_pages<T>(buf: &[T]) -> bool {
    const PAGE: usize = 4096;
    let start = buf.as_ptr() as usize;
    let end = start + std::mem::size_of_val(buf);
    let (first, last) = (start.next_multiple_of(PAGE), end / PAGE * PAGE);
    if first >= last {
        return false;
    }
    // SAFETY: MADV_HUGEPAGE writes no memory and unmaps nothing: it only marks the mappings that
    // cover [first, last) as eligible for huge pages. That range lies inside `buf`, which is
    // mapped for as long as the borrow lives, so every page of it belongs to a live mapping.
    let rc = unsafe { libc::madvise(first as *mut c_void, last - first, libc::MADV_HUGEPAGE) };
    rc == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn advice_keeps_contents_and_skips_slices_without_a_whole_page() {
        let v: Vec<u64> = (0..(1 << 20)).collect();
        let accepted = advise_huge_pages(&v);
        eprintln!("MADV_HUGEPAGE accepted: {accepted}");
        assert!(v.iter().enumerate().all(|(i, &x)| x == i as u64));
        assert!(!advise_huge_pages(&v[..8]), "64 bytes hold no whole page");
        assert!(!advise_huge_pages::<u8>(&[]));
    }
}
