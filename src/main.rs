use std::process::ExitCode;

fn main() -> ExitCode {
    large_allocations_go_back_to_the_system();
    switchyard::cli::main()
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
        libc::mallopt(libc::M_MMAP_THRESHOLD, 1 << 20);
    }
}
