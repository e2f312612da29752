#!/usr/bin/env bash
# Connected figures on a local Mosquitto broker:
#   1. a status change -> the retained status message at a subscriber: `roost run` with
#      spec.connect; each edit of deployment.yaml adds a component; the subscriber's receive
#      time (mosquitto_sub %U) minus the time the file was written (N edits);
#   2. draining a backlog of M queued messages (outbox.db filled with sqlite3) to the broker:
#      messages per second until the outbox is empty;
#   3. resident memory of `roost connect`, and its CPU while idle between heartbeats;
#   4. after draining: the outbox file's size beside an empty one's;
#   5. spec.connect added to a device whose metadata.db holds O past model outputs (one a
#      minute, 3 detections each, the newest recording with 300): time and CPU until the
#      connector's cursor reaches the newest output, messages queued by that first start,
#      payload bytes per detection message at a subscriber, and messages queued by a second
#      start (the burst of a restart, nothing having changed).
# Usage: benches/connect.sh [--edits N] [--backlog M] [--idle-seconds S] [--outputs O]
#                           [--only status|drain|detections]
# ROOST_BIN defaults to target/release/roost (built if missing).
set -euo pipefail
edits=30
backlog=100000
idle=60
outputs=129600
only=
while [ $# -gt 0 ]; do
    case "$1" in
        --edits) edits="$2"; shift 2 ;;
        --backlog) backlog="$2"; shift 2 ;;
        --idle-seconds) idle="$2"; shift 2 ;;
        --outputs) outputs="$2"; shift 2 ;;
        --only) only="$2"; shift 2 ;;
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

status_part() {
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
}

drain_part() {
# 2. drain a backlog
mkdir -p "$work/drain"
cat > "$work/drain/connect-config.json" <<EOF
{"deployment": "bench", "deviceId": "drain-01", "storage": "$work/drain/storage",
 "connect": {"mqtt": {"url": "mqtt://127.0.0.1:$port"}, "heartbeat": {"interval": "10m"}}}
EOF
# The schema comes from roost itself: open and close the outbox once.
timeout 2 "$bin" connect --config "$work/drain/connect-config.json" --state-dir "$work/drain" 2> /dev/null || true
empty=$(outbox_bytes "$work/drain")
sqlite3 "$work/drain/outbox.db" "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < $backlog)
  INSERT INTO message (sink, topic, payload, retain, created_at, bytes)
  SELECT 'mqtt', 'roost/drain-01/bench', CAST(printf('{\"messageId\":\"drain-01-%d\",\"n\":%d,\"pad\":\"%s\"}', i, i, substr(hex(zeroblob(100)), 1, 200)) AS BLOB), 0, strftime('%Y-%m-%dT%H:%M:%SZ','now'), 260 FROM n;"
left() { sqlite3 "$work/drain/outbox.db" "SELECT count(*) FROM message"; }
echo "queued: $(left)"
mosquitto_sub -h 127.0.0.1 -p "$port" -q 1 -t 'roost/drain-01/bench' -F '%l' > "$work/drain-sub.log" &
local spid=$!; pids+=($spid)
sleep 0.5
t0=$(date +%s.%N)
"$bin" connect --config "$work/drain/connect-config.json" --state-dir "$work/drain" 2> "$work/drain.log" &
dpid=$!; pids+=($dpid)
while [ "$(left)" -gt 1 ]; do sleep 0.2; done
t1=$(date +%s.%N)
hwm=$(awk '$1 == "VmHWM:" {print $2}' "/proc/$dpid/status")
python3 -c "import sys; n, t0, t1, hwm = map(float, sys.argv[1:]); print(f'drained {int(n)} messages in {t1 - t0:.1f} s: {n / (t1 - t0):.0f} messages/s (roost connect peak RSS {hwm / 1024:.1f} MiB)')" "$backlog" "$t0" "$t1" "$hwm"
# 4. the outbox's size once drained (left a few seconds to give its space back)
sleep 5
echo "received at a subscriber (QoS 1): $(wc -l < "$work/drain-sub.log") messages; dropped by the outbox: $(sqlite3 "$work/drain/outbox.db" "SELECT coalesce((SELECT value FROM counter WHERE name = 'dropped'), 0)")"
kill "$spid"
echo "outbox after draining: $(outbox_bytes "$work/drain") bytes (outbox.db with its -wal); an empty one: $empty bytes"
kill "$dpid"; wait "$dpid" 2> /dev/null || true
}

