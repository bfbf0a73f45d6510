#!/usr/bin/env bash
# Time to first byte of a range in the middle of a large file, through the
# HTTP gateway of a node that does not hold it: one node holds the file
# (--replicas 1), a second one serves --http and fetches the blocks that
# cover each range from the first.
#
#   bash scripts/gateway-ttfb.sh [SIZE_GIB]     (default 4)
#
# Uses target/release/dfs-p2p (built if missing) and curl. Everything lives
# in a temporary directory, removed at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
gib=${1:-4}
bin=target/release/dfs-p2p
[[ -x $bin ]] || cargo build --release --locked
command -v curl >/dev/null || { echo "curl is needed" >&2; exit 1; }

source scripts/nodes.sh

start holder --replicas 1
wait_for "$tmp/holder.err" "listening on"
addr=$(grep -m1 "listening on" "$tmp/holder.err" | sed 's/listening on //')
start gateway --bootstrap "$addr" --http 127.0.0.1:0 --accept-replicas-from none
wait_for "$tmp/gateway.err" "http gateway on"
url=$(grep -m1 -o 'http://[0-9.:]*' "$tmp/gateway.err")

echo "writing a ${gib} GiB file and putting it on the holder..."
head -c $((gib << 30)) /dev/urandom >"$tmp/big.bin"
echo "put $tmp/big.bin" >"$tmp/holder.in"
wait_for "$tmp/holder.out" "^dfs"
ticket=$(grep -m1 "^dfs" "$tmp/holder.out")
rm "$tmp/big.bin"

size=$((gib << 30))
echo "range (1 MiB)                 first byte   whole range"
for at in 0.50 0.25 0.75 0.60; do
  start_byte=$(python3 -c "print(int($size * $at))")
  end_byte=$((start_byte + (1 << 20) - 1))
  curl -s -o /dev/null -r "$start_byte-$end_byte" \
    -w "bytes $start_byte- ($at)   %{time_starttransfer} s   %{time_total} s\n" \
    "$url/dfs/$ticket"
done
