#!/usr/bin/env bash
# Storage-fault figures of the recorder at 48 kHz mono, 10 s files, fed at real-time pace through
# ALSA's file plugin (no sound card): another program (sqlite3) holds metadata.db's write lock
# (BEGIN EXCLUSIVE) for --lock-seconds; then metadata.db is deleted; then the storage is removed
# with rm -rf. For each fault: samples dropped, how long until the report shows it, and the time
# from the fault's end to the next registered file (report: filesWritten up, rowsOwed 0, no error).
#
# Usage: benches/recorder_faults.sh [--lock-seconds N] [--dir DIR]
# Environment: ROOST_BIN (default target/release/roost, built if missing). Needs sqlite3.
set -euo pipefail

lock_seconds=60
work=""
while [ $# -gt 0 ]; do
    case "$1" in
        --lock-seconds) lock_seconds="$2"; shift 2 ;;
        --dir) work="$2"; shift 2 ;;
        *) echo "unknown argument $1" >&2; exit 2 ;;
    esac
done

cd "$(dirname "$0")/.."
bin="${ROOST_BIN:-target/release/roost}"
[ -x "$bin" ] || cargo build --release
work="${work:-$(mktemp -d /var/tmp/roost-faults.XXXXXX)}"
rate=48000 period=1920 d="$work"
mkdir -p "$d"
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; }
trap cleanup EXIT

cat > "$d/asound.conf" <<EOF
defaults.pcm.minperiodtime 5000
pcm.roost_filecap {
    type file
    slave.pcm { type null }
    file "/dev/null"
    infile "$d/mic.fifo"
    format "raw"
}
pcm.!default { type plug slave { pcm "roost_filecap" format S16_LE channels 1 rate $rate } }
EOF
cat > "$d/config.json" <<EOF
{"deployment": "bench",
 "storage": {"path": "$d/storage", "minFreeSpace": "0", "onLowSpace": "stop"},
 "recorder": {"device": "default", "sampleRate": $rate, "channels": 1, "sampleFormat": "i16", "duration": "10s"},
 "periodFrames": $period}
EOF
report="$d/state/run/recorder-report.json"
field() { python3 -c 'import json,sys; r=json.load(open(sys.argv[1])); v=r
for k in sys.argv[2].split("."): v=(v or {}).get(k) if isinstance(v, dict) else None
print(v)' "$report" "$1"; }
now() { date +%s.%N; }
# Waits until the python condition on report `r` holds; prints the seconds it took from $1.
wait_for() { # since condition
    local since=$1 cond=$2
    while ! python3 -c "import json,sys; r=json.load(open('$report')); sys.exit(0 if ($cond) else 1)" 2>/dev/null; do
        sleep 0.05
    done
    python3 -c "import sys; print(f'{float(sys.argv[2]) - float(sys.argv[1]):.1f}')" "$since" "$(now)"
}
registered_after() { # since
    local written; written=$(field filesWritten)
    wait_for "$1" "r['filesWritten'] > $written and r['rowsOwed'] == 0 and r['error'] is None"
}

"$bin" feed --fifo "$d/mic.fifo" --sample-rate $rate --channels 1 --period-frames $period \
    --seconds $((lock_seconds + 120)) 2> "$d/feed.log" &
pids+=($!)
sleep 0.5
ALSA_CONFIG_PATH="$d/asound.conf" "$bin" record --config "$d/config.json" --state-dir "$d/state" 2> "$d/recorder.log" &
rec=$!; pids+=("$rec")
wait_for "$(now)" "r['filesWritten'] >= 1 and r['rowsOwed'] == 0" > /dev/null
echo "roost recorder storage faults: $(date -u +%FT%TZ), $(nproc) cores, binary $bin, 48 kHz mono, 10 s files"

dropped0=$(field samplesDropped)
t=$(now)
{ echo "BEGIN EXCLUSIVE;"; sleep "$lock_seconds"; echo "COMMIT;"; } | sqlite3 "$d/storage/metadata.db" &
locker=$!; pids+=("$locker")
wait_for "$t" "r['rowsOwed'] >= 1" > /dev/null
owed=$(now)
shown=$(wait_for "$owed" "r['error'] is not None and r['error']['code'] == 'DEP_E321'")
wait "$locker"
released=$(now)
cleared=$(wait_for "$released" "r['rowsOwed'] == 0 and r['error'] is None")
after=$(registered_after "$released")
echo "exclusive lock ${lock_seconds} s: DEP_E321 shown ${shown} s after the first row was owed; samples dropped $(( $(field samplesDropped) - dropped0 )); lock released -> rows written and error cleared ${cleared} s, next file registered ${after} s"

t=$(now); rm -f "$d/storage/metadata.db"*
echo "metadata.db deleted -> next file registered $(registered_after "$t") s"
t=$(now); rm -rf "$d/storage"
echo "storage removed (rm -rf) -> next file registered $(registered_after "$t") s"

kill -TERM "$rec"; wait "$rec" || true
echo "files $(field filesWritten), frames captured $(field samplesCaptured), dropped $(field samplesDropped), rows owed at stop $(field rowsOwed)"
