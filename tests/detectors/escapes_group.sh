#!/bin/sh
# A detector for tests that starts a process in a session of its own (outside the run's
# process group, as a daemonising model server would), prints valid findings and exits;
# writes that process's pid to the file named by its first argument.
setsid sleep 1000 </dev/null >/dev/null 2>&1 &
echo "$!" > "$1.partial" && mv "$1.partial" "$1"
echo '{"detections": []}'
