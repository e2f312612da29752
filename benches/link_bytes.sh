#!/usr/bin/env bash
# Bytes a day on the link for a continuous recorder with Home Assistant on, against a real
# Mosquitto: payload bytes per topic (a subscriber to '#'), and bytes on the wire with TLS (a
# counting TCP relay between roost and the broker's TLS listener). Time is compressed: 2 s
# files and a 10 s heartbeat for --seconds; the day is extrapolated as 1,440 files of 60 s and
# 144 heartbeats of 10 min (per-file bytes x 1440 + per-heartbeat bytes x 144; the one-off
# connection bytes (discovery, availability, the first status) once).
# Usage: benches/link_bytes.sh [--seconds S]   ROOST_BIN defaults to target/release/roost.
set -euo pipefail
seconds=120
while [ $# -gt 0 ]; do
    case "$1" in
        --seconds) seconds="$2"; shift 2 ;;
        *) echo "unknown argument $1" >&2; exit 2 ;;
    esac
done
cd "$(dirname "$0")/.."
bin="${ROOST_BIN:-target/release/roost}"
[ -x "$bin" ] || cargo build --release
bin=$(realpath "$bin")
mosq=$(command -v mosquitto || echo /usr/sbin/mosquitto)
work=$(mktemp -d /var/tmp/roost-link-bytes.XXXXXX)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2> /dev/null || true; done; sleep 0.3; rm -rf "$work"; }
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
port=$(free_port); tls_port=$(free_port); relay_port=$(free_port)
openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj "/CN=roost-bench-ca" \
    -keyout "$work/ca.key" -out "$work/ca.pem" 2> /dev/null
openssl req -newkey rsa:2048 -nodes -subj "/CN=127.0.0.1" -keyout "$work/server.key" \
    -out "$work/server.csr" 2> /dev/null
printf 'subjectAltName=IP:127.0.0.1\n' > "$work/ext"
openssl x509 -req -in "$work/server.csr" -CA "$work/ca.pem" -CAkey "$work/ca.key" \
    -CAcreateserial -days 2 -extfile "$work/ext" -out "$work/server.pem" 2> /dev/null
cat > "$work/mosq.conf" <<EOF
user root
persistence false
listener $port 127.0.0.1
allow_anonymous true
listener $tls_port 127.0.0.1
allow_anonymous true
cafile $work/ca.pem
certfile $work/server.pem
keyfile $work/server.key
EOF
"$mosq" -c "$work/mosq.conf" > "$work/mosq.log" 2>&1 &
pids+=($!)
# A relay that counts the bytes both ways between roost and the TLS listener.
cat > "$work/relay.py" <<'EOF'
import socket, sys, threading, signal
listen, target, out = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
counts = {"up": 0, "down": 0}
def pump(a, b, key):
    try:
        while True:
            d = a.recv(65536)
            if not d: break
            counts[key] += len(d); b.sendall(d)
    except OSError: pass
    for s in (a, b):
        try: s.shutdown(socket.SHUT_RDWR)
        except OSError: pass
def snapshot(*_):
    open(out, "a").write("%d %d\n" % (counts["up"], counts["down"]))
def dump(*_):
    snapshot(); sys.exit(0)
signal.signal(signal.SIGUSR1, snapshot)
signal.signal(signal.SIGTERM, dump)
srv = socket.socket(); srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
srv.bind(("127.0.0.1", listen)); srv.listen(4)
while True:
    c, _ = srv.accept()
    u = socket.create_connection(("127.0.0.1", target))
    threading.Thread(target=pump, args=(c, u, "up"), daemon=True).start()
    threading.Thread(target=pump, args=(u, c, "down"), daemon=True).start()
