//! The peer network, in layers. Each module imports (`crate::net::…`)
//! only modules above it in this list:
//!
//! - [`limits`], [`records`], [`ledger`] and [`shares`], which import no
//!   other: connections per remote address, the DHT's bounded record
//!   store, what a node learnt of peers and lookups, and the blocks each
//!   peer may hold for its block streams;
//! - [`codec`]: the file protocol's wire format (`protocols/file-protocol.md`):
//!   its messages, their frames, and reading and writing them on streams;
//! - [`behaviour`]: transport and protocols, and every tuning constant of
//!   the swarm;
//! - [`lanes`]: block streams, a few long-lived streams per peer on which
//!   a node asks for blocks;
//! - [`event_loop`]: the one task that owns the swarm, and [`NetHandle`],
//!   the handle the rest of the program talks to it with; one file per
//!   concern (its module docs say which lives where);
//! - [`blocks`]: both sides of `GetBlock` and `Have`;
//! - [`providers`]: the providers of one download, and how busy each is;
//! - [`discover`]: who holds a root, found by DHT lookup and `Have` probe;
//! - [`get`]: fetching a download's blocks from its providers;
//! - [`replicas`]: both sides of `Replicate`, `Delete`, `Holds` and
//!   `Prove`, where copies go, and the owners' delete records in the DHT;
//! - [`repair`]: keeping each pinned root at its replica count, and the
//!   owner's leases renewed;
//! - [`inbound`]: dispatching inbound requests to their handlers.
//!
//! Naming: for each message, `rpc_<message>` sends the request and judges
//! the answer (the outbound side), and `handle_<message>` answers it (the
//! inbound side, a method of the message's service); both live in the
//! module of the message ([`blocks`]: `GetBlock`, `Have`; [`replicas`]:
//! `Replicate`, `Delete`, `Holds`).
//!
//! [`NetHandle`]: event_loop::NetHandle

pub mod behaviour;
pub mod blocks;
pub mod codec;
pub mod discover;
pub mod event_loop;
pub mod get;
pub mod inbound;
pub mod lanes;
pub mod ledger;
pub mod limits;
pub mod providers;
pub mod records;
pub mod repair;
pub mod replicas;
pub mod shares;

#[cfg(test)]
mod tests {
    use std::{collections::HashMap, fs, path::Path};

    /// The modules of `net` by the rank of their entry in the module docs'
    /// list (modules named on one entry share it).
    fn ranks() -> HashMap<String, usize> {
        let doc = include_str!("mod.rs");
        let mut ranks = HashMap::new();
        let entries = doc.lines().take_while(|l| l.starts_with("//!"));
        for (rank, entry) in entries.filter(|l| l.starts_with("//! - ")).enumerate() {
            // The modules an entry names come before its colon.
            let head = entry.split(':').next().unwrap_or_default();
            for name in head.split("[`").skip(1).filter_map(|s| s.split("`]").next()) {
                ranks.insert(name.to_string(), rank);
            }
        }
        ranks
    }

    /// A module's source, without its tests: `net/<name>.rs`, or every
    /// file of `net/<name>/`.
    fn source(name: &str) -> String {
        let net = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/net");
        let file = net.join(format!("{name}.rs"));
        let files = if file.exists() {
            vec![file]
        } else {
            let dir = fs::read_dir(net.join(name)).unwrap();
            dir.map(|e| e.unwrap().path()).collect()
        };
        let without_tests = |text: String| match text.find("#[cfg(test)]") {
            Some(at) => text[..at].to_string(),
            None => text,
        };
        files.into_iter().map(|f| without_tests(fs::read_to_string(f).unwrap())).collect()
    }

    /// Paths named by a use tree such as `a::{b, c::{d, e}}`.
    fn expand(tree: &str, prefix: &str, out: &mut Vec<String>) {
        let tree = tree.trim();
        let Some(open) = tree.find('{') else {
            if !tree.is_empty() {
                out.push(format!("{prefix}{tree}"));
            }
            return;
        };
        let head = format!("{prefix}{}", &tree[..open]);
        let inner = &tree[open + 1..tree.rfind('}').unwrap_or(tree.len())];
        let (mut depth, mut start) = (0, 0);
        for (i, c) in inner.char_indices() {
            match c {
                '{' => depth += 1,
                '}' => depth -= 1,
                ',' if depth == 0 => {
                    expand(&inner[start..i], &head, out);
                    start = i + 1;
                }
                _ => {}
            }
        }
        expand(&inner[start..], &head, out);
    }

    /// The modules of `net` a source names by `crate::` paths, in `use`
    /// trees (`crate::{net::{a, b::c}}`) and inline (`crate::net::a::X`).
    fn imports(source: &str) -> Vec<String> {
        let mut paths = Vec::new();
        for (at, _) in source.match_indices("crate::") {
            let rest = &source[at + "crate::".len()..];
            let end = rest
                .find(|c: char| !(c.is_alphanumeric() || c == '_' || c == ':'))
                .unwrap_or(rest.len());
            if !rest[end..].starts_with('{') {
                paths.push(rest[..end].to_string());
                continue;
            }
            let mut depth = 0;
            let close = rest[end..].char_indices().find_map(|(i, c)| {
                depth += match c {
                    '{' => 1,
                    '}' => -1,
                    _ => 0,
                };
                (depth == 0).then_some(end + i + 1)
            });
            expand(&rest[..close.unwrap_or(rest.len())], "", &mut paths);
        }
        let mut out: Vec<String> = paths
            .iter()
            .filter_map(|p| p.strip_prefix("net::"))
            .filter_map(|p| p.split("::").next())
            .filter(|m| !m.is_empty() && *m != "self")
            .map(str::to_string)
            .collect();
        out.sort();
        out.dedup();
        out
    }

    #[test]
    fn each_module_imports_only_modules_listed_above_it_in_the_docs() {
        let ranks = ranks();
        let declared = include_str!("mod.rs").lines().filter_map(|l| l.strip_prefix("pub mod "));
        for module in declared.map(|m| m.trim_end_matches(';')) {
            assert!(ranks.contains_key(module), "the docs' list lacks {module}");
        }
        let mut upward = Vec::new();
        for (module, rank) in &ranks {
            for target in imports(&source(module)) {
                let Some(target_rank) = ranks.get(&target) else {
                    upward.push(format!("{module} -> {target} (not in the list)"));
                    continue;
                };
                if target != *module && target_rank >= rank {
                    upward.push(format!("{module} -> {target}"));
                }
            }
        }
        assert!(upward.is_empty(), "imports the docs' order does not allow: {upward:#?}");
        // The check sees the imports it should.
        assert!(imports(&source("get")).contains(&"providers".to_string()));
        assert!(imports(&source("behaviour")).contains(&"codec".to_string()));
    }
}
