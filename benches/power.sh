#!/usr/bin/env bash
# What watching the board's power costs the recorder (issue 28): `roost record` at 48 kHz mono
# through ALSA's file plugin, fed at real-time pace, with `spec.power.sysfsRoot` on a fake
# Raspberry Pi tree (throttling bits, rpi_volt alarm, two thermal zones, a battery and a charger:
# every sensor read every 5 s) against an empty folder (nothing to read). Runs alternate
# A B A B. Per run: CPU of the recorder as a share of one core and its context switches per
# second (voluntary + involuntary, all threads; each is a wake-up), after a 3 s start-up.
#
# Usage: benches/power.sh [--seconds N] [--rounds N]      (defaults 60 s, 2 rounds)
# Environment: ROOST_BIN (default target/release/roost, built if missing).
set -euo pipefail
seconds=60
rounds=2
while [ $# -gt 0 ]; do
    case "$1" in
        --seconds) seconds="$2"; shift 2 ;;
        --rounds) rounds="$2"; shift 2 ;;
        *) echo "unknown argument $1" >&2; exit 2 ;;
    esac
done
cd "$(dirname "$0")/.."
bin="${ROOST_BIN:-target/release/roost}"
[ -x "$bin" ] || cargo build --release
work=$(mktemp -d /var/tmp/roost-power.XXXXXX)
clk=$(getconf CLK_TCK)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; }
trap cleanup EXIT

put() { mkdir -p "$(dirname "$1/$2")"; echo "$3" > "$1/$2"; }
pi_tree() {
    put "$1" devices/platform/soc/soc:firmware/get_throttled 0x0
    put "$1" class/hwmon/hwmon0/name rpi_volt
    put "$1" class/hwmon/hwmon0/in0_lcrit_alarm 0
    put "$1" class/thermal/thermal_zone0/type gpu-thermal
    put "$1" class/thermal/thermal_zone0/temp 40000
    put "$1" class/thermal/thermal_zone1/type cpu-thermal
    put "$1" class/thermal/thermal_zone1/temp 45000
    put "$1" class/power_supply/BAT0/type Battery
    put "$1" class/power_supply/BAT0/capacity 80
    put "$1" class/power_supply/BAT0/status Discharging
    put "$1" class/power_supply/ac/type Mains
    put "$1" class/power_supply/ac/online 0
}
switches() { cat /proc/"$1"/task/*/status | awk '/ctxt_switches/ {n += $2} END {print n}'; }

run() { # label sysfs-root
    local d="$work/$1-$RANDOM" rate=48000 period=1920
    mkdir -p "$d"
    printf '%s\n' 'defaults.pcm.minperiodtime 5000' \
        "pcm.roost_filecap { type file slave.pcm { type null } file \"/dev/null\" infile \"$d/mic.fifo\" format \"raw\" }" \
        "pcm.!default { type plug slave { pcm \"roost_filecap\" format S16_LE channels 1 rate $rate } }" \
        > "$d/asound.conf"
    printf '{"deployment": "bench", "storage": {"path": "%s", "minFreeSpace": "0", "onLowSpace": "stop"}, "recorder": {"device": "default", "sampleRate": %s, "channels": 1, "sampleFormat": "i16", "duration": "60s"}, "power": {"sysfsRoot": "%s"}, "periodFrames": %s}\n' \
        "$d/storage" "$rate" "$2" "$period" > "$d/config.json"
    "$bin" feed --fifo "$d/mic.fifo" --sample-rate $rate --channels 1 --period-frames $period \
        --seconds $((seconds + 10)) 2> "$d/feed.log" &
    local feeder=$!; pids+=("$feeder")
    sleep 0.5
    ALSA_CONFIG_PATH="$d/asound.conf" "$bin" record --config "$d/config.json" --state-dir "$d/state" 2> "$d/recorder.log" &
    local rec=$!; pids+=("$rec")
    sleep 3
    local c0 s0 t0 c1 s1 t1
    c0=$(awk '{print $14 + $15}' "/proc/$rec/stat"); s0=$(switches "$rec"); t0=$(date +%s.%N)
    sleep "$seconds"
    c1=$(awk '{print $14 + $15}' "/proc/$rec/stat"); s1=$(switches "$rec"); t1=$(date +%s.%N)
    kill -TERM "$rec"; wait "$rec" || true
    kill "$feeder" 2>/dev/null || true; wait "$feeder" 2>/dev/null || true
    python3 -c "
import sys
label, c0, c1, s0, s1, t0, t1, clk = sys.argv[1:]
wall = float(t1) - float(t0)
print(f'{label:>7}: CPU {(float(c1) - float(c0)) / float(clk) / wall * 100:.3f}% of one core, '
      f'{(int(s1) - int(s0)) / wall:.1f} context switches/s')" "$1" "$c0" "$c1" "$s0" "$s1" "$t0" "$t1" "$clk"
}

pi_tree "$work/pi"
mkdir -p "$work/none"
for _ in $(seq "$rounds"); do
    run watched "$work/pi"
    run none "$work/none"
done
