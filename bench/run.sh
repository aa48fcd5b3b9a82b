#!/usr/bin/env bash
# Burrow's benchmarks, each side by side with its baseline in the same run:
#   1. carriers: HTTP/2 and HTTP/3 tunnels vs raw TCP, plain rustls TLS and a
#      plain quinn stream (throughput both ways, 64-byte echo round trips);
#   2. relay memory per idle open tunnel at 1,000 tunnels, per carrier;
#   3. static-file requests per second, the front vs nginx on the same files
#      (h2load), alternating rounds; and (download) a large file's download
#      speed from each over HTTP/1.1 and HTTP/2 (curl);
#   4. messages: send -> receipt round trips through a relay over each
#      carrier vs a plain rustls TLS echo;
#   5. relay: bulk throughput A -> relay -> B vs one rustls TLS stream,
#      messages per second for 100 pairs vs 100 TLS echo connections, and
#      relay memory per idle user at 1,000 users vs idle TLS connections;
#   5b. capacity: idle users one relay holds within 2 GiB of memory, and message
#      round trips for 100 chatting users with and without 1,000 idle ones;
#   6. firewall: one decision with 10,000 allowlist entries vs a HashSet lookup;
#   7. dns: a relay's name through the firewall, cached and uncached, against a
#      local DoH server, vs the decision for an address.
# Usage: bench/run.sh [carriers|memory|rps|download|messages|relay|capacity|firewall|dns]...   (default: all)
# Environment: BENCH_ROUNDS, BENCH_MIB, BENCH_ECHOES (carriers; BENCH_MIB also relay),
#              BENCH_PARTS, BENCH_USERS, BENCH_PAIRS (relay),
#              BENCH_TUNNELS (memory, default 1000), BENCH_RPS_ROUNDS (default 9),
#              BENCH_RPS_REPEAT (h2load runs per round and server, default 10),
#              BENCH_DOWNLOAD_ROUNDS (default 5), BENCH_DOWNLOAD_MIB (default 256),
#              BENCH_CAPACITY_MIB, BENCH_CAPACITY_STEP, BENCH_IDLE, BENCH_CHAT_PAIRS (capacity).
set -euo pipefail
cd "$(dirname "$0")/.."
what=("$@"); [ ${#what[@]} -eq 0 ] && what=(carriers memory rps download messages relay capacity firewall dns)
work=$(mktemp -d); trap 'kill $(jobs -p) 2>/dev/null || true; rm -rf "$work"' EXIT

cargo build --release --quiet -p burrow-node --bin burrow
cargo bench --no-run --quiet -p burrow-obfs --bench carriers 2>/dev/null
bench_bin=$(ls -t target/release/deps/carriers-* | grep -v '\.d$' | head -n1)
burrow=target/release/burrow

start_relay() { # $1: data dir, rest: extra args; prints the line
  local dir=$1; shift
  "$burrow" relay --listen 127.0.0.1:0 --data-dir "$dir" "$@" >"$dir.out" 2>"$dir.log" &
  echo $! >"$dir.pid"
  for _ in $(seq 200); do [ -s "$dir.out" ] && break; sleep 0.05; done
  head -n1 "$dir.out"
}
rss_kib() { awk '/^VmRSS/ {print $2}' "/proc/$1/status"; }

# nginx (one worker) and a burrow relay serving the same copy of the
# built-in site with the same certificate; sets site, nport, ngx (nginx's
# master), bport and bpid. $1 names the relay's data directory.
static_servers() {
  # nginx's worker runs as an unprivileged user: the site must be readable
  # by it (mktemp makes the directory 0700; until this was found, nginx
  # answered every request of the rps benchmark with a 403 and an error-log line).
  chmod 0755 "$work"
  site=$work/site-$1; mkdir -p "$site"; cp -a obfs/site/. "$site/"; chmod -R a+rX "$site"
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 \
    -subj /CN=bench.example -addext subjectAltName=DNS:bench.example \
    -keyout "$work/key.pem" -out "$work/cert.pem" 2>/dev/null
  nport=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  cat >"$work/nginx-$1.conf" <<NGINX
daemon off; worker_processes 1; pid $work/nginx-$1.pid; error_log $work/nginx.err;
events {}
http { include /etc/nginx/mime.types; default_type application/octet-stream; access_log off;
  server_tokens off; client_body_temp_path $work/body;
  server { listen 127.0.0.1:$nport ssl http2; ssl_certificate $work/cert.pem;
    ssl_certificate_key $work/key.pem; root $site; add_header Alt-Svc 'h3=":$nport"; ma=86400'; } }
NGINX
  nginx -e "$work/nginx.err" -c "$work/nginx-$1.conf" & ngx=$!
  local line
  line=$(start_relay "$work/$1" --cert "$work/cert.pem" --key "$work/key.pem" --domain bench.example --site "$site")
  bport=$(echo "$line" | sed -E 's#^burrow-relay://[^:]+:([0-9]+)/.*#\1#')
  bpid=$(cat "$work/$1.pid")
  sleep 0.5
}

for w in "${what[@]}"; do case $w in
dns)
  echo "## Name resolution (DoH)"
  echo
  echo "Command: \`bench/run.sh dns\`"
  echo
  cargo bench --quiet -p burrow-tests --bench resolve 2>/dev/null
  echo
  ;;
firewall)
  echo "## Firewall decisions"
  echo
  echo "Command: \`bench/run.sh firewall\`"
  echo
  cargo bench --quiet -p burrow-firewall --bench decide 2>/dev/null
  echo
  ;;