outbox_bytes() { # state dir -> bytes of outbox.db and its -wal
    local n=0 f
    for f in "$1/outbox.db" "$1/outbox.db-wal"; do
        if [ -f "$f" ]; then n=$((n + $(stat -c %s "$f"))); fi
    done
    echo "$n"
}

# 5. spec.connect added to a device with many past model outputs
detections_part() {
local d="$work/det" storage="$work/det/storage"
mkdir -p "$storage"
cat > "$d/connect-config.json" <<EOF
{"deployment": "bench", "deviceId": "det-01", "storage": "$storage",
 "connect": {"mqtt": {"url": "mqtt://127.0.0.1:$port"}, "heartbeat": {"interval": "10m"}}}
EOF
# metadata.db in acoupi 0.8.0's layout (src/storage/schema.rs: 16-byte ids, acoupi's time
# text), the columns the connector reads; one recording a minute up to now, the newest with 300
# detections, each output with a file-level tag (a presence detection without a box).
sqlite3 "$storage/metadata.db" > /dev/null <<EOF
PRAGMA journal_mode = WAL;
CREATE TABLE deployment (id BLOB PRIMARY KEY, name TEXT NOT NULL, started_on TEXT NOT NULL UNIQUE,
    ended_on TEXT, latitude REAL, longitude REAL);
CREATE TABLE recording (id BLOB PRIMARY KEY, path TEXT UNIQUE, datetime TEXT NOT NULL UNIQUE,
    duration_s REAL NOT NULL, samplerate_hz INTEGER NOT NULL, audio_channels INTEGER NOT NULL DEFAULT 1,
    deployment_id BLOB NOT NULL REFERENCES deployment(id), protected INTEGER NOT NULL DEFAULT 0,
    deleted_on TEXT, deleted_by TEXT);
CREATE TABLE model_output (id BLOB PRIMARY KEY, model_name TEXT NOT NULL,
    recording_id BLOB NOT NULL REFERENCES recording(id), created_on TEXT NOT NULL);
CREATE INDEX idx_model_output_recording_id ON model_output(recording_id);
CREATE INDEX idx_model_output_created_on ON model_output(created_on);
CREATE TABLE detection (id BLOB PRIMARY KEY, prediction_type TEXT NOT NULL
    CHECK (prediction_type IN ('presence', 'sequence', 'event')), start_time_s REAL, end_time_s REAL,
    low_freq_hz REAL, high_freq_hz REAL, detection_score REAL NOT NULL,
    model_output_id BLOB NOT NULL REFERENCES model_output(id));
CREATE INDEX idx_detection_model_output_id ON detection(model_output_id);
CREATE TABLE predicted_tag (id INTEGER PRIMARY KEY AUTOINCREMENT, key TEXT NOT NULL, value TEXT NOT NULL,
    confidence_score REAL NOT NULL, detection_id BLOB NOT NULL REFERENCES detection(id));
CREATE INDEX idx_predicted_tag_detection_id ON predicted_tag(detection_id);
INSERT INTO deployment VALUES (randomblob(16), 'bench',
    strftime('%Y-%m-%dT%H:%M:%S+00:00', 'now', '-100 days'), NULL, 51.5, -0.1);
BEGIN;
WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < $outputs)
INSERT INTO recording (id, path, datetime, duration_s, samplerate_hz, audio_channels, deployment_id)
SELECT randomblob(16), printf('$storage/2026/%08d.wav', i),
    strftime('%Y-%m-%dT%H:%M:%S+00:00', 'now', printf('-%d seconds', ($outputs - i) * 60 + 90)),
    60.0, 48000, 1, (SELECT id FROM deployment) FROM n;
INSERT INTO model_output (id, model_name, recording_id, created_on)
SELECT randomblob(16), 'bandEnergy', id,
    strftime('%Y-%m-%dT%H:%M:%S+00:00', datetime, '+70 seconds') FROM recording ORDER BY rowid;
WITH RECURSIVE k(j) AS (SELECT 1 UNION ALL SELECT j + 1 FROM k WHERE j < 300)
INSERT INTO detection (id, prediction_type, start_time_s, low_freq_hz, end_time_s, high_freq_hz,
    detection_score, model_output_id)
