#!/usr/bin/env bash
# End-to-end test of the three-node network in docker-compose.yml:
# build the image, start node1..node3 under a compose project of its own,
# then put/get across containers, kill the uploader, restart a node, cut one
# node off the network and heal it. Everything it creates (containers,
# network, volumes, image) is removed on exit, pass or fail.
#
# usage: scripts/docker-test.sh
# env:
#   DFS_BIN   an already built dfs-p2p to put in the image (e.g.
#             target/debug/dfs-p2p left by `cargo test`); default: the
#             release binary, built by `cargo build --release` if needed
#   CI        set (as CI sets it): no Docker engine is a failure, not a skip
#   DFS_TEST_START_TIMEOUT  seconds for nodes to come up (default 90)
#   DFS_TEST_OP_TIMEOUT     seconds for one put/get (default 120)
#   DFS_TEST_HEAL_TIMEOUT   seconds for a reconnected node to serve (default 120)
#
# Contract with the binary: a node prints each listen address on stderr (or
# stdout) as a line containing `/tcp/<port>/p2p/<peer id>`; `dfs-p2p put`
# prints the ticket as its last stdout line; `dfs-p2p get -o OUT` writes OUT;
# both exit non-zero on failure, and a get that cannot find the data gives up
# by itself (well within DFS_TEST_OP_TIMEOUT) with an error on stderr.
set -euo pipefail

cd "$(dirname "$0")/.."
repo=$PWD

# ---- is there a Docker engine? ----------------------------------------------
no_docker() {
    echo "docker-test: $1"
    case ${CI:-} in '' | 0 | false) exit 0 ;; *) exit 1 ;; esac
}
command -v docker >/dev/null || no_docker "no docker command; docker tests not run"
timeout 30 docker info >/dev/null 2>&1 || no_docker "no Docker engine reachable; docker tests not run"
if docker compose version >/dev/null 2>&1; then
    compose_cmd=(docker compose)
elif command -v docker-compose >/dev/null; then
    compose_cmd=(docker-compose)
else
    no_docker "no docker compose / docker-compose; docker tests not run"
fi

start_timeout=${DFS_TEST_START_TIMEOUT:-90}
op_timeout=${DFS_TEST_OP_TIMEOUT:-120}
heal_timeout=${DFS_TEST_HEAL_TIMEOUT:-120}

# A project, an image tag and host ports of its own, so the test never
# touches a user's network (or another run's) and never clashes on a port.
project="dfstest$$${RANDOM}"
image="dfs-p2p:${project}"
export DFS_IMAGE=$image DFS_NODE1_PORT='' DFS_NODE2_PORT='' DFS_NODE3_PORT=''
compose=("${compose_cmd[@]}" -p "$project" -f "$repo/docker-compose.yml")
declare -A port=([node1]=3000 [node2]=4000 [node3]=5000)
declare -A cid=()
nodes=(node1 node2 node3)

tmp=$(mktemp -d)
passed=0
failed=0

say() { printf 'docker-test: %s\n' "$*" >&2; }
ok() {
    passed=$((passed + 1))
    printf 'ok %d - %s\n' "$passed" "$*"
}
die() {
    say "FAIL: $*"
    failed=1
    exit 1
}

cleanup() {
    local rc=$?
    set +e
    trap - EXIT INT TERM
    if [[ $rc -ne 0 ]]; then
        failed=1
        say "failed (exit $rc); last log lines of each node:"
        "${compose[@]}" logs --no-color --tail 40 >&2 2>/dev/null
        [[ -s $tmp/err ]] && { say "stderr of the last client command:"; tail -n 20 "$tmp/err" >&2; }
    fi
    say "tearing down project $project"
    "${compose[@]}" down -v --remove-orphans -t 5 >/dev/null 2>&1
    docker rmi -f "$image" >/dev/null 2>&1
    rm -rf "$tmp"
    echo "docker: $passed passed, $failed failed"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }

