//! The binary's allocator (`src/main.rs` installs it): mimalloc, asked
//! for alignment only when it does not give it anyway.

use std::alloc::{GlobalAlloc, Layout};

use libmimalloc_sys as mi;
use mimalloc::MiMalloc;

/// mimalloc's `GlobalAlloc`, with plain `mi_malloc` for the layouts it
/// already aligns.
///
/// The `mimalloc` crate hands every allocation to `mi_malloc_aligned`, even
/// for an alignment of 1 or 8. In mimalloc 3 that takes the aligned path
/// for every block whose size is not a power of two (hyper's 8 KiB read
/// buffer plus a few bytes, a header map's entries): four more functions
/// and an over-allocation into the next size class, about 200 of a cache
/// hit's 14,500 instructions (BENCHMARKS.md, "fourteenth steps").
/// Every other layout, and every free, goes to the crate as before.
pub struct Allocator;

/// Whether `mi_malloc(layout.size())` is aligned for `layout`. On 64-bit
/// targets every block of mimalloc is aligned to 8 bytes (its smallest size
/// class), and every block of 16 bytes or more to 16 (`MI_MAX_ALIGN_SIZE`:
/// every larger size class is a multiple of 16 and every page's first block
/// 16-aligned; mimalloc asserts it in `alloc.c`). On 32-bit targets the
/// smallest class is 4 bytes: everything goes the aligned way there. The
/// rule also assumes mimalloc's release build: its debug build's guarded
/// blocks (the `debug` features of `mimalloc`/`libmimalloc-sys`, never
/// enabled here) end at a guard page instead. The unit tests below hold the
/// rule to the size classes and to the allocator.
fn plain(size: usize, align: usize) -> bool {
    cfg!(target_pointer_width = "64") && (align <= 8 || (align == 16 && size >= 16))
}

// SAFETY: every pointer comes from mimalloc, aligned for its layout (see
// `plain`, and mimalloc's aligned functions otherwise), and every block goes
// back to `mi_free` (through `MiMalloc::dealloc`), which frees aligned and
// plain blocks alike.
unsafe impl GlobalAlloc for Allocator {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if plain(layout.size(), layout.align()) {
            // SAFETY: `mi_malloc` has no precondition.
            unsafe { mi::mi_malloc(layout.size()).cast() }
        } else {
            // SAFETY: the caller's guarantees, passed on.
            unsafe { MiMalloc.alloc(layout) }
        }
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if plain(layout.size(), layout.align()) {
            // SAFETY: `mi_zalloc` has no precondition.
            unsafe { mi::mi_zalloc(layout.size()).cast() }
        } else {
            // SAFETY: the caller's guarantees, passed on.
            unsafe { MiMalloc.alloc_zeroed(layout) }
        }
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from this allocator, so from mimalloc.
        unsafe { MiMalloc.dealloc(ptr, layout) }
    }

    #[inline]
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if plain(new_size, layout.align()) {
            // SAFETY: `ptr` is a live mimalloc block (from this allocator);
            // `mi_realloc` keeps or moves it, aligned as `mi_malloc` would.
            unsafe { mi::mi_realloc(ptr.cast(), new_size).cast() }
        } else {
            // SAFETY: the caller's guarantees, passed on.
            unsafe { MiMalloc.realloc(ptr, layout, new_size) }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    extern "C" {
        /// The block size mimalloc gives a request of `size` bytes (its
        /// size class; exported by the library, declared by
        /// `libmimalloc-sys` only with its `extended` feature).
        fn mi_good_size(size: usize) -> usize;
    }

    /// Every size class up to 4 MiB is 8 bytes or a multiple of 16: what
    /// `plain` relies on, checked for every size rather than found by
    /// chance in the addresses below.
    #[test]
    fn every_size_class_is_eight_bytes_or_a_multiple_of_sixteen() {
        for size in 1..=(4 << 20) {
            // SAFETY: a pure function of its argument.
            let class = unsafe { mi_good_size(size) };
            assert!(class >= size, "size {size}: class {class}");
            if size >= 16 {
                assert_eq!(class % 16, 0, "size {size}: class {class}");
            } else {
                assert!(class == 8 || class == 16, "size {size}: class {class}");
            }
        }
    }

    /// Every size up to 4 KiB and a few past, at each alignment up to a
    /// page, allocated, zeroed, grown and shrunk through the allocator:
    /// each block is aligned and holds what was written. Fails if `plain`
    /// claims an alignment mimalloc does not give. Growing takes blocks of
    /// the aligned way (8 bytes at 16, say) to the plain one (40 at 16).
    #[test]
    fn every_block_is_aligned_for_its_layout() {
        let sizes = (1..=4096).chain([8191, 8192, 8200, 65_537, 1 << 20]);
        for size in sizes {
            for align in [1, 2, 4, 8, 16, 32, 64, 4096] {
                let layout = Layout::from_size_align(size, align).unwrap();
                // Several at once: the first block of a fresh page is
                // aligned more than the rest.
                let blocks: Vec<*mut u8> = (0..3)
                    .map(|i| unsafe {
                        let p = if i == 1 {
                            Allocator.alloc_zeroed(layout)
                        } else {
                            Allocator.alloc(layout)
                        };
                        assert!(!p.is_null());
                        assert_eq!(p as usize % align, 0, "size {size} align {align}");
                        if i == 1 {
                            assert!(std::slice::from_raw_parts(p, size).iter().all(|&b| b == 0));
                        }
                        p.write_bytes(0xa5, size);
                        p
                    })
                    .collect();
                for p in blocks {
                    unsafe {
                        let grown = Allocator.realloc(p, layout, size * 2 + 24);
                        assert_eq!(grown as usize % align, 0, "grown {size} align {align}");
                        assert!(std::slice::from_raw_parts(grown, size)
                            .iter()
                            .all(|&b| b == 0xa5));
                        let grown_layout = Layout::from_size_align(size * 2 + 24, align).unwrap();
                        let shrunk = Allocator.realloc(grown, grown_layout, size.div_ceil(2));
                        assert_eq!(shrunk as usize % align, 0, "shrunk {size} align {align}");
                        let shrunk_layout =
                            Layout::from_size_align(size.div_ceil(2), align).unwrap();
                        Allocator.dealloc(shrunk, shrunk_layout);
                    }
                }
            }
        }
    }

    #[test]
    fn only_what_mimalloc_aligns_goes_the_plain_way() {
        assert!(plain(1, 1) && plain(3, 4) && plain(8, 8) && plain(8200, 8));
        assert!(plain(16, 16) && plain(24, 16));
        // An 8-byte block is 8-aligned only; larger alignments are asked for.
        assert!(!plain(8, 16) && !plain(64, 32) && !plain(4096, 4096));
    }
}
