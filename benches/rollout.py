#!/usr/bin/env python3
"""Figures of desired state over the broker (issue 26), release build, a real Mosquitto on a
free localhost port (anonymous, no persistence), Debian's minisign for the key:
  1. `roost fleet rollout` to N devices (`roost run --file`, process runtime, one sleeper each)
     in batches 1,10%,100% through a G s gate: total wall time and the controller's peak
     memory (VmHWM via /usr/bin/time -v);
  2. bytes on the link of one device for that rollout: every MQTT message to and from it
     under `<prefix>/<id>/#` (payload + topic + 4 bytes of fixed header and packet id) from the
     rollout's start to its end, and of those the desired-state messages alone;
  3. `roost fleet` over F devices' retained messages (status ~1.5 KB, availability,
     heartbeat, desired/report) published by this script: wall time and peak memory.
Usage: benches/rollout.py [--devices 20] [--gate 5] [--fleet 10000]
ROOST_BIN defaults to target/release/roost (built if missing)."""
import argparse, json, os, socket, struct, subprocess, sys, tempfile, threading, time

ap = argparse.ArgumentParser()
ap.add_argument("--devices", type=int, default=20)
ap.add_argument("--gate", type=int, default=5)
ap.add_argument("--fleet", type=int, default=10000)
a = ap.parse_args()
root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
binary = os.environ.get("ROOST_BIN", os.path.join(root, "target/release/roost"))
if not os.path.exists(binary):
    subprocess.run(["cargo", "build", "--release"], cwd=root, check=True)
work = tempfile.mkdtemp()


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


port = free_port()
conf = os.path.join(work, "mosquitto.conf")
with open(conf, "w") as f:
    f.write(f"listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\nmax_queued_messages 100000\n")
broker = subprocess.Popen(["/usr/sbin/mosquitto", "-c", conf], stderr=subprocess.DEVNULL)
while True:
    try:
        socket.create_connection(("127.0.0.1", port)).close()
        break
    except OSError:
        time.sleep(0.05)
url = f"mqtt://127.0.0.1:{port}"

keys = os.path.join(work, "keys")
os.mkdir(keys)
secret = os.path.join(work, "fleet.key")
subprocess.run(["minisign", "-G", "-W", "-p", os.path.join(keys, "fleet.pub"), "-s", secret],
               check=True, stdout=subprocess.DEVNULL)


def yaml(tag):
    # One file for the whole fleet: each device's id comes from ROOST_DEVICE_ID.
    return (f"apiVersion: roost/v1\nkind: Deployment\nmetadata: {{name: site}}\nspec:\n"
            f"  connect:\n    mqtt: {{url: \"{url}\", homeAssistant: false}}\n"
            f"    desired: {{trustedKeys: {keys}, gate: {a.gate}s}}\n"
            f"  components:\n    - name: a\n      command: [\"/bin/sh\", \"-c\", \"sleep 100000 # {tag}\"]\n"
            f"      stopTimeout: 1s\n")


devices = []
for i in range(1, a.devices + 1):
    d = os.path.join(work, f"d{i:02}")
    os.mkdir(d)
    with open(os.path.join(d, "deployment.yaml"), "w") as f:
        f.write(yaml("v0"))
    p = subprocess.Popen([binary, "run", "--runtime", "process", "--file", os.path.join(d, "deployment.yaml"),
                          "--state-dir", os.path.join(d, "state")], stderr=subprocess.DEVNULL,
                         env=dict(os.environ, ROOST_DEVICE_ID=f"d{i:02}"))
    devices.append((d, p))


def remote(d):
    try:
        with open(os.path.join(d, "state", "status.json")) as f:
            return json.load(f).get("remote") or {}
    except (OSError, ValueError):
        return {}


deadline = time.time() + 60
while not all(remote(d).get("state") == "none" for d, _ in devices):
    assert time.time() < deadline, "devices never reported"
    time.sleep(0.2)
time.sleep(2)  # every device connected and its report retained

# Every message to and from d01 during the rollout.
sub = subprocess.Popen(["mosquitto_sub", "-p", str(port), "-v", "-t", "roost/d01/#", "-F", "%t\t%l"],
                       stdout=subprocess.PIPE, text=True)
time.sleep(1)
seen_before = []
lines = []
reader = threading.Thread(target=lambda: [lines.append(l) for l in sub.stdout], daemon=True)
reader.start()
time.sleep(1)
skip = len(lines)  # retained messages delivered at subscription
v1 = os.path.join(work, "v1.yaml")
with open(v1, "w") as f:
    f.write(yaml("v1"))