# wait_listening SINCE NODE... : poll each node's log (from SINCE, a unix
# time) until it shows its listen address with a peer id.
wait_listening() {
    local since=$1 deadline node
    shift
    deadline=$(($(date +%s) + start_timeout))
    for node in "$@"; do
        until docker logs --since "$since" "${cid[$node]}" 2>&1 |
            grep -E "/tcp/${port[$node]}/p2p/[[:alnum:]]+" >/dev/null; do
            if [[ $(docker inspect -f '{{.State.Running}}' "${cid[$node]}") != true ]]; then
                die "$node exited: $(docker logs --tail 5 "${cid[$node]}" 2>&1 | tr '\n' ' ')"
            fi
            (($(date +%s) < deadline)) || die "$node printed no listen address within ${start_timeout}s"
            sleep 0.5
        done
    done
}

# client NODE SUBCOMMAND ARGS... : a one-shot dfs-p2p run inside NODE's
# container, with a fresh data dir, bootstrapping to NODE itself over
# loopback, so the operation goes "through" NODE. Stdout goes to $tmp/out,
# stderr to $tmp/err; bounded by DFS_TEST_OP_TIMEOUT (exit 124 if it hit it).
nclient=0
client() {
    local node=$1
    shift
    nclient=$((nclient + 1))
    local rc=0
    timeout -k 10 "$op_timeout" "${compose[@]}" exec -T "$node" dfs-p2p "$@" \
        --data-dir "/tmp/client-$nclient" \
        --bootstrap "/ip4/127.0.0.1/tcp/${port[$node]}" >"$tmp/out" 2>"$tmp/err" || rc=$?
    if [[ $rc -eq 124 || $rc -eq 137 ]]; then
        echo "docker-test: dfs-p2p $1 through $node still running after ${op_timeout}s" >>"$tmp/err"
    fi
    return "$rc"
}

# put NODE FILE [ARGS...] : sets $ticket (not run in a subshell, so that
# client's counter, and with it every client's data dir, stays unique)
ticket=
put() {
    local node=$1 file=$2
    shift 2
    ticket=
    client "$node" put - "$@" <"$file" || return 1
    ticket=$(grep -v '^[[:space:]]*$' "$tmp/out" | tail -n 1 | tr -d '[:space:]')
    [[ -n $ticket ]] || { say "put printed no ticket"; return 1; }
}

# get_cmp NODE TICKET ORIGINAL : get through NODE and compare the bytes
get_cmp() {
    local node=$1 ticket=$2 orig=$3 out="/tmp/get-$((nclient + 1)).out"
    client "$node" get "$ticket" -o "$out" </dev/null || return
    rm -f "$tmp/got"
    docker cp "${cid[$node]}:$out" "$tmp/got" >/dev/null || return 1
    cmp "$orig" "$tmp/got" >&2 || { say "get through $node returned different bytes"; return 1; }
}

# ---- a clean checkout: compose stops at once, naming the command to run ------
# No DFS_STAGED (no .env, as in a fresh clone): `up -d --build` must fail
# before it creates a network, a volume or a container.
bare="${project}bare"
: >"$tmp/empty.env"
rc=0
env -u DFS_STAGED "${compose_cmd[@]}" -p "$bare" --env-file "$tmp/empty.env" -f "$repo/docker-compose.yml" \
    up -d --build >"$tmp/bare.out" 2>&1 || rc=$?
[[ $rc -ne 0 ]] || die "compose up without a staged image succeeded"
grep -q 'scripts/docker-image.sh' "$tmp/bare.out" || die "compose up without a staged image did not name scripts/docker-image.sh: $(cat "$tmp/bare.out")"
left=$(docker ps -aq --filter "label=com.docker.compose.project=$bare"
    docker network ls -q --filter "label=com.docker.compose.project=$bare"
    docker volume ls -q --filter "label=com.docker.compose.project=$bare")
