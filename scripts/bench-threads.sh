#!/usr/bin/env bash
# How many OS threads dfs-p2p uses, and what it costs in wall and CPU time:
#
#   get            a one-shot `dfs-p2p get` of a SIZE MiB file from node A,
#                  over the network (fresh data dir, bootstrapping to A)
#   gateway B cold node B's --http gateway (it holds nothing; it fetches from A)
#                  answering 64 concurrent 4 MiB range reads spread evenly over
#                  the file (at 256 MiB they tile it; smaller sizes overlap),
#                  each from a loopback address of its own (127.0.0.2 on):
#                  the gateway serves one address at most 8 reads at once
#   gateway B warm the same 64 reads again (B has the blocks now)
#   gateway A      the same 64 reads at A's own gateway (the file is local)
#
# Threads is the peak of /proc/<pid>/status `Threads:` sampled every ~20 ms.
# CPU is user+system of the measured process (the getter's whole run, from
# /usr/bin/time if present; the gateway node's /proc/<pid>/stat ticks over
# the reads). "idle" is the node's thread count just before the reads.
# Every curl must answer 206 with the whole range.
#
#   DFS_BIN=/path/to/dfs-p2p bash scripts/bench-threads.sh [SIZE_MIB]  (default 256)
#
# DFS_BIN defaults to target/release/dfs-p2p. Needs curl. Everything lives
# in a temporary directory, removed at the end with every process started.
set -euo pipefail
bin=$(realpath "${DFS_BIN:-$(dirname "$0")/../target/release/dfs-p2p}")
mib=${1:-256}
[[ -x $bin ]] || { echo "no dfs-p2p at $bin: set DFS_BIN" >&2; exit 1; }
command -v curl >/dev/null || { echo "curl is needed" >&2; exit 1; }
((mib >= 4)) || { echo "SIZE_MIB must be at least 4" >&2; exit 1; }
timeout_s=120 hz=$(getconf CLK_TCK) reads=64 len=$((4 << 20)) size=$((mib << 20))

source "$(dirname "$0")/nodes.sh"
now() { date +%s.%N; }
sub() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.2f", a - b }'; }
# Writes "peak_threads first_ticks last_ticks" to OUT once PID exits or
# $tmp/stop.PID exists. Built-ins only, so sampling forks nothing but sleep.
sample() { # pid out
  local pid=$1 peak=0 first='' last=0 t=0 k v _x st
  while [[ ! -e $tmp/stop.$pid ]]; do
    {
      while read -r k v _x; do if [[ $k == Threads: ]]; then t=$v; fi; done </proc/"$pid"/status
      read -r -a st </proc/"$pid"/stat
    } 2>/dev/null || break
    peak=$((t > peak ? t : peak)) last=$((st[13] + st[14])) first=${first:-$last}
    sleep 0.02
  done
  echo "$peak ${first:-0} $last" >"$2"
}
rows=()
row() { rows+=("$(printf '%-16s | %14s | %7s | %6s' "$@")"); }

echo "node A: holds the file (--replicas 1)"
start a --replicas 1 --http 127.0.0.1:0
a_pid=$node_pid
wait_for "$tmp/a.err" "http gateway on"
addr=$(grep -m1 -o 'listening on /ip4/127\.0\.0\.1/[^ ]*' "$tmp/a.err" | cut -d' ' -f3)
a_url=$(grep -m1 -o 'http://[0-9.:]*' "$tmp/a.err")
echo "writing a $mib MiB random file and putting it on A"
head -c "$size" /dev/urandom >"$tmp/in.bin"
echo "put $tmp/in.bin" >"$tmp/a.in"
wait_for "$tmp/a.out" "^dfs"
ticket=$(grep -m1 "^dfs" "$tmp/a.out")

