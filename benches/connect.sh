#!/usr/bin/env bash
# Connected figures on a local Mosquitto broker:
#   1. a status change -> the retained status message at a subscriber: `roost run` with
#      spec.connect; each edit of deployment.yaml adds a component; the subscriber's receive
#      time (mosquitto_sub %U) minus the time the file was written (N edits);
#   2. draining a backlog of M queued messages (outbox.db filled with sqlite3) to the broker:
#      messages per second until the outbox is empty;
#   3. resident memory of `roost connect`, and its CPU while idle between heartbeats.
# Usage: benches/connect.sh [--edits N] [--backlog M] [--idle-seconds S]
# ROOST_BIN defaults to target/release/roost (built if missing).
set -euo pipefail
edits=30
backlog=100000
idle=60
while [ $# -gt 0 ]; do
    case "$1" in
        --edits) edits="$2"; shift 2 ;;
        --backlog) backlog="$2"; shift 2 ;;
        --idle-seconds) idle="$2"; shift 2 ;;
        *) echo "unknown argument $1" >&2; exit 2 ;;
    esac
done
cd "$(dirname "$0")/.."
bin="${ROOST_BIN:-target/release/roost}"
[ -x "$bin" ] || cargo build --release
bin=$(realpath "$bin")
for p in mosquitto mosquitto_sub sqlite3; do
    command -v "$p" > /dev/null || [ -x "/usr/sbin/$p" ] || { echo "$p is needed" >&2; exit 2; }
done
mosq=$(command -v mosquitto || echo /usr/sbin/mosquitto)
work=$(mktemp -d /var/tmp/roost-connect-bench.XXXXXX)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2> /dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
printf 'listener %s 127.0.0.1\nallow_anonymous true\npersistence false\nmax_queued_messages 200000\n' "$port" > "$work/mosq.conf"
"$mosq" -c "$work/mosq.conf" > "$work/mosq.log" 2>&1 &
pids+=($!)
sleep 0.5
clk=$(getconf CLK_TCK)

deployment() { # n components
    {
        printf 'apiVersion: roost/v1\nkind: Deployment\nmetadata: {name: bench}\nspec:\n  components:\n'
        for i in $(seq "$1"); do printf '    - {name: c%s, command: ["/bin/sleep", "100000"]}\n' "$i"; done
        printf '  connect:\n    deviceId: bench-01\n    mqtt: {url: "mqtt://127.0.0.1:%s"}\n    heartbeat: {interval: 10m}\n' "$port"
    } > "$work/d.yaml.tmp"
    mv "$work/d.yaml.tmp" "$work/d.yaml"
}

# 1. status change -> retained message
deployment 1
"$bin" run --file "$work/d.yaml" --state-dir "$work/state" --runtime process 2> "$work/run.log" &
pids+=($!)
sleep 2
mosquitto_sub -h 127.0.0.1 -p "$port" -t 'roost/bench-01/status' -F '%U %p' > "$work/sub.log" &
pids+=($!)
sleep 0.5
: > "$work/writes.log"
for i in $(seq 2 $((edits + 1))); do
    t=$(date +%s.%N)
    deployment "$i"
    echo "$i $t" >> "$work/writes.log"
    sleep 0.4
done
sleep 1
python3 - "$work/writes.log" "$work/sub.log" <<'EOF'
import json, statistics, sys
writes = {}
for line in open(sys.argv[1]):
    n, t = line.split()
    writes[int(n)] = float(t)
firsts = {}
for line in open(sys.argv[2]):
    t, payload = line.split(" ", 1)
    try:
        doc = json.loads(payload)
    except ValueError:
        continue
    running = sum(1 for c in doc.get("components", []) if c["name"].startswith("c") and c["name"] != "connect" and c["status"] == "Running")
    if doc.get("phase") == "Succeeded" and running in writes and running not in firsts:
        firsts[running] = float(t)
lat = sorted((firsts[n] - writes[n]) * 1000 for n in writes if n in firsts)
print(f"status change -> retained message at the subscriber: {len(lat)} edits, median {statistics.median(lat):.1f} ms, "
      f"p90 {lat[int(len(lat) * 0.9)]:.1f} ms, max {lat[-1]:.1f} ms (file written -> all components Running -> message)")
EOF

# 3. memory and idle CPU of roost connect (the running one)
cpid=$(python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); print([c["pid"] for c in d["components"] if c["name"]=="connect"][0])' "$work/state/status.json")
c0=$(awk '{print $14 + $15}' "/proc/$cpid/stat")
sleep "$idle"
c1=$(awk '{print $14 + $15}' "/proc/$cpid/stat")
rss=$(awk '$1 == "VmRSS:" {print $2}' "/proc/$cpid/status")
hwm=$(awk '$1 == "VmHWM:" {print $2}' "/proc/$cpid/status")
private=$(awk '/^Private_(Clean|Dirty):/ {s += $2} END {print s}' "/proc/$cpid/smaps_rollup")
anon=$(awk '$1 == "RssAnon:" {print $2}' "/proc/$cpid/status")
echo "roost connect: private memory (what it adds; the binary's pages are shared with roost run) $((private / 1024)).$(((private % 1024) * 10 / 1024)) MiB, of it anonymous $((anon / 1024)).$(((anon % 1024) * 10 / 1024)) MiB; VmRSS $((rss / 1024)).$(((rss % 1024) * 10 / 1024)) MiB (peak $((hwm / 1024)).$(((hwm % 1024) * 10 / 1024)) MiB); CPU while idle: $((c1 - c0)) ticks (1/$clk s) over ${idle} s"
kill "${pids[1]}"; wait "${pids[1]}" 2> /dev/null || true

# 2. drain a backlog
mkdir -p "$work/drain"
cat > "$work/drain/connect-config.json" <<EOF
{"deployment": "bench", "deviceId": "drain-01", "storage": "$work/drain/storage",
 "connect": {"mqtt": {"url": "mqtt://127.0.0.1:$port"}, "heartbeat": {"interval": "10m"}}}
EOF
# The schema comes from roost itself: open and close the outbox once.
timeout 2 "$bin" connect --config "$work/drain/connect-config.json" --state-dir "$work/drain" 2> /dev/null || true
sqlite3 "$work/drain/outbox.db" "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < $backlog)
  INSERT INTO message (sink, topic, payload, retain, created_at, bytes)
  SELECT 'mqtt', 'roost/drain-01/bench', CAST(printf('{\"messageId\":\"drain-01-%d\",\"n\":%d,\"pad\":\"%s\"}', i, i, substr(hex(zeroblob(100)), 1, 200)) AS BLOB), 0, strftime('%Y-%m-%dT%H:%M:%SZ','now'), 260 FROM n;"
left() { sqlite3 "$work/drain/outbox.db" "SELECT count(*) FROM message"; }
echo "queued: $(left)"
t0=$(date +%s.%N)
"$bin" connect --config "$work/drain/connect-config.json" --state-dir "$work/drain" 2> "$work/drain.log" &
dpid=$!; pids+=($dpid)
while [ "$(left)" -gt 1 ]; do sleep 0.2; done
t1=$(date +%s.%N)
hwm=$(awk '$1 == "VmHWM:" {print $2}' "/proc/$dpid/status")
python3 -c "import sys; n, t0, t1, hwm = map(float, sys.argv[1:]); print(f'drained {int(n)} messages in {t1 - t0:.1f} s: {n / (t1 - t0):.0f} messages/s (roost connect peak RSS {hwm / 1024:.1f} MiB)')" "$backlog" "$t0" "$t1" "$hwm"
