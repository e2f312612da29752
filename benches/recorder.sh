#!/usr/bin/env bash
# Recorder benchmark, on a machine without a sound card: real alsa-lib and cpal capture through
# ALSA's `file` plugin, fed by `roost feed` at real-time pace through a FIFO.
#
#   1. paced, 48 kHz mono and 384 kHz mono, continuous 60 s files: dropped samples (must be 0),
#      CPU time of the recorder as a share of one core, peak resident memory;
#   2. unpaced (dd from /dev/zero into the FIFO, held back only by the recorder): sustained
#      throughput of the recorder in MB/s, against the disk's own write speed measured with dd
#      in the same folder in the same run.
#
# Usage: benches/recorder.sh [--seconds N] [--unpaced-seconds N] [--dir DIR]
#   --seconds N          paced run length per rate (default 600 = 10 minutes)
#   --unpaced-seconds N  unpaced run length (default 20)
#   --dir DIR            work folder (default: a new folder under /var/tmp); its disk is measured
# Environment: ROOST_BIN (default target/release/roost, built if missing).
set -euo pipefail

paced_seconds=600
unpaced_seconds=20
work=""
while [ $# -gt 0 ]; do
    case "$1" in
        --seconds) paced_seconds="$2"; shift 2 ;;
        --unpaced-seconds) unpaced_seconds="$2"; shift 2 ;;
        --dir) work="$2"; shift 2 ;;
        *) echo "unknown argument $1" >&2; exit 2 ;;
    esac
done

cd "$(dirname "$0")/.."
bin="${ROOST_BIN:-target/release/roost}"
if [ ! -x "$bin" ]; then
    cargo build --release
fi
work="${work:-$(mktemp -d /var/tmp/roost-bench.XXXXXX)}"
mkdir -p "$work"
clk=$(getconf CLK_TCK)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; }
trap cleanup EXIT

asound_conf() { # rate infile path
    cat > "$3" <<EOF
defaults.pcm.minperiodtime 5000
pcm.roost_filecap {
    type file
    slave.pcm { type null }
    file "/dev/null"
    infile "$2"
    format "raw"
}
pcm.!default { type plug slave { pcm "roost_filecap" format S16_LE channels 1 rate $1 } }
EOF
}

recorder_config() { # rate duration storage period path
    cat > "$5" <<EOF
{"deployment": "bench",
 "storage": {"path": "$3", "minFreeSpace": "0", "onLowSpace": "stop"},
 "recorder": {"device": "default", "sampleRate": $1, "channels": 1, "sampleFormat": "i16", "duration": "$2"},
 "periodFrames": $4}
EOF
}

report_field() { python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))[sys.argv[2]])' "$1" "$2"; }
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
status_kb() { awk -v k="$2:" '$1 == k {print $2}' "/proc/$1/status"; }

paced() {
    local rate=$1 d="$work/paced-$1" period=$(($1 / 25))
    rm -rf "$d"; mkdir -p "$d"
    asound_conf "$rate" "$d/mic.fifo" "$d/asound.conf"
    recorder_config "$rate" 60s "$d/storage" "$period" "$d/config.json"
    "$bin" feed --fifo "$d/mic.fifo" --sample-rate "$rate" --channels 1 --period-frames "$period" \
        --seconds $((paced_seconds + 30)) 2> "$d/feed.log" &
    local feeder=$!; pids+=("$feeder")
    sleep 0.5
    ALSA_CONFIG_PATH="$d/asound.conf" "$bin" record --config "$d/config.json" --state-dir "$d/state" 2> "$d/recorder.log" &
    local rec=$!; pids+=("$rec")
    sleep 3 # start-up: device open, storage created, first period
    local t0 c0 t1 c1 hwm rss
    t0=$(date +%s.%N); c0=$(cpu_ticks "$rec")
    sleep "$paced_seconds"
    t1=$(date +%s.%N); c1=$(cpu_ticks "$rec")
    hwm=$(status_kb "$rec" VmHWM); rss=$(status_kb "$rec" VmRSS)
    kill -TERM "$rec"; wait "$rec" || true
    kill "$feeder" 2>/dev/null || true; wait "$feeder" 2>/dev/null || true
    local report="$d/state/recorder-report.json"
    local captured dropped overruns files recorded_frames
    captured=$(report_field "$report" samplesCaptured)
    dropped=$(report_field "$report" samplesDropped)
    overruns=$(report_field "$report" overruns)
    files=$(report_field "$report" filesWritten)
    recorded_frames=$(python3 -c 'import sqlite3,sys; c=sqlite3.connect(sys.argv[1]); print(round(c.execute("select coalesce(sum(duration_s*samplerate_hz),0) from recording").fetchone()[0]))' "$d/storage/metadata.db")
    python3 - "$rate" "$t0" "$t1" "$c0" "$c1" "$clk" "$hwm" "$rss" "$captured" "$dropped" "$overruns" "$files" "$recorded_frames" <<'EOF'
import sys
rate, t0, t1, c0, c1, clk, hwm, rss, captured, dropped, overruns, files, recorded = sys.argv[1:]
wall = float(t1) - float(t0)
cpu = (float(c1) - float(c0)) / float(clk) / wall * 100
print(f"paced {int(rate)/1000:g} kHz mono: {wall:.0f} s measured, CPU {cpu:.2f}% of one core, "
      f"peak RSS {int(hwm)/1024:.1f} MiB (now {int(rss)/1024:.1f} MiB), frames captured {captured}, "
      f"in files {recorded}, dropped {dropped}, overruns {overruns}, files {files}")
EOF
    if grep -q "fell behind" "$d/feed.log"; then echo "  feeder: $(cat "$d/feed.log")"; fi
}

