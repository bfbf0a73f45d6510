fn main() -> std::process::ExitCode {
    dfs_p2p::cli::main()
}
