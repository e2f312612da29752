#!/usr/bin/env bash
# benches/repair.sh BIN STORAGE N (STORAGE made by benches/repair_fixture.py): (1) metadata.db lost: `roost record` (no audio device) rebuilds it
# from the N files; seconds until every file has a row, and VmHWM then; (2) a restart on the
# complete database: VmHWM once the start-up repair is over (CPU idle for 3 s).
set -euo pipefail
bin=$1 storage=$2 n=$3
mkdir -p /tmp/r22; work=$(mktemp -d /tmp/r22/run.XXXXXX)
: > "$work/no-audio.conf"
cat > "$work/config.json" <<JSON
{"deployment": "bench",
 "storage": {"path": "$storage", "minFreeSpace": "0", "onLowSpace": "stop"},
 "recorder": {"device": "default", "sampleRate": 8000, "channels": 1, "sampleFormat": "i16", "duration": "60s"}}
JSON
rows() { python3 -c 'import sqlite3,sys
try: print(sqlite3.connect(sys.argv[1], timeout=5).execute("select count(*) from recording where path is not null").fetchone()[0])
except Exception: print(0)' "$storage/metadata.db"; }
hwm() { awk '$1 == "VmHWM:" {print $2}' "/proc/$1/status"; }
ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
start() { ALSA_CONFIG_PATH="$work/no-audio.conf" "$bin" record --config "$work/config.json" --state-dir "$work/state" > /dev/null 2> "$work/$1.log" & echo $!; }
stop() { kill -TERM "$1"; while [ -e "/proc/$1" ]; do sleep 0.1; done; }

rm -f "$storage"/metadata.db*
t0=$(date +%s.%N); pid=$(start rebuild)
while [ "$(rows)" -lt "$n" ]; do sleep 0.5; done
t1=$(date +%s.%N); sleep 3; h=$(hwm "$pid") # 3 s on: the report written after the rebuild counts
stop "$pid"
python3 -c "import sys; print(f'rebuild of {sys.argv[3]}: {float(sys.argv[2])-float(sys.argv[1]):.1f} s until every file had a row, VmHWM {int(sys.argv[4])/1024:.1f} MiB (3 s after)')" "$t0" "$t1" "$n" "$h"

pid=$(start restart); t0=$(date +%s.%N)
last=-1; idle=0
while [ $idle -lt 6 ]; do
  sleep 0.5; c=$(ticks "$pid")
  if [ "$c" = "$last" ]; then idle=$((idle + 1)); else idle=0; last=$c; fi
done
h=$(hwm "$pid"); stop "$pid"
python3 -c "import sys; print(f'start-up repair of {sys.argv[1]} (nothing to repair): VmHWM {int(sys.argv[2])/1024:.1f} MiB after it')" "$n" "$h"
