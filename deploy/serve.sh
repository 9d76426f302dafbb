#!/usr/bin/env bash
# Serve the lab to a larger class: N `streamlit run app.py` processes behind nginx with sticky sessions.
#
#   bash deploy/serve.sh [N=2] [PORT=8600]
#
# Open http://<this machine>:PORT. Each process is a whole lab (its model cache, its compute slot, at most 2
# meta-training runs); give it about one CPU core. Needs nginx (apt-get install nginx). Ctrl-C stops everything.
set -euo pipefail
cd "$(dirname "$0")/.."
count=${1:-2}
port=${2:-8600}
run=/tmp/lab-nginx
mkdir -p "$run"
{
  echo "upstream lab {"
  echo "    hash \$lab_backend consistent;"
  for i in $(seq 1 "$count"); do echo "    server 127.0.0.1:$((port + i));"; done
  echo "}"
} > "$run/upstream.conf"
sed "s/listen 8600;/listen $port;/" deploy/nginx.conf > "$run/nginx.conf"

# One thread per tensor operation: a class server runs many small steps at once, and torch's second thread per op
# costs more than it gains there (30 sessions: the server's CPU 59 s instead of 72 s, Step p95 2.83 s instead of 3.07).
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
pids=()
trap 'kill "${pids[@]}" 2>/dev/null; nginx -c "$run/nginx.conf" -s stop 2>/dev/null || true' EXIT INT TERM
for i in $(seq 1 "$count"); do
  python -m streamlit run app.py --server.headless true --server.port $((port + i)) --server.address 127.0.0.1 \
    > "$run/lab-$i.log" 2>&1 &
  pids+=($!)
done
nginx -c "$run/nginx.conf" -g "daemon off;" &
pids+=($!)
echo "the lab: http://localhost:$port ($count processes; logs in $run)"
wait -n "${pids[@]}"
