use std::process::ExitCode;

// mimalloc: the engine allocates many small, short-lived values per message (headers, JSON
// and script values); it spends markedly less time in the allocator than glibc's malloc.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    switchyard::cli::main()
}
