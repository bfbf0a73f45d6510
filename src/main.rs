fn main() {
    let args: Vec<String> = std::env::args().collect();
    let size: u64 = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(1 << 30);
    let dir = tempfile_dir();
    match dfs_p2p::bench::bench_store(size, dfs_p2p::import::DEFAULT_CHUNK_SIZE, &dir) {
        Ok(r) => println!("{r}"),
        Err(e) => eprintln!("error: {e}"),
    }
    let _ = std::fs::remove_dir_all(&dir);
}

fn tempfile_dir() -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("dfs-bench-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}
