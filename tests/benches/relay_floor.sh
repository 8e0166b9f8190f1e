#!/bin/bash
# The kernel's floor under the tunnel's CPU per GB on this machine: two plain TCP relays in
# a chain on loopback (socat, 64 KiB buffers, no TLS, no framing) in the places of edgestream
# and cloudstream, 2 GB from a source to a sink. Prints what the two relays cost per GB and
# how much of it is kernel time, to set beside the "cloudstream + edgestream" and "of which
# kernel" columns of `cargo bench -p tether-e2e --bench tunnel`.
#
#   apt-get install -y socat bc && tests/benches/relay_floor.sh
set -euo pipefail
B=${B:-65536}
BYTES=${BYTES:-2000000000}
TIMEFORMAT='%U %S'
dir=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$dir"' EXIT
socat -u -b "$B" TCP-LISTEN:19001,reuseaddr OPEN:/dev/null &
sleep 0.3
{ time socat -b "$B" TCP-LISTEN:19002,reuseaddr TCP:127.0.0.1:19001; } 2>"$dir/cloud" &
cloud=$!
{ time socat -b "$B" TCP-LISTEN:19003,reuseaddr TCP:127.0.0.1:19002; } 2>"$dir/edge" &
edge=$!
sleep 0.3
start=$(date +%s.%N)
head -c "$BYTES" /dev/zero | socat -u -b "$B" - TCP:127.0.0.1:19003
end=$(date +%s.%N)
wait "$cloud" "$edge"
read -r u1 s1 <"$dir/edge"
read -r u2 s2 <"$dir/cloud"
gb=$(echo "$BYTES / 1000000000" | bc -l)
echo "$BYTES bytes in $(echo "$end - $start" | bc | cut -c1-5) s;" \
    "relays: user $u1 + $u2 s, system $s1 + $s2 s;" \
    "per GB $(echo "($u1 + $s1 + $u2 + $s2) / $gb" | bc -l | cut -c1-4) s," \
    "of which kernel $(echo "($s1 + $s2) / $gb" | bc -l | cut -c1-4) s"
