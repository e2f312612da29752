#!/usr/bin/env bash
# benches/repair_live.sh BIN STORAGE N (STORAGE made by benches/repair_fixture.py): metadata.db lost while recording (1 s files at 8 kHz through ALSA's
# file plugin, fed at real-time pace by `roost feed`): the recorder rebuilds the N rows beside
# recording. Prints: seconds until every file had a row, the most rows owed seen, any error in
# the report, frames dropped, files written during it, VmHWM.
set -euo pipefail
bin=$1 storage=$2 n=$3
mkdir -p /tmp/r22; work=$(mktemp -d /tmp/r22/live.XXXXXX)
mkfifo "$work/mic.fifo"
cat > "$work/asound.conf" <<CONF
defaults.pcm.minperiodtime 5000
pcm.roost_filecap { type file slave.pcm { type null } file "/dev/null" infile "$work/mic.fifo" format "raw" }
pcm.!default { type plug slave { pcm "roost_filecap" format S16_LE channels 1 rate 8000 } }
CONF
cat > "$work/config.json" <<JSON
{"deployment": "bench",
 "storage": {"path": "$storage", "minFreeSpace": "0", "onLowSpace": "stop"},
 "recorder": {"device": "default", "sampleRate": 8000, "channels": 1, "sampleFormat": "i16", "duration": "1s"},
 "periodFrames": 320}
JSON
rm -f "$storage"/metadata.db*
"$bin" feed --fifo "$work/mic.fifo" --sample-rate 8000 --channels 1 --period-frames 320 --seconds 120 > /dev/null 2> "$work/feed.log" &
feeder=$!
sleep 0.5
t0=$(date +%s.%N)
ALSA_CONFIG_PATH="$work/asound.conf" "$bin" record --config "$work/config.json" --state-dir "$work/state" > /dev/null 2> "$work/recorder.log" &
rec=$!
python3 - "$storage/metadata.db" "$work/state/run/recorder-report.json" "$n" "$t0" "$rec" <<'PY'
import json, sqlite3, sys, time
db, report, n, t0, pid = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4]), sys.argv[5]
owed, errors, done_at = 0, set(), None
def rows():
    try: return sqlite3.connect(db, timeout=5).execute("select count(*) from recording where path is not null").fetchone()[0]
    except Exception: return 0
while True:
    time.sleep(0.25)
    try: r = json.load(open(report))
    except Exception: continue
    owed = max(owed, r.get("rowsOwed", 0))
    if r.get("error"): errors.add(r["error"]["code"])
    if done_at is None and rows() >= n + r["filesWritten"] and r["filesWritten"] > 0:
        done_at = time.time()
    if done_at and time.time() > done_at + 5: break
hwm = [l.split()[1] for l in open(f"/proc/{pid}/status") if l.startswith("VmHWM")][0]
print(f"rebuild of {n} while recording: every file had a row after {done_at - t0:.1f} s; "
      f"most rows owed {owed}; errors {sorted(errors) or 'none'}; files written {r['filesWritten']}, "
      f"frames dropped {r['samplesDropped']}, VmHWM {int(hwm)/1024:.1f} MiB")
PY
kill -TERM $rec; while [ -e /proc/$rec ]; do sleep 0.1; done
kill $feeder 2>/dev/null || true
python3 - "$storage/metadata.db" "$work/state/run/recorder-report.json" <<'PY'
import json, sqlite3, sys
r = json.load(open(sys.argv[2]))
c = sqlite3.connect(sys.argv[1])
print(f"at stop: files written {r['filesWritten']}, frames captured {r['samplesCaptured']}, dropped {r['samplesDropped']}, "
      f"rows {c.execute('select count(*) from recording where path is not null').fetchone()[0]}, "
      f"repair.progress {r['repair'].get('progress')}")
PY
