#!/bin/bash
# usage: benches/report_rewrites.sh ROOST_BIN — 60 s of a recorder (10 s files), curator, page and an
# offline connector (process runtime, ALSA file plugin fed by `roost feed`); prints how often
# status.json and each report were rewritten (mtime polled every 2 ms). Issue 22 figures.
set -e
BIN=$1; L=$2; D=$(mktemp -d /tmp/meas-XXXX); P=$((20000 + RANDOM % 10000))
cat > $D/d.yaml <<Y
apiVersion: roost/v1
kind: Deployment
metadata: {name: meas}
spec:
  location: {latitude: 51.76, longitude: -1.26}
  storage: {path: $D/storage, minFreeSpace: 0, onLowSpace: stop, maxAge: 30d}
  recorder: {device: default, sampleRate: 16000, channels: 1, sampleFormat: i16, duration: 10s, timezone: UTC}
  detectors:
    - {name: energy, kind: bandEnergy, lowHz: 500, highHz: 4000, thresholdDb: 12, minDuration: 100ms}
  page: {listen: "127.0.0.1:$P"}
  connect: {deviceId: dev-1, mqtt: {url: "mqtt://127.0.0.1:1"}}
  components: []
Y
$BIN feed --sample-rate 16000 --fifo $D/mic.fifo --alsa-config $D/asound.conf 2>/dev/null & FEED=$!
while [ ! -e $D/asound.conf ]; do sleep 0.05; done
ALSA_CONFIG_PATH=$D/asound.conf RUNTIME_DIRECTORY=/dev/shm $BIN run --runtime process --file $D/d.yaml --state-dir $D/state 2>/dev/null & R=$!
sleep 15
python3 - "$D" <<'PY'
import os, sys, time
d = sys.argv[1]
files = {"connect-report.json": d + "/state/run/connect-report.json", "status.json": d + "/state/status.json", "curator-report.json": d + "/state/run/curator-report.json", "recorder-report.json": d + "/state/run/recorder-report.json"}
last = {}; counts = {k: 0 for k in files}
end = time.time() + 60
while time.time() < end:
    for k, p in files.items():
        try: m = os.stat(p).st_mtime_ns
        except OSError: continue
        if k in last and m != last[k]: counts[k] += 1
        last[k] = m
    time.sleep(0.002)
print(counts)
PY
kill $R; wait $R 2>/dev/null || true; kill $FEED 2>/dev/null || true; rm -rf $D
