#!/usr/bin/env python3
"""Writes N recordings under DIR/recordings/YYYY/MM/DD/, one a minute from 2025-01-01 00:00 UTC:
8000 Hz mono 16-bit, 400 frames (0.05 s, 844 bytes), named as roost names them. Files only:
metadata.db is made by the recorder's rebuild (the first measured run)."""
import io, os, sys, wave, datetime
out, n = sys.argv[1], int(sys.argv[2])
buf = io.BytesIO()
with wave.open(buf, "wb") as w:
    w.setnchannels(1); w.setsampwidth(2); w.setframerate(8000)
    w.writeframes(bytes(800))
body = buf.getvalue()
t0 = datetime.datetime(2025, 1, 1, tzinfo=datetime.timezone.utc)
made = None
for i in range(n):
    t = t0 + datetime.timedelta(minutes=i)
    d = os.path.join(out, "recordings", t.strftime("%Y/%m/%d"))
    if d != made:
        os.makedirs(d, exist_ok=True); made = d
    with open(os.path.join(d, t.strftime("%Y%m%dT%H%M%S.000000Z.wav")), "wb") as f:
        f.write(body)
