// The engine allocates and frees many small buffers from both worker threads (strings of
// the normalising functions, hash tables, Parquet pages); glibc's allocator spent 14% of a
// 200k-person run in malloc and free (BENCHMARKS.md). mimalloc is what DataFusion's own
// command-line tool and Ballista's binaries ship with.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// `mi_option_purge_delay` in mimalloc.h (the crate names no constant for it).
const MI_OPTION_PURGE_DELAY: libmimalloc_sys::mi_option_t = 15;

fn main() {
    // mimalloc hands freed memory back to the OS a second after it is freed, and the next
    // step of the job faults it in again, zeroed: the kernel's page clearing was 6% of a
    // run's CPU. Five seconds spans a step, and memory still goes back, later
    // (BENCHMARKS.md: as fast as never purging, with less peak RSS).
    // SAFETY: sets one option before any thread starts; mimalloc reads it on its next purge.
    unsafe { libmimalloc_sys::mi_option_set(MI_OPTION_PURGE_DELAY, 5000) };
    std::process::exit(klantbeeld::cli::main());
}
