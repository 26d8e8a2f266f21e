fn main() {
    std::process::exit(klantbeeld::cli::main());
}