capacity)
  echo "## Relay capacity"
  echo
  echo "Command: \`BENCH_CAPACITY_MIB=${BENCH_CAPACITY_MIB:-2048} BENCH_IDLE=${BENCH_IDLE:-1000} bench/run.sh capacity\`"
  echo
  cargo bench --quiet -p burrow-node --bench capacity 2>/dev/null
  echo
  ;;
relay)
  echo "## What one relay carries"
  echo
  echo "Command: \`BENCH_MIB=${BENCH_MIB:-256} BENCH_PAIRS=${BENCH_PAIRS:-100} BENCH_USERS=${BENCH_USERS:-1000} bench/run.sh relay\`"
  echo
  cargo bench --quiet -p burrow-node --bench relay 2>/dev/null
  echo
  ;;
messages)
  echo "## Messages"
  echo
  echo "Command: \`BENCH_MESSAGES=${BENCH_MESSAGES:-2000} bench/run.sh messages\`"
  echo
  cargo bench --quiet -p burrow-node --bench messages 2>/dev/null
  echo
  ;;
carriers)
  echo "## Carriers"
  echo
  echo "Command: \`BENCH_ROUNDS=${BENCH_ROUNDS:-5} BENCH_MIB=${BENCH_MIB:-256} bench/run.sh carriers\`"
  echo
  "$bench_bin" --bench
  echo
  ;;
memory)
  n=${BENCH_TUNNELS:-1000}
  echo "## Front memory per idle tunnel ($n tunnels, one connection each; a front that echoes)"
  echo
  echo "| carrier | front RSS before (KiB) | with $n tunnels (KiB) | per tunnel (KiB) |"
  echo "|---|---:|---:|---:|"
  for carrier in h2 h3; do
    dir=$work/mem-$carrier; mkdir -p "$dir"
    # The carriers alone: a front that echoes its tunnels (the relay's own
    # per-user cost, libp2p included, is `bench/run.sh relay`).
    "$bench_bin" --echo-front >"$dir.out" 2>"$dir.log" &
    pid=$!
    for _ in $(seq 200); do [ -s "$dir.out" ] && break; sleep 0.05; done
    line=$(head -n1 "$dir.out")
    sleep 0.5
    before=$(rss_kib "$pid")
    mkfifo "$dir.in"
    "$bench_bin" --idle-tunnels "$line" "$n" "$carrier" <"$dir.in" >"$dir.client" &
    client=$!
    exec 9>"$dir.in"
    for _ in $(seq 1200); do grep -q ready "$dir.client" 2>/dev/null && break; sleep 0.1; done
    sleep 1
    after=$(rss_kib "$pid")
    exec 9>&-
    wait "$client" || true
    kill "$pid"; wait "$pid" 2>/dev/null || true
    echo "| $carrier | $before | $after | $(( (after - before) / n )) |"
  done
  echo
  ;;
rps)
  rounds=${BENCH_RPS_ROUNDS:-9}
  # h2load runs per round and server: each is 10 connections of 1,000
  # requests (both servers close a connection after 1,000, as nginx does).
  repeat=${BENCH_RPS_REPEAT:-10}
  static_servers rps
  echo "## Static files: requests per second ($repeat × h2load -n 10000 -c 10 -m 10 per round, /index.html, $rounds alternating rounds, nginx with 1 worker)"
  echo
  # CPU time (user + system, in clock ticks) of a server's processes: the
  # burrow relay, or nginx's master and its worker. Requests per CPU-second
  # is the server's own cost per request, which CPU steal and h2load's
  # share of the two cores (h2load itself is often the bottleneck) move far
  # less than the wall-clock rate.
  cpu_ticks() { local f=(); for p in "$@"; do f+=("/proc/$p/stat"); done; awk '{s += $14 + $15} END {print s}' "${f[@]}"; }
  # One h2load run: "seconds succeeded".
  h2run() {
    h2load -n 10000 -c 10 -m 10 "https://127.0.0.1:$1/index.html" 2>/dev/null | awk '
      /^finished in/ { t = $3; sub(",", "", t); s = t + 0; if (t ~ /ms$/) s /= 1000; else if (t ~ /us$/) s /= 1e6 }
      /^requests:/ { ok = $8 }
      END { print s, ok }'
  }
  : >"$work/rps.txt"
  for r in $(seq "$rounds"); do
    for who in burrow nginx; do
      port=$bport; pids=$bpid
      [ $who = nginx ] && { port=$nport; pids="$ngx $(pgrep -P $ngx | paste -sd' ')"; }
      # shellcheck disable=SC2086
      before=$(cpu_ticks $pids)
      runs=$(for _ in $(seq "$repeat"); do h2run "$port"; done | awk '{t += $1; n += $2} END {print t, n}')
      # shellcheck disable=SC2086
      after=$(cpu_ticks $pids)
      echo "$who $runs $((after - before))" >>"$work/rps.txt"
    done
  done
  python3 - "$work/rps.txt" "$(getconf CLK_TCK)" "$((2 * rounds * repeat * 10000))" <<'PY'