echo "(a) one-shot get from A"
get=("$bin" get "$ticket" -o "$tmp/out.bin" --bootstrap "$addr" --data-dir "$tmp/getter" --no-progress)
timer=$(command -v /usr/bin/time || true)
t0=$(now)
if [[ -n $timer ]]; then
  "$timer" -f '%U %S' -o "$tmp/get.time" "${get[@]}" 2>"$tmp/get.err" &
  tpid=$! gpid=''
  pids+=($tpid)
  while [[ -z $gpid && -e /proc/$tpid ]]; do gpid=$(cat /proc/$tpid/task/$tpid/children 2>/dev/null || true); done
  gpid=${gpid%% *}
else
  "${get[@]}" 2>"$tmp/get.err" &
  tpid=$! gpid=$tpid
  pids+=($tpid)
fi
[[ -n $gpid ]] && { sample "$gpid" "$tmp/get.sample" & pids+=($!); }
wait "$tpid" || { cat "$tmp/get.err" >&2; exit 1; }
t1=$(now)
wait "${pids[-1]}" || true
read -r peak first last <"$tmp/get.sample" || peak='?' last=0
if [[ -n $timer ]]; then
  cpu=$(awk '{ printf "%.2f", $1 + $2 }' "$tmp/get.time")
else
  cpu=$(awk -v t="$last" -v hz="$hz" 'BEGIN { printf "%.2f", t / hz }')
fi
cmp -s "$tmp/in.bin" "$tmp/out.bin" || { echo "get: output differs from input" >&2; exit 1; }
row "get" "$peak" "$(sub "$t1" "$t0")" "$cpu"

echo "node B: HTTP gateway, bootstrapping to A"
start b --bootstrap "$addr" --http 127.0.0.1:0 --accept-replicas-from none
b_pid=$node_pid
wait_for "$tmp/b.err" "http gateway on"
b_url=$(grep -m1 -o 'http://[0-9.:]*' "$tmp/b.err")
echo peers >"$tmp/b.in"
wait_for "$tmp/b.out" "${addr##*/}" # A's peer id in B's peer table

stride=$(((size - len) / (reads - 1)))
gateway_reads() { # label url pid
  local label=$1 url=$2 pid=$3 i s cp=() idle
  idle=$(awk '/^Threads:/ { print $2 }' /proc/"$pid"/status)
  rm -f "$tmp/stop.$pid"
  sample "$pid" "$tmp/$label.sample" &
  local spid=$!
  pids+=($spid)
  t0=$(now)
  for ((i = 0; i < reads; i++)); do
    s=$((i * stride))
    curl -s -o /dev/null -r "$s-$((s + len - 1))" -w '%{http_code} %{size_download}\n' \
      --interface "127.0.0.$((i + 2))" "$url/dfs/$ticket" >"$tmp/$label.curl.$i" &
    cp+=($!)
  done
  pids+=("${cp[@]}")
  for i in "${cp[@]}"; do wait "$i" || true; done
  t1=$(now)
  touch "$tmp/stop.$pid"
  wait "$spid" || true
  read -r peak first last <"$tmp/$label.sample"
  local ok
  ok=$(cat "$tmp/$label".curl.* | grep -c "^206 $len\$" || true)
  ((ok == reads)) || echo "WARNING: $label: only $ok of $reads reads answered 206 with $len bytes" >&2
  row "$label" "$peak (idle $idle)" "$(sub "$t1" "$t0")" \
    "$(awk -v d=$((last - first)) -v hz="$hz" 'BEGIN { printf "%.2f", d / hz }')"
}
echo "(b) $reads concurrent 4 MiB range reads: B cold, B warm, A local"
gateway_reads "gateway B cold" "$b_url" "$b_pid"
gateway_reads "gateway B warm" "$b_url" "$b_pid"
gateway_reads "gateway A" "$a_url" "$a_pid"

echo
echo "$mib MiB file, $(nproc) CPUs, $("$bin" --version)"
printf '%-16s | %14s | %7s | %6s\n' scenario "peak threads" "wall s" "CPU s"
printf '%s\n' "${rows[@]}"
