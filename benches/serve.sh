#!/usr/bin/env bash
# Field page figures (`roost serve`, release build) on loopback, against a state folder made
# here: recorder-config.json, a storage whose metadata.db (sqlite3, the `recording` table of
# src/storage.rs) lists a 60 s 48 kHz and a 60 s 384 kHz mono i16 WAV (python3 `wave`, noise
# and a tone). Measures:
#   1. first byte of `/` and `/api/view.json` (curl %{time_starttransfer}, N requests, median);
#   2. spectrogram of each file, first request (rendered) and then cached (median of 10);
#   3. the serve process's private memory (sum of Private_* in smaps_rollup) before and after,
#      and its peak resident memory (VmHWM);
#   4. its CPU clock ticks (utime+stime) over S seconds with nobody asking.
# Usage: benches/serve.sh [--requests N] [--idle-seconds S]
# ROOST_BIN defaults to target/release/roost (built if missing).
set -euo pipefail
requests=50
idle=30
while [ $# -gt 0 ]; do
    case "$1" in
        --requests) requests="$2"; shift 2 ;;
        --idle-seconds) idle="$2"; shift 2 ;;
        *) echo "unknown argument $1" >&2; exit 2 ;;
    esac
done
cd "$(dirname "$0")/.."
bin="${ROOST_BIN:-target/release/roost}"
[ -x "$bin" ] || cargo build --release
bin=$(realpath "$bin")
for p in sqlite3 curl python3; do
    command -v "$p" > /dev/null || { echo "$p is needed" >&2; exit 2; }
done

work=$(mktemp -d)
pid=
cleanup() { [ -n "$pid" ] && kill "$pid" 2> /dev/null; rm -rf "$work"; }
trap cleanup EXIT
state="$work/state"
storage="$work/storage"
mkdir -p "$state" "$storage/recordings/2026/11/30"
cat > "$state/recorder-config.json" <<JSON
{"deployment": "bench", "storage": {"path": "$storage", "minFreeSpace": "0", "onLowSpace": "stop"},
 "recorder": {"device": "default", "sampleRate": 48000, "channels": 1, "sampleFormat": "i16",
              "duration": "60s"}}
JSON
python3 - "$storage/recordings/2026/11/30" <<'PY'
import array, math, random, sys, wave
folder = sys.argv[1]
for rate, name in [(48000, "20261130T010000.000Z.wav"), (384000, "20261130T010100.000Z.wav")]:
    rng = random.Random(rate)
    step = 2 * math.pi * 1000 / rate
    table = [int(8000 * math.sin(step * n)) for n in range(rate // 1000)]
    noise = array.array("h", (rng.randint(-2000, 2000) for _ in range(65536)))
    with wave.open(f"{folder}/{name}", "wb") as w:
        w.setnchannels(1); w.setsampwidth(2); w.setframerate(rate)
        second = array.array("h", (table[n % len(table)] + noise[n % 65536] for n in range(rate)))
        for _ in range(60):
            w.writeframes(second.tobytes())
PY
sqlite3 "$storage/metadata.db" <<SQL
CREATE TABLE recording (id TEXT PRIMARY KEY NOT NULL, path TEXT NOT NULL UNIQUE,
    datetime TEXT NOT NULL, duration_s REAL NOT NULL, samplerate_hz INTEGER NOT NULL,
    audio_channels INTEGER NOT NULL, deployment_id TEXT);
INSERT INTO recording VALUES ('a', '$storage/recordings/2026/11/30/20261130T010000.000Z.wav',
    '2026-11-30T01:00:00Z', 60, 48000, 1, NULL);
INSERT INTO recording VALUES ('b', '$storage/recordings/2026/11/30/20261130T010100.000Z.wav',
    '2026-11-30T01:01:00Z', 60, 384000, 1, NULL);
SQL

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
addr="127.0.0.1:$port"
"$bin" serve --listen "$addr" --state-dir "$state" > "$work/serve.log" 2>&1 &
pid=$!
for _ in $(seq 100); do curl -s -o /dev/null "http://$addr/" && break; sleep 0.05; done

private_kib() { awk '/^Private_/ {s += $2} END {print s}' "/proc/$pid/smaps_rollup"; }
ms() { awk '{printf "%.1f", $1 * 1000}'; }
median_ms() { sort -n | awk '{a[NR]=$1} END {printf "%.1f", a[int((NR+1)/2)] * 1000}'; }

before=$(private_kib)
for url in / /api/view.json; do
    m=$(for _ in $(seq "$requests"); do
        curl -s -o /dev/null -w '%{time_starttransfer}\n' "http://$addr$url"
    done | median_ms)
    echo "first byte of $url: median $m ms over $requests requests"
done
for f in 20261130T010000.000Z.wav 20261130T010100.000Z.wav; do
    url="http://$addr/spectrogram.png?file=2026/11/30/$f"
    first=$(curl -s -o "$work/s.png" -w '%{http_code} %{time_total}\n' "$url")
    [ "${first%% *}" = 200 ] || { echo "spectrogram of $f: HTTP ${first%% *}" >&2; exit 1; }
    cached=$(for _ in $(seq 10); do curl -s -o /dev/null -w '%{time_total}\n' "$url"; done | median_ms)
    echo "spectrogram of $f: first $(echo "${first#* }" | ms) ms, cached median $cached ms"
done
after=$(private_kib)
echo "private memory: $before KiB before, $after KiB after ($((after - before)) KiB added); peak $(awk '/VmHWM/ {print $2, $3}' "/proc/$pid/status")"
ticks() { awk '{print $14 + $15}' "/proc/$pid/stat"; }
t0=$(ticks)
sleep "$idle"
echo "CPU while idle: $(( $(ticks) - t0 )) clock ticks over $idle s"