import statistics, sys
rows = [l.split() for l in open(sys.argv[1]) if l.strip()]
hz = float(sys.argv[2])
def rounds(who):
    return [(float(t), int(n), int(ticks)) for w, t, n, ticks in rows if w == who]
def rates(who):  # requests per second of h2load's time
    return [n / t for t, n, _ in rounds(who) if t > 0]
def per_cpu(who):  # requests per CPU-second of the server's own processes
    return [n / (ticks / hz) for _, n, ticks in rounds(who) if ticks > 0]
med = statistics.median
b, n, bc, nc = rates("burrow"), rates("nginx"), per_cpu("burrow"), per_cpu("nginx")
print("| server | req/s per round | median req/s | req per CPU-second per round | median req per CPU-second |")
print("|---|---|---:|---|---:|")
print(f"| burrow front | {', '.join(f'{x:.0f}' for x in b)} | {med(b):.0f} | {', '.join(f'{x:.0f}' for x in bc)} | {med(bc):.0f} |")
print(f"| nginx 1 worker | {', '.join(f'{x:.0f}' for x in n)} | {med(n):.0f} | {', '.join(f'{x:.0f}' for x in nc)} | {med(nc):.0f} |")
succeeded = sum(r[1] for r in rounds("burrow") + rounds("nginx"))
asked = int(sys.argv[3])
print(f"\nRatio burrow / nginx (goal ≥ 1.0×): {med(b)/med(n):.2f}× in requests per second, "
      f"{med(bc)/med(nc):.2f}× in requests per CPU-second of the server "
      f"({succeeded} of {asked} requests answered 2xx/3xx)\n")
if succeeded < asked:
    print("WARNING: some requests failed; the ratio compares servers that did not serve the same pages\n")
PY
  kill "$(cat "$work/rps.pid")" $ngx 2>/dev/null || true
  ;;
download)
  rounds=${BENCH_DOWNLOAD_ROUNDS:-5}
  mib=${BENCH_DOWNLOAD_MIB:-256}
  static_servers download
  head -c "$((mib * 1024 * 1024))" /dev/urandom >"$site/big.bin"; chmod a+r "$site/big.bin"
  echo "## A large file: download speed ($mib MiB, curl, $rounds alternating rounds, nginx with 1 worker)"
  echo
  # curl reports bytes per second of the body; the file is in the page
  # cache after the first round (both servers read the same copy).
  for r in $(seq "$rounds"); do
    for proto in http1.1 http2; do
      for who in burrow nginx; do
        port=$bport; [ $who = nginx ] && port=$nport
        speed=$(curl -sk --"$proto" -o /dev/null -w '%{speed_download}' "https://127.0.0.1:$port/big.bin")
        echo "$who $proto $speed"
      done
    done
  done >"$work/download.txt"
  python3 - "$work/download.txt" <<'PY'
import statistics, sys
rows = [l.split() for l in open(sys.argv[1]) if l.strip()]
med = statistics.median
print("| protocol | burrow MB/s per round | nginx MB/s per round | median burrow / nginx |")
print("|---|---|---|---:|")
for proto in ("http1.1", "http2"):
    b = [float(s) / 1e6 for w, p, s in rows if w == "burrow" and p == proto]
    n = [float(s) / 1e6 for w, p, s in rows if w == "nginx" and p == proto]
    print(f"| {proto} | {', '.join(f'{x:.0f}' for x in b)} | {', '.join(f'{x:.0f}' for x in n)} | {med(b)/med(n):.2f}× |")
print()
PY
  kill "$(cat "$work/download.pid")" $ngx 2>/dev/null || true
  ;;
*) echo "unknown benchmark: $w" >&2; exit 2 ;;
esac; done