[[ -z $left ]] || die "compose up without a staged image left things behind: $left"
ok "compose up in a clean checkout stops at once: $(grep -o 'run scripts/docker-image.sh[^}]*' "$tmp/bare.out" | head -n 1 | tr -d "'\"")"

# ---- image ------------------------------------------------------------------
t0=$(now)
scripts/docker-image.sh ${DFS_BIN:+"$DFS_BIN"}
ok "image $image built in $(elapsed "$t0")s"

# ---- three nodes --------------------------------------------------------------
t0=$(now)
"${compose[@]}" up -d --no-build >&2
for node in "${nodes[@]}"; do
    cid[$node]=$("${compose[@]}" ps -q "$node")
    [[ -n ${cid[$node]} ]] || die "no container for $node"
done
net=$(docker inspect -f '{{range $k, $v := .NetworkSettings.Networks}}{{$k}}{{"\n"}}{{end}}' "${cid[node1]}" |
    grep -E '_dfs$' | head -n 1)
[[ -n $net ]] || die "cannot find the compose network of node1"
wait_listening "$t0" "${nodes[@]}"
ok "node1..node3 listening $(elapsed "$t0")s after compose up"

# ---- the prompt: attach on a terminal, run a command, detach --------------------
# As the README says: `docker attach`, a command, Ctrl-P Ctrl-Q; the node
# keeps running. tmux gives attach the terminal a person would have.
if command -v tmux >/dev/null; then
    tsock="$tmp/tmux.sock"
    tmux -S "$tsock" new-session -d -x 200 -y 50 \
        "docker attach ${cid[node1]}; echo attach-exited-\$?; sleep 60"
    pane() { tmux -S "$tsock" capture-pane -p -S -100; }
    deadline=$(($(date +%s) + 30))
    # Keys typed before attach is connected are lost: type until answered.
    until pane | grep -q 'peer id'; do
        (($(date +%s) < deadline)) || die "attached prompt of node1 did not answer stat: $(pane | tr -s '\n' ' ')"
        tmux -S "$tsock" send-keys 'stat' Enter
        sleep 1
    done
    tmux -S "$tsock" send-keys C-p C-q
    until pane | grep -q 'read escape sequence'; do
        (($(date +%s) < deadline)) || die "Ctrl-P Ctrl-Q did not detach from node1: $(pane | tr -s '\n' ' ')"
        sleep 0.5
    done
    tmux -S "$tsock" kill-server 2>/dev/null || true
    [[ $(docker inspect -f '{{.State.Running}}' "${cid[node1]}") == true ]] || die "node1 stopped after detaching"
    ok "docker attach reaches node1's prompt; Ctrl-P Ctrl-Q detaches and node1 keeps running"
else
    case ${CI:-} in
    '' | 0 | false) say "no tmux: the attach test skipped" ;;
    *) die "no tmux: the attach test cannot run" ;;
    esac
fi

# ---- put through node3, get through node2 --------------------------------------
head -c $((3 * 1024 * 1024)) /dev/urandom >"$tmp/a.bin"
t0=$(now)
for attempt in 1 2 3; do
    # The first put may race the nodes' bootstrap; retry a bounded few times.
    if put node3 "$tmp/a.bin" --replicas 3; then break; fi
    say "put attempt $attempt failed: $(tail -n 1 "$tmp/err")"
    ticket=
    sleep 2
done
[[ -n $ticket ]] || die "put of a 3 MiB file through node3 failed"
ticket_a=$ticket
ok "put 3 MiB through node3 in $(elapsed "$t0")s (attempt $attempt): ${ticket_a:0:60}..."

t0=$(now)
get_cmp node2 "$ticket_a" "$tmp/a.bin" || die "get through node2 failed"
ok "get through node2 returned the same 3 MiB in $(elapsed "$t0")s"

