#!/usr/bin/env bash
# Build the dfs-p2p Docker image on a machine with a Docker engine and no
# image registry: the image is FROM scratch (nothing is pulled) and holds a
# dfs-p2p binary built on this host, plus, when that binary is dynamically
# linked, exactly the shared libraries `ldd` lists for it.
#
# usage: scripts/docker-image.sh [BINARY]
#   BINARY  an already built dfs-p2p (any profile; static or dynamic), e.g.
#           target/debug/dfs-p2p left by `cargo test`. Also taken from $DFS_BIN.
#           Default: `cargo build --release --locked --bin dfs-p2p` and use that.
# env:
#   DFS_IMAGE  tag to build (default dfs-p2p:local, the tag docker-compose.yml uses)
#
# The binary and its libraries are staged in target/docker/rootfs, the only
# part of the repository the build context sends (see .dockerignore). The
# script then records DFS_STAGED in .env, which docker-compose.yml requires:
# without it `docker-compose up` stops at once and names this script.
set -euo pipefail

cd "$(dirname "$0")/.."
image=${DFS_IMAGE:-dfs-p2p:local}
bin=${1:-${DFS_BIN:-}}

if [[ -z $bin ]]; then
    echo "docker-image: cargo build --release --locked --bin dfs-p2p" >&2
    # The JSON messages name the executable wherever the target dir is.
    bin=$(cargo build --release --locked --bin dfs-p2p --message-format=json-render-diagnostics |
        sed -n 's/.*"executable":"\([^"]*\/dfs-p2p\)".*/\1/p' | tail -n 1)
fi
if [[ ! -x $bin ]]; then
    echo "docker-image: no executable dfs-p2p binary at '${bin}'" >&2
    exit 1
fi

root=target/docker/rootfs
rm -rf "$root"
mkdir -p "$root/usr/local/bin" "$root/tmp" "$root/data" "$root/etc"
chmod 1777 "$root/tmp"
# Keep the symbol table (panic backtraces name functions) but drop DWARF:
# a debug binary shrinks from ~100 MB to ~20 MB.
if command -v strip >/dev/null; then
    strip --strip-debug -o "$root/usr/local/bin/dfs-p2p" "$bin"
else
    cp "$bin" "$root/usr/local/bin/dfs-p2p"
fi

# A dynamically linked binary: copy every library ldd resolves, and the
# program interpreter, to the same absolute paths inside the image. A static
# binary makes ldd print "statically linked" / "not a dynamic executable" and
# no path, so nothing is copied.
nlibs=0
while read -r lib; do
    [[ -n $lib ]] || continue
    mkdir -p "$root$(dirname "$lib")"
    cp -L "$lib" "$root$lib"
    nlibs=$((nlibs + 1))
done < <(ldd "$bin" 2>/dev/null | awk '$2 == "=>" && $3 ~ /^\// { print $3 } $1 ~ /^\// { print $1 }' || true)
if file -L "$bin" 2>/dev/null | grep -q 'dynamically linked' && [[ $nlibs -eq 0 ]]; then
    echo "docker-image: $bin is dynamically linked but ldd listed no libraries" >&2
    exit 1
fi
# No /etc/nsswitch.conf: glibc's built-in default (dns, files) is what we
# want; docker bind-mounts /etc/hosts and /etc/resolv.conf at run time.

echo "docker-image: staged $(du -sh "$root" | cut -f1) from $bin ($nlibs shared libraries)" >&2
# Tell docker-compose the stage exists (keeping any other lines of .env).
touch .env
grep -v '^DFS_STAGED=' .env >.env.new || true
echo "DFS_STAGED=$root" >>.env.new
mv .env.new .env
docker build --quiet -t "$image" . >/dev/null
echo "docker-image: built $image ($(docker image inspect -f '{{.Size}}' "$image") bytes)" >&2