unpaced() {
    local rate=384000 d="$work/unpaced" period=$((384000 / 25))
    rm -rf "$d"; mkdir -p "$d"
    mkfifo "$d/mic.fifo"
    asound_conf "$rate" "$d/mic.fifo" "$d/asound.conf"
    recorder_config "$rate" 10s "$d/storage" "$period" "$d/config.json"
    # As fast as the recorder takes it: the pipe blocks dd whenever the recorder is behind.
    # Opened read-write (1<>) so that the recorder's probing open and close of the device
    # does not leave the pipe without a reader (SIGPIPE).
    dd if=/dev/zero bs=$((period * 2)) 1<> "$d/mic.fifo" 2> /dev/null &
    local feeder=$!; pids+=("$feeder")
    ALSA_CONFIG_PATH="$d/asound.conf" "$bin" record --config "$d/config.json" --state-dir "$d/state" 2> "$d/recorder.log" &
    local rec=$!; pids+=("$rec")
    sleep 2
    local t0 b0 t1 b1 c0 c1
    t0=$(date +%s.%N); b0=$(du -sb "$d/storage" | cut -f1); c0=$(cpu_ticks "$rec")
    sleep "$unpaced_seconds"
    t1=$(date +%s.%N); b1=$(du -sb "$d/storage" | cut -f1); c1=$(cpu_ticks "$rec")
    kill "$feeder" 2>/dev/null || true
    kill -TERM "$rec"; wait "$rec" || true
    local dropped captured
    dropped=$(report_field "$d/state/recorder-report.json" samplesDropped)
    captured=$(report_field "$d/state/recorder-report.json" samplesCaptured)
    rm -rf "$d/storage"
    # The disk's own sequential write speed, same folder, data forced to disk.
    local disk
    disk=$(dd if=/dev/zero of="$d/dd.test" bs=1M count=1024 conv=fdatasync 2>&1 | tail -1)
    rm -f "$d/dd.test"
    python3 - "$t0" "$t1" "$b0" "$b1" "$dropped" "$captured" "$disk" "$c0" "$c1" "$clk" <<'EOF'
import re, sys
t0, t1, b0, b1, dropped, captured, disk, c0, c1, clk = sys.argv[1:]
wall = float(t1) - float(t0)
mbps = (int(b1) - int(b0)) / wall / 1e6
cpu = (float(c1) - float(c0)) / float(clk) / wall * 100
m = re.search(r"([0-9.,]+) ([kMG]?B)/s", disk)
print(f"unpaced 384 kHz mono: recorder sustained {mbps:.0f} MB/s into WAV files "
      f"({mbps * 1e6 / 768000:.0f}x real time, CPU {cpu:.0f}% of one core, frames captured {captured}, "
      f"dropped {dropped}); disk alone (dd 1 GiB, fdatasync): {m.group(0) if m else disk}")
EOF
}

echo "roost recorder benchmark: $(date -u +%FT%TZ), $(nproc) cores, binary $bin, work folder $work"
paced 48000
paced 384000
unpaced