t0 = time.time()
out = subprocess.run(["/usr/bin/time", "-v", binary, "fleet", "rollout", "--broker", url, "--key", secret,
                      "--file", v1, "--devices", ",".join(f"d{i:02}" for i in range(1, a.devices + 1)),
                      "--gate", f"{a.gate}s", "--json"], capture_output=True, text=True)
total = time.time() - t0
time.sleep(1)
sub.terminate()
record = json.loads(out.stdout)
hwm = next(int(l.split(":")[1]) for l in out.stderr.splitlines() if "Maximum resident set size" in l)
passed = sum(1 for v in record["devices"].values() if v["state"] == "passed")
msgs = lines[skip:]
size = lambda l: int(l.split("\t", 1)[1]) + len(l.split("\t", 1)[0]) + 4
desired = [l for l in msgs if l.split("\t", 1)[0] in ("roost/d01/desired", "roost/d01/desired/report")]
print(f"rollout to {a.devices} devices, batches 1,10%,100%, gate {a.gate}s: {record['state']}, {passed} passed, "
      f"total {total:.1f} s, controller VmHWM {hwm / 1024:.1f} MiB")
from collections import Counter
print("messages by topic:", dict(Counter(l.split("\t", 1)[0] for l in msgs)))
print(f"link bytes of d01 for the rollout: {sum(map(size, msgs))} B in {len(msgs)} messages "
      f"(desired state alone: {sum(map(size, desired))} B in {len(desired)}: the signed message and the reports)")

for d, p in devices:
    p.terminate()
for d, p in devices:
    p.wait()

# `roost fleet` over a large fleet: retained messages published over one raw MQTT 3.1.1
# connection (QoS 0), then read back by roost.


def packet(kind, body):
    n, enc = len(body), b""
    while True:
        b = n % 128
        n //= 128
        enc += bytes([b | (0x80 if n else 0)])
        if not n:
            break
    return bytes([kind]) + enc + body


def utf(s):
    b = s.encode()
    return struct.pack(">H", len(b)) + b


s = socket.create_connection(("127.0.0.1", port))
s.sendall(packet(0x10, utf("MQTT") + bytes([4, 2]) + struct.pack(">H", 60) + utf("bench-publisher")))
s.recv(4)
now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
status = {"apiVersion": "roost/v1", "kind": "DeploymentStatus", "deployment": "meadow", "generation": 3,
          "observedGeneration": 3, "phase": "Succeeded", "status": "Running", "errors": [],
          "components": [{"name": n, "status": "Running", "restartCount": 0, "pid": 1000 + k,
                          "since": now, "reason": None, "exitCode": None} for k, n in enumerate(["recorder", "curator", "connect", "uploader"])],
          "reconciler": {"pid": 1, "version": "0.1.0", "runtime": "systemd"}, "updatedAt": now}
buf = bytearray()
t0 = time.time()
for i in range(a.fleet):
    dev = f"dev{i:05}"
    status["deviceId"] = dev
    report = {"device": dev, "state": "passed", "desiredVersion": 4, "appliedVersion": 4, "appliedBy": "remote",
              "highestVersion": 4, "labels": {"site": f"s{i % 40}"}}
    heartbeat = {"deviceId": dev, "sentAt": now, "intervalSeconds": 600, "metrics": {"status": "Running"}}
    for topic, payload in [(f"roost/{dev}/status", json.dumps(status)), (f"roost/{dev}/availability", "online"),
                           (f"roost/{dev}/heartbeat", json.dumps(heartbeat)),
                           (f"roost/{dev}/desired/report", json.dumps(report))]:
        buf += packet(0x31, utf(topic) + payload.encode())
    if len(buf) > 1 << 20:
        s.sendall(buf)
        buf.clear()
s.sendall(buf + packet(0xE0, b""))
s.close()
time.sleep(2)
times, hwms = [], []
for _ in range(3):
    t0 = time.time()
    out = subprocess.run(["/usr/bin/time", "-v", binary, "fleet", "--broker", url, "--json", "--wait", "1s"],
                         capture_output=True, text=True)
    times.append(time.time() - t0)
    hwms.append(next(int(l.split(":")[1]) for l in out.stderr.splitlines() if "Maximum resident set size" in l))
    rows = json.loads(out.stdout)
times.sort()
print(f"roost fleet over {a.fleet} devices ({len(rows)} rows, 4 retained messages each): median {times[1]:.2f} s "
      f"(includes the 1 s quiet wait), VmHWM {max(hwms) / 1024:.1f} MiB")
broker.terminate()
