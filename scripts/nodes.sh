# Shared by the scripts that run dfs-p2p nodes as processes: source it
# after setting `bin` (the dfs-p2p to run). Gives `$tmp` (a temporary
# directory, removed at exit with every process in `pids`), `start NAME
# ARGS...` (a node reading commands from `$tmp/NAME.in`, a FIFO kept open,
# its stdout and stderr in `$tmp/NAME.out` and `$tmp/NAME.err`, its pid in
# `node_pid`) and `wait_for FILE PATTERN` (polls until the pattern appears,
# or fails after `timeout_s`, 120 s by default).
tmp=$(mktemp -d)
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$tmp"
}
trap cleanup EXIT

start() {
  local name=$1
  shift
  mkfifo "$tmp/$name.in"
  sleep 1000000 >"$tmp/$name.in" &
  pids+=($!)
  "$bin" --data-dir "$tmp/$name" --listen /ip4/127.0.0.1/tcp/0 --no-progress "$@" \
    <"$tmp/$name.in" >"$tmp/$name.out" 2>"$tmp/$name.err" &
  pids+=($!)
  node_pid=$!
}

wait_for() {
  local deadline=$((SECONDS + ${timeout_s:-120}))
  until grep -q -- "$2" "$1" 2>/dev/null; do
    ((SECONDS < deadline)) || { echo "timed out waiting for '$2' in $1" >&2; exit 1; }
    sleep 0.05
  done
}
