#!/bin/sh
# A detector for tests that fails the way a missing model does: a message on stderr, status 3.
echo "loading model..." >&2
echo "error: model file /opt/model.tflite not found" >&2
exit 3
