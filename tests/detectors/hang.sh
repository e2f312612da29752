#!/bin/sh
# A detector for tests that never finishes, with a grandchild in its process group: writes
# "GRANDCHILD_PID SCRIPT_PID" to the file named by its first argument, then waits forever.
sleep 1000 &
echo "$! $$" > "$1.partial" && mv "$1.partial" "$1"
wait
