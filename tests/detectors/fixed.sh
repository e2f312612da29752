#!/bin/sh
# A detector for tests: prints the same valid findings for any recording, after checking that
# roost called it as documented (the recording's path last and in ROOST_RECORDING, the sample
# rate and duration in ROOST_SAMPLE_RATE and ROOST_DURATION_S).
for last; do :; done
if [ ! -f "$last" ] || [ "$last" != "$ROOST_RECORDING" ] || [ -z "$ROOST_SAMPLE_RATE" ] || [ -z "$ROOST_DURATION_S" ]; then
    echo "fixed.sh: called wrongly: last argument '$last', ROOST_RECORDING '$ROOST_RECORDING'" >&2
    exit 4
fi
echo "fixed.sh: analysing $last" >&2
cat <<'JSON'
{
  "detections": [
    {"location": [0.5, 2000.0, 1.5, 8000.0], "detection_score": 0.9,
     "tags": [{"key": "species", "value": "Turdus merula", "confidence_score": 0.8}]}
  ],
  "tags": [{"key": "weather", "value": "rain", "confidence_score": 0.6}]
}
JSON
