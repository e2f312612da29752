#!/bin/sh
# A detector for tests that prints valid findings and exits, leaving a grandchild that holds
# its stdout open; writes "GRANDCHILD_PID" to the file named by its first argument.
sleep 1000 &
echo "$!" > "$1.partial" && mv "$1.partial" "$1"
echo '{"detections": []}'
