#!/usr/bin/env bash
# Side-by-side proxy benchmark on loopback: the same upstream (teal
# sample-app, release build) measured with wrk directly, through teal router,
# through nginx and through HAProxy, each proxy with the same number of
# workers/threads. Then the route-swap timing bench. Writes
# docs/benchmarks.md.
#
# Usage: [ROUNDS=3] [WORKERS=2] [TEAL_BIN=path] bench/router.sh [DURATION_SECONDS] [CONNECTIONS]
# TEAL_BIN: a release teal binary to measure instead of building one.
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION="${1:-10}"
CONNS="${2:-64}"
WORKERS="${WORKERS:-2}"
WRK_THREADS="${WRK_THREADS:-2}"
ROUNDS="${ROUNDS:-3}"
export CARGO_BUILD_JOBS="${CARGO_BUILD_JOBS:-2}"

need=()
command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || need+=(nginx-light)
command -v haproxy >/dev/null || [ -x /usr/sbin/haproxy ] || need+=(haproxy)
command -v wrk >/dev/null || need+=(wrk)
if [ "${#need[@]}" -gt 0 ]; then
  echo "==> installing ${need[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
fi
NGINX="$(command -v nginx || echo /usr/sbin/nginx)"
HAPROXY="$(command -v haproxy || echo /usr/sbin/haproxy)"

if [ -n "${TEAL_BIN:-}" ]; then
  TEAL="$TEAL_BIN"
else
  echo "==> release build"
  cargo build --release -q -p teal
  TEAL="$(pwd)/target/release/teal"
fi

