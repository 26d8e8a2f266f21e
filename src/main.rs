// The engine allocates and frees many small buffers from both worker threads (strings of
// the normalising functions, hash tables, Parquet pages); glibc's allocator spent 14% of a
// 200k-person run in malloc and free (BENCHMARKS.md). mimalloc is what DataFusion's own
// command-line tool and Ballista's binaries ship with.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    std::process::exit(klantbeeld::cli::main());
}
