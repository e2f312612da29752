#!/usr/bin/env bash
# roost record side by side with arecord, on the same input and a dedicated file system.
#
# Each run feeds a FIFO at real-time pace (`roost feed`) into ALSA's file plugin; the capturing
# process is `roost record` (60 s files, its storage and state folder on the disk below) or
# `arecord --max-file-time 60` (the same device, rate, format). Runs alternate A B A B. The disk
# is an ext4 image on a loop device of its own, so the bytes and flushes counted are the
# capturing process's alone (written while it ran, plus what `sync` pushed out after it ended).
#
# Per run: CPU of the capturing process (all threads, after a 3 s start-up) as a share of one
# core; context switches per second (voluntary + involuntary, all its threads); peak resident
# memory; bytes written to the device per byte of audio in the files; device cache flushes per
# minute; and, with --syncs (strace), fsync/fdatasync calls per minute.
#
# --warm N measures the steady state instead: the device's bytes and flushes are counted over the
# window of --seconds that starts N s after the start (the audio of that window is seconds x rate
# x 2 bytes), so metadata.db's creation and the first file do not weigh; a device records for
# months. roost's run-time folder (`<state>/run`, its reports) is on a tmpfs, as /run is on a
# Raspberry Pi OS device (`RUNTIME_DIRECTORY`).
#
# Usage: benches/vs_arecord.sh [--seconds N] [--rounds N] [--rates "16000 48000 384000"] [--syncs]
#                              [--warm N]
# Needs root (loop device, mount). ROOST_BIN defaults to target/release/roost (built if missing).
set -euo pipefail

seconds=120
rounds=2
rates="16000 48000 384000"
syncs=0
warm=0
while [ $# -gt 0 ]; do
    case "$1" in
        --seconds) seconds="$2"; shift 2 ;;
        --rounds) rounds="$2"; shift 2 ;;
        --rates) rates="$2"; shift 2 ;;
        --syncs) syncs=1; shift ;;
        --warm) warm="$2"; shift 2 ;;
        *) echo "unknown argument $1" >&2; exit 2 ;;
    esac
done
cd "$(dirname "$0")/.."
bin="${ROOST_BIN:-target/release/roost}"
[ -x "$bin" ] || cargo build --release
bin=$(realpath "$bin")
command -v arecord > /dev/null || { echo "arecord (alsa-utils) is needed" >&2; exit 2; }

work=$(mktemp -d /var/tmp/roost-vs-arecord.XXXXXX)
image="$work/disk.img"
disk="$work/disk"
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2> /dev/null || true; done
    umount "$disk" 2> /dev/null || true
    umount "$work/run" 2> /dev/null || true
    [ -n "${loop:-}" ] && losetup -d "$loop" 2> /dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT
truncate -s 4G "$image"
mkfs.ext4 -q -F "$image"
loop=$(losetup --find --show "$image")
mkdir -p "$disk"
mount "$loop" "$disk"
dev=$(basename "$loop")
mkdir -p "$work/run"
mount -t tmpfs -o size=16m tmpfs "$work/run"
clk=$(getconf CLK_TCK)

