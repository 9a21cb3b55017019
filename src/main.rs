use std::alloc::{GlobalAlloc, Layout, System};
use std::process::ExitCode;

fn main() -> ExitCode {
    large_allocations_go_back_to_the_system();
    switchyard::cli::main()
}

/// The engine's allocator: mimalloc for what is smaller than [`LARGE`], the system's for the
/// rest.
///
/// The hot path makes and frees many small objects on every thread (requests, headers,
/// futures, store jobs): with glibc's malloc, `malloc`, `free` and the consolidation of its
/// free lists were a quarter of the runtime threads' CPU, and mimalloc serves the same work
/// with about a quarter less CPU per message (docs/performance.md, "The allocator"). Large
/// message bodies stay with the system: glibc gives each its own mapping and returns it when it
/// is freed, so memory follows the bodies in hand (docs/operations.md#memory); mimalloc keeps
/// freed memory a while to reuse it, which put a 16 MiB document's peak above its bound.
struct Allocator;

/// Allocations of at least this size go to the system allocator (glibc maps them directly:
/// see [`large_allocations_go_back_to_the_system`]).
const LARGE: usize = 1 << 20;

#[global_allocator]
static ALLOCATOR: Allocator = Allocator;

// SAFETY: each block is freed or resized by the allocator that made it, which the size in its
// layout tells (Rust passes the layout a block was made or last resized with).
unsafe impl GlobalAlloc for Allocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if layout.size() >= LARGE {
            unsafe { System.alloc(layout) }
        } else {
            unsafe { mimalloc::MiMalloc.alloc(layout) }
        }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if layout.size() >= LARGE {
            unsafe { System.alloc_zeroed(layout) }
        } else {
            unsafe { mimalloc::MiMalloc.alloc_zeroed(layout) }
        }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if layout.size() >= LARGE {
            unsafe { System.dealloc(ptr, layout) }
        } else {
            unsafe { mimalloc::MiMalloc.dealloc(ptr, layout) }
        }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        match (layout.size() >= LARGE, new_size >= LARGE) {
            (true, true) => unsafe { System.realloc(ptr, layout, new_size) },
            (false, false) => unsafe { mimalloc::MiMalloc.realloc(ptr, layout, new_size) },
            // Across the line the block moves to the other allocator.
            _ => {
                // SAFETY: the caller guarantees `new_size`, rounded to `layout.align()`, fits.
                let new_layout =
                    unsafe { Layout::from_size_align_unchecked(new_size, layout.align()) };
                let new = unsafe { self.alloc(new_layout) };
                if !new.is_null() {
                    unsafe {
                        std::ptr::copy_nonoverlapping(ptr, new, layout.size().min(new_size));
                        self.dealloc(ptr, layout);
                    }
                }
                new
            }
        }
    }
}

/// glibc serves an allocation from its heaps once a freed one of that size raised its
/// `mmap` threshold (up to 32 MiB); message bodies of a few MiB then stay in per-thread heaps
/// after they are freed, and the engine's resident memory grows by several bodies beyond what
/// it holds (measured: 9.5× a 24 MiB file against 7.2× with the threshold fixed). A fixed
/// 1 MiB threshold gives every large body its own mapping, returned when it is freed.
fn large_allocations_go_back_to_the_system() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets an allocator parameter; called before any thread starts.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, LARGE as libc::c_int);
    }
}
