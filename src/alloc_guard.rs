//! A cap on the size of any single allocation, set around code that sizes its buffers from
//! numbers inside an untrusted file.
//!
//! Found by fuzzing: a 17 KB DICOM file whose element claims a length near 4 GB made dicom-rs
//! reserve and zero that much (3.5 GB resident) before noticing the file ends. dicom-rs reserves
//! with `try_reserve_exact`, so refusing the allocation turns this into an ordinary error. While
//! a DICOM file is parsed, no single value can be longer than the file itself, so the cap is the
//! file's size plus a margin ([`with_allocation_limit`]); outside it, allocations are unlimited.
//! An infallible allocation over the cap would abort, which is why the cap is only set around
//! parsing that cannot legitimately need more.
//!
//! The cap works only in a program whose `#[global_allocator]` is [`GuardedAlloc`] (or
//! [`GuardedWith`] around another allocator); the library
//! does not impose it on every program that links it. The programs install it where they are
//! built: the wasm page (`web`), the trainer's binaries, the root crate's unit tests and its
//! integration tests that rely on it (`tests/fuzz_regressions.rs`), and the fuzz targets.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

/// The system allocator, refusing single allocations over the current thread's cap.
pub struct GuardedAlloc;

/// Another allocator, refusing single allocations over the current thread's cap like
/// [`GuardedAlloc`] (the trainer's: mimalloc, which keeps freed memory for reuse).
pub struct GuardedWith<A>(pub A);

thread_local! {
    static LIMIT: Cell<usize> = const { Cell::new(usize::MAX) };
    static LARGEST: Cell<usize> = const { Cell::new(0) };
}

fn limit() -> usize {
    LIMIT.try_with(Cell::get).unwrap_or(usize::MAX)
}

fn granted(size: usize, ptr: *mut u8) -> *mut u8 {
    if !ptr.is_null() {
        let _ = LARGEST.try_with(|l| l.set(l.get().max(size)));
    }
    ptr
}

/// The largest single allocation granted on this thread since the last call (then reset): lets
/// tests check that a hostile file did not make a decoder allocate much.
pub fn take_largest_allocation() -> usize {
    LARGEST.try_with(|l| l.replace(0)).unwrap_or(0)
}

// SAFETY: every call is forwarded to the inner allocator unchanged, or answered with null
// (allocation failure), which the `GlobalAlloc` contract allows.
unsafe impl<A: GlobalAlloc> GlobalAlloc for GuardedWith<A> {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if layout.size() > limit() {
            return std::ptr::null_mut();
        }
        granted(layout.size(), unsafe { self.0.alloc(layout) })
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if layout.size() > limit() {
            return std::ptr::null_mut();
        }
        granted(layout.size(), unsafe { self.0.alloc_zeroed(layout) })
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { self.0.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if new_size > limit() {
            return std::ptr::null_mut();
        }
        granted(new_size, unsafe { self.0.realloc(ptr, layout, new_size) })
    }
}

const SYSTEM: GuardedWith<System> = GuardedWith(System);

// SAFETY: forwarded to `GuardedWith<System>`, whose contract is stated above.
unsafe impl GlobalAlloc for GuardedAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        unsafe { SYSTEM.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        unsafe { SYSTEM.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { SYSTEM.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        unsafe { SYSTEM.realloc(ptr, layout, new_size) }
    }
}

/// Run `f` with single allocations on this thread capped at `bytes` (restored afterwards, also
/// if `f` panics).
pub fn with_allocation_limit<T>(bytes: usize, f: impl FnOnce() -> T) -> T {
    struct Restore(usize);
    impl Drop for Restore {
        fn drop(&mut self) {
            let _ = LIMIT.try_with(|l| l.set(self.0));
        }
    }
    let _restore = Restore(LIMIT.with(|l| l.replace(bytes.min(l.get()))));
    f()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fallible_allocations_over_the_cap_fail_and_the_cap_is_lifted_after() {
        let refused = with_allocation_limit(1 << 20, || {
            Vec::<u8>::new().try_reserve_exact(64 << 20).is_err()
        });
        assert!(refused);
        let inside = with_allocation_limit(1 << 20, || {
            Vec::<u8>::new().try_reserve_exact(1 << 10).is_ok()
        });
        assert!(inside);
        assert!(Vec::<u8>::new().try_reserve_exact(64 << 20).is_ok());
    }

    #[test]
    fn nested_caps_keep_the_smaller() {
        let refused = with_allocation_limit(1 << 10, || {
            with_allocation_limit(1 << 30, || {
                Vec::<u8>::new().try_reserve_exact(1 << 20).is_err()
            })
        });
        assert!(refused);
    }
}