# /sys/block/<dev>/stat: field 7 sectors written, field 16 flush requests completed.
dev_stat() { awk -v f="$1" '{print $f}' "/sys/block/$dev/stat"; }
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
ctxt() { cat /proc/"$1"/task/*/status 2> /dev/null | awk '/ctxt_switches/ {s += $2} END {print s + 0}'; }
hwm_kb() { awk '$1 == "VmHWM:" {print $2}' "/proc/$1/status"; }

asound_conf() { # rate fifo path
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

# One run: prints "tool rate cpu% cs/s hwm_mib bytes_per_audio_byte flushes/min syncs/min".
run_one() {
    local tool=$1 rate=$2 d="$disk/$1-$2-$RANDOM" period=$(($2 / 25))
    mkdir -p "$d/out"
    local conf="$work/asound-$rate.conf" fifo="$work/mic-$rate.fifo"
    asound_conf "$rate" "$fifo" "$conf"
    "$bin" feed --fifo "$fifo" --sample-rate "$rate" --channels 1 --period-frames "$period" \
        --seconds $((warm + seconds + 20)) 2> /dev/null &
    local feeder=$!; pids+=("$feeder")
    sleep 0.5
    sync -f "$disk"
    local w0 f0; w0=$(dev_stat 7); f0=$(dev_stat 16)
    local trace=()
    [ "$syncs" = 1 ] && trace=(strace -f --seccomp-bpf -e trace=fsync,fdatasync -o "$work/strace-$tool-$rate")
    if [ "$tool" = roost ]; then
        cat > "$d/config.json" <<EOF
{"deployment": "bench", "storage": {"path": "$d/out", "minFreeSpace": "0", "onLowSpace": "stop"},
 "recorder": {"device": "default", "sampleRate": $rate, "channels": 1, "sampleFormat": "i16", "duration": "60s"},
 "periodFrames": $period}
EOF
        RUNTIME_DIRECTORY="$work/run" ALSA_CONFIG_PATH="$conf" "${trace[@]}" "$bin" record --config "$d/config.json" --state-dir "$d/state" 2> "$d/log" &
    else
        ALSA_CONFIG_PATH="$conf" "${trace[@]}" arecord -q -D default -f S16_LE -c 1 -r "$rate" \
            --period-size="$period" --max-file-time 60 -t wav "$d/out/rec.wav" 2> "$d/log" &
    fi
    local launched=$!; pids+=("$launched")
    sleep 3
    # Under strace the capturing process is strace's child.
    local pid=$launched
    [ "$syncs" = 1 ] && pid=$(pgrep -P "$launched" | head -1)
    local t0 c0 s0 t1 c1 s1 hwm
    if [ "$warm" -gt 0 ]; then
        sleep "$warm"
        w0=$(dev_stat 7); f0=$(dev_stat 16)
    fi
    t0=$(date +%s.%N); c0=$(cpu_ticks "$pid"); s0=$(ctxt "$pid")
    sleep "$seconds"
    t1=$(date +%s.%N); c1=$(cpu_ticks "$pid"); s1=$(ctxt "$pid"); hwm=$(hwm_kb "$pid")
    local w1 f1 audio
    if [ "$warm" -gt 0 ]; then
        w1=$(dev_stat 7); f1=$(dev_stat 16); audio=$((seconds * rate * 2))
    fi
    kill -TERM "$pid"; wait "$launched" 2> /dev/null || true
    kill "$feeder" 2> /dev/null || true; wait "$feeder" 2> /dev/null || true
    if [ "$warm" -eq 0 ]; then
        sync -f "$disk"
        w1=$(dev_stat 7); f1=$(dev_stat 16)
        audio=$(find "$d/out" -name '*.wav' -printf '%s\n' | awk '{s += $1 - 44} END {print s + 0}')
    fi
    local nsync=0
    [ "$syncs" = 1 ] && nsync=$(grep -cE 'fsync|fdatasync' "$work/strace-$tool-$rate" || true)
    python3 - "$tool" "$rate" "$t0" "$t1" "$c0" "$c1" "$clk" "$s0" "$s1" "$hwm" "$w0" "$w1" "$f0" "$f1" "$audio" "$nsync" "$seconds" "$warm" <<'EOF'
import sys
tool, rate, t0, t1, c0, c1, clk, s0, s1, hwm, w0, w1, f0, f1, audio, nsync, secs, warm = sys.argv[1:]
wall = float(t1) - float(t0)
# Device counters cover the window alone with --warm, else the run from its start.
minutes = float(secs) / 60 if int(warm) > 0 else (float(secs) + 3) / 60
cpu = (int(c1) - int(c0)) / int(clk) / wall * 100
cs = (int(s1) - int(s0)) / wall
written = (int(w1) - int(w0)) * 512
ratio = written / int(audio) if int(audio) else float("nan")
print(f"{tool:6} {int(rate)/1000:>5g} kHz  CPU {cpu:5.2f}%  cs/s {cs:6.1f}  peak RSS {int(hwm)/1024:5.1f} MiB  "
      f"device bytes/audio byte {ratio:5.3f}  flushes/min {(int(f1) - int(f0)) / minutes:6.1f}  "
      f"sync calls/min {int(nsync) / minutes:5.1f}  (audio {int(audio)/1e6:.1f} MB)")
EOF
    rm -rf "$d"
}

for rate in $rates; do
    for _ in $(seq "$rounds"); do
        run_one roost "$rate"
        run_one arecord "$rate"
    done
done
