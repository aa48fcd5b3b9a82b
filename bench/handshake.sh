#!/usr/bin/env bash
# Round trips from the first packet to the first tunnel byte from the relay,
# counted (not timed: loopback has no delay to time) on a tcpdump capture of
# one cold connection per carrier; and the client's JA4 from the same capture.
# Needs root (tcpdump on lo) and the PyPI packages scapy and ja4plus, which it
# installs with pip when they are missing.
#
# Counting direction changes over-counts when independent packets interleave
# (session tickets, HTTP/2 and HTTP/3 SETTINGS, QUIC ACKs and NEW_TOKEN sent
# while the client already sends its request): every count is an upper
# bound on the round trips the protocol needs, so the script captures
# several cold connections and reports the smallest count with all of them.
# Usage: bench/handshake.sh   (BENCH_HANDSHAKE_RUNS, default 7)
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -c 'import scapy, ja4plus' >/dev/null 2>&1 \
  || python3 -m pip install --quiet --disable-pip-version-check scapy ja4plus
work=$(mktemp -d); trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT
cargo build --release --quiet -p burrow-node --bin burrow
cargo bench --no-run --quiet -p burrow-obfs --bench carriers 2>/dev/null
bench_bin=$(ls -t target/release/deps/carriers-* | grep -v '\.d$' | head -n1)

# A front that echoes its tunnels: the first tunnel byte back is the
# client's own byte, as soon as the carrier can carry it.
"$bench_bin" --echo-front >"$work/line" 2>"$work/relay.log" &
for _ in $(seq 200); do [ -s "$work/line" ] && break; sleep 0.05; done
line=$(head -n1 "$work/line")
port=$(echo "$line" | sed -E 's#^burrow-relay://[^:]+:([0-9]+)/.*#\1#')

echo "## Round trips to the first tunnel byte, and JA4"
echo
runs=${BENCH_HANDSHAKE_RUNS:-7}
echo "| carrier | round trips (fewest of $runs captures) | each capture | goal |"
echo "|---|---:|---|---:|"
for carrier in h2 h3; do
  counts=()
  for run in $(seq "$runs"); do
    pcap=$work/$carrier-$run.pcap
    tcpdump -i lo --immediate-mode -U -s 0 -w "$pcap" "port $port" 2>/dev/null &
    dump=$!
    sleep 1
    first=$("$bench_bin" --first-byte "$line" "$carrier")
    sleep 0.5
    kill -INT $dump; wait $dump 2>/dev/null || true
    counts+=("$(python3 bench/count_turns.py "$pcap" "$port" "$first")")
    [ "$run" = 1 ] && cp "$pcap" "$work/keep-$carrier.pcap"
    [ "$run" = 1 ] && [ -n "${KEEP:-}" ] && cp "$pcap" "$KEEP-$carrier.pcap" && echo "$port $first" > "$KEEP-$carrier.meta"
  done
  fewest=$(printf '%s\n' "${counts[@]}" | sort -n | head -n1)
  goal=3; [ $carrier = h3 ] && goal=2
  echo "| $carrier | $fewest | ${counts[*]} | ≤ $goal |"
done
echo
echo "JA4 of the client's ClientHello (TCP carrier) next to Chrome's:"
echo
echo '```'
ja4=$(ja4plus --format csv --types ja4 analyze "$work/keep-h2.pcap" 2>/dev/null | grep -oE 't13[a-z0-9_]+' | head -n1 || true)
echo "burrow  $ja4"
echo "chrome  t13i1516h2_8daaf6152771_cb7bf5808d99"
echo '```'
