#!/usr/bin/env bash
# The main job: a local mesh of 3 nodes on this machine runs an example job end to end.
# Starts 3 daemons (homes under .demo/), waits until they see each other, offers a job with
# redundancy 2 from the first node, shows the outputs, the peers and the jobs, then stops the mesh.
#   bash scripts/demo.sh [examples/<name>/job.json]
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
VENV=${P2PMESH_VENV:-.venv}
P="$VENV/bin/p2pmesh"
JOB=${1:-examples/monte-carlo-pi/job.json}
DEMO=.demo
pids=()
cleanup() { for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap cleanup EXIT
rm -rf "$DEMO"; mkdir -p "$DEMO"

common=(--no-mdns --no-tui --no-shipped-bootstrap --listen /ip4/127.0.0.1/tcp/0 --allow-image 'p2pmesh/*')
"$P" up --home "$DEMO/node1" "${common[@]}" 2>"$DEMO/node1.log" & pids+=($!)
for _ in $(seq 100); do [ -f "$DEMO/node1/node.json" ] && break; sleep 0.1; done
BOOT=$("$VENV/bin/python" -c "import json;print(json.load(open('$DEMO/node1/node.json'))['addrs'][0])")
for n in 2 3; do
  "$P" up --home "$DEMO/node$n" "${common[@]}" --bootstrap "$BOOT" 2>"$DEMO/node$n.log" & pids+=($!)
done
echo "== waiting for the 3 nodes to find each other"
for _ in $(seq 100); do
  n=$("$P" peers --home "$DEMO/node1" --json 2>/dev/null | "$VENV/bin/python" -c 'import json,sys; print(len(json.load(sys.stdin)))' 2>/dev/null || echo 0)
  [ "$n" = 2 ] && break; sleep 0.2
done
"$P" peers --home "$DEMO/node1"
echo "== node1's status page and /metrics: $("$VENV/bin/python" -c "import json;print(json.load(open('$DEMO/node1/node.json'))['http'])")"
echo "== offering $JOB from node1 (redundancy 2: two other peers run it, outputs compared)"
"$P" offer --home "$DEMO/node1" "$JOB" --wait --out "$DEMO/results"
echo "== outputs"
for f in "$DEMO"/results/outputs/*; do echo "--- $(basename "$f")"; head -c 2000 "$f"; echo; done
"$P" jobs --home "$DEMO/node1"
echo "== credits after the job (derived from the replicated, signed chains; they sum to 0)"
sleep 1
for n in 1 2 3; do
  echo "-- node$n"
  "$P" balance --home "$DEMO/node$n"
done
"$P" ledger --home "$DEMO/node2" --verify | tail -1
