// The engine allocates and frees many small buffers from both worker threads (strings of
// the normalising functions, hash tables, Parquet pages); glibc's allocator spent 14% of a
// 200k-person run in malloc and free (BENCHMARKS.md). mimalloc is what DataFusion's own
// command-line tool and Ballista's binaries ship with.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// `mi_option_purge_delay` in mimalloc.h (the crate names no constant for it).
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

fn main() {
    // mimalloc hands freed memory back to the OS a while after it is freed, and a later
    // step faults it in again, zeroed. On a virtual machine whose host takes back the
    // guest's free memory, faulting a fresh huge page costs up to 2.6 s a GB (BENCHMARKS.md):
    // with a 5 s delay a 1M-person run faulted 5.4 GB for a 2.3 GB peak, 4 s of its 56.
    // Never purging, memory freed by one step is reused by the next; the peak grows by
    // about a sixth. mimalloc's own MIMALLOC_PURGE_DELAY, when set, stays the operator's
    // choice (a delay in milliseconds gives memory back again).
    if std::env::var_os("MIMALLOC_PURGE_DELAY").is_none() {
        // SAFETY: sets one option before any thread starts; mimalloc reads it on its next purge.
        unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, -1) };
    }
    std::process::exit(klantbeeld::cli::main());
}