WORK="$(mktemp -d)"
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() {
  for _ in $(seq 1 100); do
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    sleep 0.05
  done
  echo "port $1 did not open" >&2
  cat "$WORK"/*.log >&2 2>/dev/null || true
  return 1
}

APP_PORT="$(free_port)"
TEAL_PORT="$(free_port)"
TEAL_GENERAL_PORT="$(free_port)"
ADMIN_PORT="$(free_port)"
NGINX_PORT="$(free_port)"
HAPROXY_PORT="$(free_port)"

"$TEAL" sample-app --color blue --version v1 --port "$APP_PORT" >/dev/null &
PIDS+=($!)
APP_PID=$!

echo -n "bench-token" >"$WORK/token"
cat >"$WORK/routes.json" <<EOF
{"active":"blue","endpoints":{"blue":["127.0.0.1:$APP_PORT"]}}
EOF
"$TEAL" router --workers "$WORKERS" --listen "127.0.0.1:$TEAL_PORT" \
  --admin "127.0.0.1:$ADMIN_PORT" --admin-token-file "$WORK/token" \
  --routes "$WORK/routes.json" >/dev/null &
PIDS+=($!)
TEAL_PID=$!
# The same router with every request on the general (hyper) path, to show
# what the lean HTTP/1.1 path gains.
GENERAL_ADMIN_PORT="$(free_port)"
"$TEAL" router --workers "$WORKERS" --listen "127.0.0.1:$TEAL_GENERAL_PORT" \
  --admin "127.0.0.1:$GENERAL_ADMIN_PORT" --admin-token-file "$WORK/token" \
  --routes "$WORK/routes.json" --http1-path general >/dev/null &
PIDS+=($!)
TEAL_GENERAL_PID=$!

cat >"$WORK/nginx.conf" <<EOF
worker_processes $WORKERS;
pid $WORK/nginx.pid;
error_log $WORK/nginx-error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path $WORK/nginx-body;
  proxy_temp_path $WORK/nginx-proxy;
  fastcgi_temp_path $WORK/nginx-fastcgi;
  uwsgi_temp_path $WORK/nginx-uwsgi;
  scgi_temp_path $WORK/nginx-scgi;
  upstream app { server 127.0.0.1:$APP_PORT; keepalive 256; }
  server {
    listen 127.0.0.1:$NGINX_PORT;
    location / {
      proxy_pass http://app;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header Host \$host;
      proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for;
      proxy_set_header X-Forwarded-Proto \$scheme;
    }
  }
}
EOF
"$NGINX" -c "$WORK/nginx.conf" -g "daemon off;" &
PIDS+=($!)
NGINX_PID=$!

cat >"$WORK/haproxy.cfg" <<EOF
global
  nbthread $WORKERS
  maxconn 4096
defaults
  mode http
  timeout connect 2s
  timeout client 60s
  timeout server 30s
  option http-keep-alive
  option forwardfor
  http-reuse always
frontend fe
  bind 127.0.0.1:$HAPROXY_PORT
  default_backend app
backend app
  server app1 127.0.0.1:$APP_PORT
EOF
"$HAPROXY" -f "$WORK/haproxy.cfg" -db >/dev/null 2>"$WORK/haproxy.log" &
PIDS+=($!)
HAPROXY_PID=$!

for p in "$APP_PORT" "$TEAL_PORT" "$TEAL_GENERAL_PORT" "$NGINX_PORT" "$HAPROXY_PORT"; do wait_port "$p"; done

# CPU time (user + system, clock ticks) used so far by a process and its
# children that are still running (nginx's workers).
cpu_ticks() {
  local total=0 pid
  for pid in "$1" $(pgrep -P "$1" || true); do
    # Fields 14 and 15 of /proc/PID/stat, after the command name in parentheses.
    total=$((total + $(sed 's/^.*) //' "/proc/$pid/stat" | awk '{print $12 + $13}')))
  done
  echo "$total"
}

# wrk output -> "rps p50_ms p99_ms non2xx socket_errors cpu_us_per_request"
measure() {
  local port="$1" pid="$2"
  wrk -t"$WRK_THREADS" -c"$CONNS" -d2s "http://127.0.0.1:$port/" >/dev/null # warm-up
  local before after
  before="$(cpu_ticks "$pid")"
  wrk -t"$WRK_THREADS" -c"$CONNS" -d"${DURATION}s" --latency "http://127.0.0.1:$port/" >"$WORK/wrk-$port.txt"
  after="$(cpu_ticks "$pid")"
  python3 - "$WORK/wrk-$port.txt" "$((after - before))" "$(getconf CLK_TCK)" "$DURATION" <<'PY'
import re, sys
text = open(sys.argv[1]).read()
ticks, hz, secs = int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
def ms(label):
    m = re.search(r"^\s*%s\s+([\d.]+)(us|ms|s)\s*$" % re.escape(label), text, re.M)
    v, unit = float(m.group(1)), m.group(2)
    return v / 1000 if unit == "us" else v * 1000 if unit == "s" else v
rps = float(re.search(r"Requests/sec:\s+([\d.]+)", text).group(1))
errors = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
sock = re.search(r"Socket errors: (.*)", text)
requests = int(re.search(r"(\d+) requests in", text).group(1))
cpu_us = ticks / hz * 1e6 / requests if requests else 0.0
print(f"{rps:.0f} {ms('50%'):.3f} {ms('99%'):.3f} {errors.group(1) if errors else 0} {'yes' if sock else 'no'} {cpu_us:.1f}")
PY
}

# ROUNDS rounds, each measuring every target in turn, so a burst of other
# load on the machine hits all targets alike; each figure is the median
# over the rounds.
declare -A ALL
LOAD_BEFORE="$(cut -d' ' -f1-3 /proc/loadavg)"
for round in $(seq 1 "$ROUNDS"); do
  for name in direct teal teal_general nginx haproxy; do
    case "$name" in
      direct) port="$APP_PORT" pid="$APP_PID" ;;
      teal) port="$TEAL_PORT" pid="$TEAL_PID" ;;
      teal_general) port="$TEAL_GENERAL_PORT" pid="$TEAL_GENERAL_PID" ;;
      nginx) port="$NGINX_PORT" pid="$NGINX_PID" ;;
      haproxy) port="$HAPROXY_PORT" pid="$HAPROXY_PID" ;;
    esac
    echo "==> round $round/$ROUNDS: wrk against $name (port $port)"
    out="$(measure "$port" "$pid")"
    ALL[$name]+="$out;"
    echo "    rps p50_ms p99_ms non2xx socket_errors cpu_us_per_request: $out"
  done
done
LOAD_AFTER="$(cut -d' ' -f1-3 /proc/loadavg)"

# "rps p50 p99 non2xx sockerr cpu;" per round -> medians, summed non-2xx,
# any socket errors, median CPU per request, and the per-round throughputs.
median_of() {
  python3 - "$1" <<'PY'
import statistics, sys
rows = [r.split() for r in sys.argv[1].split(";") if r.strip()]
med = lambda i: statistics.median(float(r[i]) for r in rows)
print(f"{med(0):.0f} {med(1):.3f} {med(2):.3f} {sum(int(r[3]) for r in rows)} "
      f"{'yes' if any(r[4] == 'yes' for r in rows) else 'no'} {med(5):.1f} {'/'.join(r[0] for r in rows)}")
PY
}
declare -A R
for name in direct teal teal_general nginx haproxy; do
  R[$name]="$(median_of "${ALL[$name]}")"
done

echo "==> swap timing (in-process, release)"
SWAP_OUT="$(cargo bench -q -p teal-router --bench swap 2>/dev/null | grep "^swap")"
echo "$SWAP_OUT"

ratio() { python3 -c "import sys; a,b=float(sys.argv[1]),float(sys.argv[2]); print(f'{a/b:.2f}' if b else 'n/a')" "$1" "$2"; }
read -r t_rps t_p50 t_p99 _ _ t_cpu _ <<<"${R[teal]}"
read -r n_rps n_p50 n_p99 _ _ n_cpu _ <<<"${R[nginx]}"
read -r h_rps h_p50 h_p99 _ _ h_cpu _ <<<"${R[haproxy]}"
read -r g_rps g_p50 g_p99 _ _ g_cpu _ <<<"${R[teal_general]}"

{
  echo "# Benchmarks"
  echo
  echo "All figures come from one run of \`ROUNDS=$ROUNDS bench/router.sh $DURATION $CONNS\` on one machine"
  echo "($(nproc) cores, $(uname -sr)); wrk, the proxies and the upstream share those cores, so"
  echo "absolute numbers are low and only the ratios between peers of the same run mean anything."
  echo "Load average (1, 5, 15 min) before the measurements: $LOAD_BEFORE; after: $LOAD_AFTER."
  echo
  echo "## Proxy throughput and latency"
  echo
  echo "Upstream: \`teal sample-app\` (release build) answering \`GET /\` with a small JSON body."
  echo "Each proxy runs $WORKERS workers/threads (teal: \`--workers $WORKERS\`, lean HTTP/1.1 path unless noted; nginx:"
  echo "\`worker_processes $WORKERS\` with upstream keepalive; HAProxy: \`nbthread $WORKERS\`, \`http-reuse always\`)."
  echo "Load: \`wrk -t$WRK_THREADS -c$CONNS -d${DURATION}s --latency\` after a 2 s warm-up, HTTP/1.1 keep-alive."
  echo "The targets are measured in turn, $ROUNDS rounds; each figure is the median over the rounds"
  echo "(non-2xx summed). \"CPU/request\" is the CPU time (user + system) the target's processes"
  echo "used during the measured wrk run divided by the requests it served, from /proc: it"
  echo "depends much less on other load than requests/s and latency do (for \"direct\" it is"
  echo "the upstream's own cost). The last column lists each round's requests/s."
  echo
  echo "| target | requests/s | p50 (ms) | p99 (ms) | CPU/request (µs) | non-2xx | socket errors | rounds (req/s) |"
  echo "| --- | ---: | ---: | ---: | ---: | ---: | --- | --- |"
  for name in direct teal teal_general nginx haproxy; do
    read -r a b c d e cpu f <<<"${R[$name]}"
    label="$name"; [ "$name" = teal ] && label="teal router"; [ "$name" = haproxy ] && label="HAProxy"
    [ "$name" = teal_general ] && label="teal router, \`--http1-path general\`"
    echo "| $label | $a | $b | $c | $cpu | $d | $e | $f |"
  done
  echo
  echo "| ratio | throughput | p99 latency | CPU per request |"
  echo "| --- | ---: | ---: | ---: |"
  echo "| teal / nginx | $(ratio "$t_rps" "$n_rps") | $(ratio "$t_p99" "$n_p99") | $(ratio "$t_cpu" "$n_cpu") |"
  echo "| teal / HAProxy | $(ratio "$t_rps" "$h_rps") | $(ratio "$t_p99" "$h_p99") | $(ratio "$t_cpu" "$h_cpu") |"
  echo "| teal general path / nginx | $(ratio "$g_rps" "$n_rps") | $(ratio "$g_p99" "$n_p99") | $(ratio "$g_cpu" "$n_cpu") |"
  echo
  echo "The bar set for the router is throughput >= nginx's and p99 <= 1.2x nginx's."
  echo
  echo "## Route swap"
  echo
  echo "\`cargo bench -p teal-router --bench swap\` (in-process, release): a router serving 64"
  echo "keep-alive connections that loop requests as fast as they can against two in-process"
  echo "upstreams; the table is swapped 200 times. \"swap returns\" is the time \`Router::swap\`"
  echo "takes (validation, compiling the table, the atomic store). \"all connections on new color\""
  echo "is the time from the start of the swap until every one of the 64 connections has received"
  echo "a response from the new color; it includes up to one request round trip per connection."
  echo
  echo '```'
  echo "$SWAP_OUT"
  echo '```'
} >docs/benchmarks.md.new

# Keep the hand-written analysis section, if any, below the generated part.
if [ -f docs/benchmarks.md ] && grep -q '^## Reading the figures' docs/benchmarks.md; then
  { echo; sed -n '/^## Reading the figures/,$p' docs/benchmarks.md; } >>docs/benchmarks.md.new
fi
mv docs/benchmarks.md.new docs/benchmarks.md
echo "==> wrote docs/benchmarks.md"