# ---- a get that would not fit stops before it fills the disk --------------------
# A container whose only writable disk is a 32 MiB tmpfs gets a 40 MiB file.
head -c $((40 * 1024 * 1024)) /dev/urandom >"$tmp/big.bin"
put node3 "$tmp/big.bin" --replicas 2 || die "put of 40 MiB through node3 failed"
rc=0
timeout -k 10 "$op_timeout" docker run --rm --network "$net" --tmpfs /small:rw,size=32m "$image" \
    get "$ticket" -o /small/out --data-dir /small/data --bootstrap /dns4/node1/tcp/3000 \
    >"$tmp/out" 2>"$tmp/err" </dev/null || rc=$?
[[ $rc -eq 1 ]] || die "a get into a 32 MiB disk of a 40 MiB file exited $rc"
grep -q '^error: not enough disk space in /small' "$tmp/err" ||
    die "a get into a disk too small did not say so: $(cat "$tmp/err")"
ok "a 40 MiB get into a 32 MiB disk stops at once: $(grep '^error:' "$tmp/err")"

# ---- kill the uploader ----------------------------------------------------------
docker kill "${cid[node3]}" >/dev/null
for node in node1 node2; do
    t0=$(now)
    get_cmp "$node" "$ticket_a" "$tmp/a.bin" || die "get through $node after killing node3 failed"
    ok "node3 killed: get through $node still works ($(elapsed "$t0")s)"
done

# ---- restart node1: its pinned data survives -----------------------------------
t0=$(now)
docker restart -t 10 "${cid[node1]}" >/dev/null
wait_listening "$t0" node1
ok "node1 restarted and listening in $(elapsed "$t0")s"
docker stop -t 10 "${cid[node2]}" >/dev/null
t0=$(now)
get_cmp node1 "$ticket_a" "$tmp/a.bin" || die "get through restarted node1, alone, failed"
ok "node1 alone (node2 stopped, node3 dead) serves the file after its restart ($(elapsed "$t0")s)"

t0=$(now)
docker start "${cid[node2]}" "${cid[node3]}" >/dev/null
wait_listening "$t0" node2 node3
ok "node2 and node3 back up in $(elapsed "$t0")s"

# ---- cut node2 off the network ----------------------------------------------------
docker network disconnect "$net" "${cid[node2]}"
head -c $((1024 * 1024)) /dev/urandom >"$tmp/b.bin"
t0=$(now)
put node3 "$tmp/b.bin" --replicas 2 || die "put through node3 with node2 cut off failed"
ticket_b=$ticket
ok "node2 cut off: put 1 MiB through node3 in $(elapsed "$t0")s"

t0=$(now)
rc=0
client node2 get "$ticket_b" -o /tmp/cut-off.out </dev/null || rc=$?
took=$(elapsed "$t0")
[[ $rc -ne 0 ]] || die "get through the cut-off node2 succeeded"
if [[ $rc -eq 124 || $rc -eq 137 ]]; then
    die "get through the cut-off node2 did not give up within ${op_timeout}s"
fi
[[ -s $tmp/err ]] || die "get through the cut-off node2 failed without an error message"
ok "get through cut-off node2 fails in ${took}s: $(grep -v '^[[:space:]]*$' "$tmp/err" | tail -n 1)"

for node in node1 node3; do
    t0=$(now)
    get_cmp "$node" "$ticket_b" "$tmp/b.bin" || die "get through $node with node2 cut off failed"
    ok "node2 cut off: get through $node works ($(elapsed "$t0")s)"
done

# ---- heal ------------------------------------------------------------------------------
# The service name must be given back as an alias, or node2 is unreachable by name.
docker network connect --alias node2 "$net" "${cid[node2]}"
t0=$(now)
deadline=$(($(date +%s) + heal_timeout))
until get_cmp node2 "$ticket_b" "$tmp/b.bin"; do
    (($(date +%s) < deadline)) || die "node2 did not serve again within ${heal_timeout}s of reconnecting"
    say "node2 not serving yet: $(grep -v '^[[:space:]]*$' "$tmp/err" | tail -n 1)"
    sleep 3
done
ok "node2 reconnected: get through it works again $(elapsed "$t0")s later"