SELECT randomblob(16), 'event', k.j * 0.1734567, 2000 + k.j * 3.3333, k.j * 0.1734567 + 0.3,
    4000 + k.j * 7.7777, (abs(random()) % 1000000) / 1000000.0, m.id
FROM model_output m JOIN k ON k.j <= CASE WHEN m.rowid = $outputs THEN 300 ELSE 3 END;
INSERT INTO predicted_tag (key, value, confidence_score, detection_id)
SELECT 'species', 'Pipistrellus pipistrellus', (abs(random()) % 1000000) / 1000000.0, id FROM detection;
INSERT INTO detection (id, prediction_type, detection_score, model_output_id)
SELECT randomblob(16), 'presence', 0.5, id FROM model_output;
INSERT INTO predicted_tag (key, value, confidence_score, detection_id)
SELECT 'event', 'bat pass', 0.5, id FROM detection WHERE prediction_type = 'presence';
COMMIT;
EOF
# A status.json to send (roost gone: the connector says so), from a short `roost run`.
printf 'apiVersion: roost/v1\nkind: Deployment\nmetadata: {name: bench}\nspec:\n  components:\n    - {name: c1, command: ["/bin/sleep", "100000"]}\n' > "$d/d.yaml"
"$bin" run --file "$d/d.yaml" --state-dir "$d" --runtime process 2> "$work/det-run.log" &
local rpid=$!
sleep 3
kill "$rpid"; wait "$rpid" 2> /dev/null || true
local newest
newest=$(sqlite3 "$storage/metadata.db" "SELECT max(rowid) FROM model_output")
cursor() { sqlite3 "$d/outbox.db" "SELECT coalesce((SELECT value FROM counter WHERE name = 'model_output_rowid'), 0)" 2> /dev/null || echo 0; }
queued() { sqlite3 "$d/outbox.db" "SELECT coalesce((SELECT seq FROM sqlite_sequence WHERE name = 'message'), 0)" 2> /dev/null || echo 0; }
mosquitto_sub -h 127.0.0.1 -p "$port" -t 'roost/det-01/detections' -F '%l' > "$work/det-sizes.log" &
pids+=($!)
sleep 0.5
local t0 t1 c1 cpid
t0=$(date +%s.%N)
"$bin" connect --config "$d/connect-config.json" --state-dir "$d" 2> "$work/det.log" &
cpid=$!; pids+=($cpid)
while [ "$(cursor)" -lt "$newest" ]; do sleep 0.1; done
t1=$(date +%s.%N)
c1=$(awk '{print $14 + $15}' "/proc/$cpid/stat")
python3 -c "import sys; print(f'spec.connect added beside $outputs model outputs: the cursor reached the newest in {float(sys.argv[2]) - float(sys.argv[1]):.2f} s, CPU {int(sys.argv[3]) / $clk:.2f} s; messages queued by this first start: {sys.argv[4]}')" "$t0" "$t1" "$c1" "$(queued)"
while [ "$(sqlite3 "$d/outbox.db" "SELECT count(*) FROM message")" -gt 0 ]; do sleep 0.5; done
sleep 1
python3 - "$work/det-sizes.log" <<'PY'
import statistics, sys
sizes = [int(l) for l in open(sys.argv[1]) if l.strip().isdigit()]
if sizes:
    print(f"detection messages at the subscriber: {len(sizes)}, payload bytes mean {statistics.mean(sizes):.0f}, "
          f"median {statistics.median(sizes):.0f}, max {max(sizes)} (the recording with 300 detections)")
PY
kill "$cpid"; wait "$cpid" 2> /dev/null || true
local before
before=$(queued)
"$bin" connect --config "$d/connect-config.json" --state-dir "$d" 2>> "$work/det.log" &
cpid=$!; pids+=($cpid)
sleep 5
echo "messages queued by a second start, nothing changed: $(($(queued) - before)) (heartbeat, status and Home Assistant states included)"
kill "$cpid"; wait "$cpid" 2> /dev/null || true
}

case "$only" in
    "") status_part; drain_part; detections_part ;;
    status) status_part ;;
    drain) drain_part ;;
    detections) detections_part ;;
    *) echo "unknown part $only" >&2; exit 2 ;;
esac
