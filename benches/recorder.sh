#!/usr/bin/env bash
# Recorder benchmark, on a machine without a sound card: real alsa-lib and cpal capture through
# ALSA's `file` plugin, fed by `roost feed` at real-time pace through a FIFO.
#
#   1. paced, 48 kHz mono and 384 kHz mono, continuous 60 s files: dropped samples (must be 0),
#      CPU time of the recorder as a share of one core, peak resident memory;
#   2. unpaced: the FIFO fed at 25, 50, 100, 200 MB/s and then without limit (dd from
#      /dev/zero): MB/s written and frames dropped, against the disk's own write speed measured
#      with dd in the same folder in the same run.
#
# Usage: benches/recorder.sh [--seconds N] [--unpaced-seconds N] [--dir DIR] [--only paced|unpaced]
#   --seconds N          paced run length per rate (default 600 = 10 minutes)
#   --unpaced-seconds N  length of each unpaced run (default 10)
#   --dir DIR            work folder (default: a new folder under /var/tmp); its disk is measured
#   --only paced|unpaced run one part only
# Environment: ROOST_BIN (default target/release/roost, built if missing).
set -euo pipefail

paced_seconds=600
unpaced_seconds=10
work=""
only=""
while [ $# -gt 0 ]; do
    case "$1" in
        --seconds) paced_seconds="$2"; shift 2 ;;
        --unpaced-seconds) unpaced_seconds="$2"; shift 2 ;;
        --dir) work="$2"; shift 2 ;;
        --only) only="$2"; shift 2 ;;
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
    local report="$d/state/run/recorder-report.json"
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

# One unpaced run: input at `target` MB/s (0: unlimited, dd from /dev/zero), for `unpaced_seconds`.
unpaced_run() {
    local target=$1 rate=384000 d="$work/unpaced" period=$((384000 / 25))
    rm -rf "$d"; mkdir -p "$d"
    mkfifo "$d/mic.fifo"
    asound_conf "$rate" "$d/mic.fifo" "$d/asound.conf"
    recorder_config "$rate" 10s "$d/storage" "$period" "$d/config.json"
    # The FIFO is opened read-write (1<>, O_RDWR) so that the recorder's probing open and close
    # of the device never leaves the pipe without a reader.
    if [ "$target" = 0 ]; then
        dd if=/dev/zero bs=$((period * 2)) 1<> "$d/mic.fifo" 2> /dev/null &
    else
        python3 - "$d/mic.fifo" "$target" $((period * 2)) <<'EOF' &
import fcntl, os, sys, time
path, rate, chunk = sys.argv[1], float(sys.argv[2]) * 1e6, int(sys.argv[3])
fd = os.open(path, os.O_RDWR)
fcntl.fcntl(fd, 1031, 1 << 20)  # F_SETPIPE_SZ: a deep pipe
buf, t0, sent = bytes(chunk), time.monotonic(), 0
while True:
    delay = t0 + sent / rate - time.monotonic()
    if delay > 0:
        time.sleep(delay)
    os.write(fd, buf)
    sent += chunk
EOF
    fi
    local feeder=$!; pids+=("$feeder")
    ALSA_CONFIG_PATH="$d/asound.conf" "$bin" record --config "$d/config.json" --state-dir "$d/state" 2> "$d/recorder.log" &
    local rec=$!; pids+=("$rec")
    sleep 2
    local t0 b0 t1 b1 c0 c1 d0 d1
    d0=$(report_field "$d/state/run/recorder-report.json" samplesDropped)
    t0=$(date +%s.%N); b0=$(du -sb "$d/storage" | cut -f1); c0=$(cpu_ticks "$rec")
    sleep "$unpaced_seconds"
    t1=$(date +%s.%N); b1=$(du -sb "$d/storage" | cut -f1); c1=$(cpu_ticks "$rec")
    # The recorder first: a FIFO whose writer is gone reads as end of file, which ALSA's file
    # plugin turns into an endless stream of silence.
    kill -TERM "$rec"; wait "$rec" || true
    kill "$feeder" 2>/dev/null || true
    d1=$(report_field "$d/state/run/recorder-report.json" samplesDropped)
    python3 - "$target" "$t0" "$t1" "$b0" "$b1" "$c0" "$c1" "$clk" "$d0" "$d1" <<'EOF'
import sys
target, t0, t1, b0, b1, c0, c1, clk, d0, d1 = sys.argv[1:]
wall = float(t1) - float(t0)
mbps = (int(b1) - int(b0)) / wall / 1e6
cpu = (float(c1) - float(c0)) / float(clk) / wall * 100
what = "unlimited (dd /dev/zero)" if target == "0" else f"{float(target):g} MB/s"
print(f"unpaced 384 kHz mono, input {what}: written {mbps:.0f} MB/s ({mbps * 1e6 / 768000:.0f}x real time), "
      f"recorder CPU {cpu:.0f}% of one core, frames dropped {int(d1) - int(d0)}"
      f"{' (the ring overflows: input faster than the writer)' if int(d1) > int(d0) else ''}")
EOF
    rm -rf "$d/storage"
}

unpaced() {
    local target
    for target in 25 50 100 200 0; do
        unpaced_run "$target"
    done
    # The disk's own sequential write speed, same folder, data forced to disk.
    local disk
    disk=$(dd if=/dev/zero of="$work/dd.test" bs=1M count=1024 conv=fdatasync 2>&1 | tail -1)
    rm -f "$work/dd.test"
    echo "disk alone, same folder (dd 1 GiB, conv=fdatasync): $disk"
}

echo "roost recorder benchmark: $(date -u +%FT%TZ), $(nproc) cores, binary $bin, work folder $work"
if [ "$only" != unpaced ]; then
    paced 48000
    paced 384000
fi
if [ "$only" != paced ]; then
    unpaced
fi