EOF
python3 "$work/relay.py" "$relay_port" "$tls_port" "$work/wire" &
relay=$!
pids+=($relay)
sleep 0.5
mosquitto_sub -h 127.0.0.1 -p "$port" -v -t '#' -F '%U %t %l' > "$work/messages" &
pids+=($!)
"$bin" feed --sample-rate 16000 --fifo "$work/mic.fifo" --alsa-config "$work/asound.conf" 2> /dev/null &
pids+=($!)
while [ ! -e "$work/asound.conf" ]; do sleep 0.05; done
cat > "$work/deployment.yaml" <<EOF
apiVersion: roost/v1
kind: Deployment
metadata: {name: link-bytes}
spec:
  storage: {path: $work/storage, minFreeSpace: 0, onLowSpace: stop}
  recorder: {device: default, sampleRate: 16000, channels: 1, sampleFormat: i16, duration: 2s, timezone: UTC}
  connect:
    deviceId: bench
    heartbeat: {interval: 10s}
    mqtt: {url: "mqtts://127.0.0.1:$relay_port", caFile: $work/ca.pem, homeAssistant: true}
  components: []
EOF
ALSA_CONFIG_PATH="$work/asound.conf" "$bin" run --runtime process --file "$work/deployment.yaml" \
    --state-dir "$work/state" 2> "$work/roost.log" &
roost=$!
pids+=($roost)
sleep 15  # start-up: discovery, availability, the first statuses and the first files
start=$(date +%s.%N)
files_before=$(find "$work/storage/recordings" -name '*.wav' | wc -l)
kill -USR1 "$relay"
sleep "$seconds"
end=$(date +%s.%N)
files_after=$(find "$work/storage/recordings" -name '*.wav' | wc -l)
kill -TERM "$roost"; wait "$roost" 2> /dev/null || true
python3 - "$work/messages" "$start" "$end" "$((files_after - files_before))" "$seconds" "$work/window_payload" <<'EOF'
import sys
path, start, end, files, seconds = sys.argv[1], float(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
per_topic, once = {}, 0
for line in open(path, errors="replace"):
    parts = line.rstrip("\n").split(" ", 2)
    if len(parts) < 3: continue
    t, topic, size = float(parts[0]), parts[1], int(parts[2])
    if t < start:
        once += size; continue
    if t > end: continue
    kind = "status" if topic.endswith("/status") and topic.startswith("roost/") else \
           "heartbeat" if topic.endswith("/heartbeat") else \
           "summary" if topic.endswith("/summary") else \
           "ha-state" if "/state" in topic or topic.count("/") >= 3 and not topic.endswith("/config") else \
           "other"
    n, b = per_topic.get(kind, (0, 0)); per_topic[kind] = (n + 1, b + size)
beats = seconds / 10.0
print(f"window {seconds} s: {files} files of 2 s, {beats:.0f} heartbeats of 10 s; start-up bytes {once}")
total_day = once
for kind, (n, b) in sorted(per_topic.items()):
    # Status and states of meaning scale with files only if they change per file; counters ride heartbeats.
    per_file = b / files if kind == "status" and files else 0
    per_beat = b / beats if kind != "status" else 0
    day = per_file * 1440 + per_beat * 144
    total_day += day
    print(f"  {kind:10s} {n:5d} messages {b:8d} bytes   -> {day/1000:8.1f} kB a day")
print(f"payload a day (60 s files, 10 min heartbeat, HA on): {total_day/1000:.1f} kB")
open(sys.argv[6], "w").write(str(sum(b for _, b in per_topic.values())))
EOF
kill -TERM "$relay" 2> /dev/null || true
sleep 0.5
if [ -s "$work/wire" ]; then
    python3 - "$work/wire" "$seconds" "$work/window_payload" <<'PY'
import sys
rows = [tuple(map(int, l.split())) for l in open(sys.argv[1]) if l.strip()]
seconds = int(sys.argv[2])
(u0, d0), (u1, d1) = rows[0], rows[-1]
wire = (u1 - u0) + (d1 - d0)
payload = int(open(sys.argv[3]).read())
print(f"TLS on the wire in the window: {wire} bytes for {payload} bytes of payload (x{wire / max(payload, 1):.2f}, MQTT headers, TLS records and keep-alive pings included)")
beats = seconds / 10.0
print(f"TLS wire a day at the same rate per heartbeat: {wire / beats * 144 / 1000:.1f} kB")
PY
fi
