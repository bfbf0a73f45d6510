#!/usr/bin/env bash
# A NAT lab of network namespaces: an "internet" (a bridge in a namespace
# of its own, 198.51.100.0/24), a public host on it, and two homes, each a
# host behind a router that masquerades its LAN and drops connections the
# internet opens to it.
#
#   scripts/nat-lab.sh up [cone|symmetric] [PREFIX]   build it (cone by default)
#   scripts/nat-lab.sh down [PREFIX]                   remove it
#   scripts/nat-lab.sh exec HOST [PREFIX] -- CMD...    run CMD on a host
#
# Hosts (namespaces PREFIX-NAME, PREFIX defaulting to "dfsnat"):
#   pub    198.51.100.10, on the internet
#   home1  10.0.1.10 behind router r1 (198.51.100.1)
#   home2  10.0.2.10 behind router r2 (198.51.100.2)
#
# cone: MASQUERADE keeps a flow's source port where it is free, so a
# home's mapping does not depend on where it sends (hole punching works).
# symmetric: MASQUERADE --random-fully maps every flow to a random port.
# Either way a router forwards from the internet only what belongs to a
# connection its home opened (conntrack ESTABLISHED,RELATED).
#
# Every address lives only inside the namespaces this script creates; no
# packet leaves them. Needs root, iproute2 and iptables. Fails (exit 1,
# one line on stderr naming the step) when the lab cannot be built.
set -euo pipefail

die() { echo "nat-lab: $*" >&2; exit 1; }
run() { "$@" >/dev/null 2>&1 || die "\`$*\` failed (the lab needs root, iproute2 and iptables)"; }

ns() { echo "$PREFIX-$1"; }
in_ns() { local n; n=$(ns "$1"); shift; ip netns exec "$n" "$@"; }

down() {
  for name in home1 home2 r1 r2 pub inet; do
    ip netns del "$(ns "$name")" 2>/dev/null || true
  done
}

# host NAME ADDR/LEN GATEWAY LINK-NAMESPACE LINK-PORT: a namespace whose
# eth0 is one end of a veth pair, the other end (LINK-PORT) in
# LINK-NAMESPACE.
host() {
  local name=$1 addr=$2 gw=$3 link_ns=$4 port=$5
  run ip netns add "$(ns "$name")"
  run ip -n "$(ns "$link_ns")" link add "$port" type veth peer name eth0 netns "$(ns "$name")"
  run ip -n "$(ns "$name")" addr add "$addr" dev eth0
  run ip -n "$(ns "$name")" link set eth0 up
  run ip -n "$(ns "$name")" link set lo up
  run ip -n "$(ns "$link_ns")" link set "$port" up
  if [[ -n $gw ]]; then
    run ip -n "$(ns "$name")" route add default via "$gw"
  fi
}

# router NAME WAN-ADDR LAN-ADDR/LEN HOME: a router on the internet bridge
# with its home's LAN behind it.
router() {
  local name=$1 wan=$2 lan=$3 home=$4
  local r; r=$(ns "$name")
  run ip netns add "$r"
  run ip -n "$(ns inet)" link add "$name" type veth peer name wan netns "$r"
  run ip -n "$(ns inet)" link set "$name" master br0 up
  run ip -n "$r" addr add "$wan/24" dev wan
  run ip -n "$r" link set wan up
  run ip -n "$r" link set lo up
  host "$home" "${lan%.*}.10/24" "${lan%/*}" "$name" lan
  run ip -n "$r" addr add "$lan" dev lan
  run in_ns "$name" sysctl -qw net.ipv4.ip_forward=1
  local masquerade=(-t nat -A POSTROUTING -o wan -j MASQUERADE)
  [[ $MODE == symmetric ]] && masquerade+=(--random-fully)
  run in_ns "$name" iptables "${masquerade[@]}"
  run in_ns "$name" iptables -P FORWARD DROP
  run in_ns "$name" iptables -A FORWARD -i lan -o wan -j ACCEPT
  run in_ns "$name" iptables -A FORWARD -i wan -o lan -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT
  # Nothing the internet opens reaches the router itself either.
  run in_ns "$name" iptables -A INPUT -i wan -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT
  run in_ns "$name" iptables -A INPUT -i wan -j DROP
}

up() {
  command -v ip >/dev/null || die "no \`ip\` (install iproute2)"
  command -v iptables >/dev/null || die "no \`iptables\`"
  down
  run ip netns add "$(ns inet)"
  run ip -n "$(ns inet)" link add br0 type bridge
  run ip -n "$(ns inet)" link set br0 up
  run ip -n "$(ns inet)" link set lo up
  host pub 198.51.100.10/24 "" inet pub
  run ip -n "$(ns inet)" link set pub master br0
  router r1 198.51.100.1 10.0.1.1/24 home1
  router r2 198.51.100.2 10.0.2.1/24 home2
  echo "nat lab up ($MODE): pub 198.51.100.10; home1 10.0.1.10 behind 198.51.100.1; home2 10.0.2.10 behind 198.51.100.2 (namespaces $PREFIX-*)"
}

cmd=${1:-}
shift || true
case $cmd in
  up)
    MODE=${1:-cone}
    [[ $MODE == cone || $MODE == symmetric ]] || die "mode must be cone or symmetric, not $MODE"
    PREFIX=${2:-dfsnat}
    up
    ;;
  down)
    PREFIX=${1:-dfsnat}
    down
    ;;
  exec)
    name=${1:?exec needs a host}
    shift
    PREFIX=dfsnat
    if [[ ${1:-} != -- ]]; then PREFIX=$1; shift; fi
    [[ ${1:-} == -- ]] && shift
    exec ip netns exec "$(ns "$name")" "$@"
    ;;
  *)
    echo "usage: $0 up [cone|symmetric] [PREFIX] | down [PREFIX] | exec HOST [PREFIX] -- CMD..." >&2
    exit 2
    ;;
esac
