#!/bin/sh
# A detector for tests that prints progress on stdout before its JSON (the usual mistake).
echo "Analyzing $1"
echo '{"detections": []}'
