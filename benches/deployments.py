#!/usr/bin/env python3
"""Figures of `roost run --dir` (release build, process runtime): N deployment files of M
components each (sleepers). Measures:
  1. an atomic edit of one file (one component's command changed) -> the device's status.json
     shows that deployment's new generation observed, Succeeded and Running (median, p90, max
     over E edits), and whether any of the other deployments' generations or pids changed;
  2. `roost status` wall time (median of 50);
  3. roost's resident memory (VmRSS, VmHWM) and threads;
  4. roost's CPU clock ticks (utime+stime) over S idle seconds.
Usage: benches/deployments.py [--deployments 50] [--components 5] [--edits 30] [--idle 30]
ROOST_BIN defaults to target/release/roost (built if missing)."""
import argparse, json, os, statistics, subprocess, sys, tempfile, time

ap = argparse.ArgumentParser()
ap.add_argument("--deployments", type=int, default=50)
ap.add_argument("--components", type=int, default=5)
ap.add_argument("--edits", type=int, default=30)
ap.add_argument("--idle", type=int, default=30)
a = ap.parse_args()
root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
binary = os.environ.get("ROOST_BIN", os.path.join(root, "target/release/roost"))
if not os.path.exists(binary):
    subprocess.run(["cargo", "build", "--release"], cwd=root, check=True)

work = tempfile.mkdtemp()
folder, state = os.path.join(work, "d"), os.path.join(work, "state")
os.mkdir(folder)


def deployment(i, version):
    comps = "".join(
        f'    - name: c{j}\n      command: ["/bin/sleep", "{100000 + (version if j == 0 else 0)}"]\n      stopTimeout: 1s\n'
        for j in range(a.components))
    return f"apiVersion: roost/v1\nkind: Deployment\nmetadata: {{name: d{i:02}}}\nspec:\n  components:\n{comps}"


def put(i, version):
    tmp = os.path.join(folder, f".d{i:02}.tmp")
    with open(tmp, "w") as f:
        f.write(deployment(i, version))
    os.rename(tmp, os.path.join(folder, f"d{i:02}.yaml"))


def status():
    try:
        with open(os.path.join(state, "status.json")) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def entries(s):
    return {d["deployment"]: d for d in (s or {}).get("deployments", []) if d.get("deployment")}


def settled(d, generation):
    return (d["generation"] == generation and d["observedGeneration"] == generation
            and d["phase"] == "Succeeded" and d["status"] == "Running")


for i in range(a.deployments):
    put(i, 0)
roost = subprocess.Popen([binary, "run", "--runtime", "process", "--dir", folder, "--state-dir", state],
                         stdout=subprocess.DEVNULL, stderr=open(os.path.join(work, "roost.log"), "w"))
try:
    deadline = time.time() + 120
    while True:
        e = entries(status())
        if len(e) == a.deployments and all(settled(d, 1) for d in e.values()):
            break
        if time.time() > deadline:
            sys.exit("not all deployments came up")
        time.sleep(0.05)
    before = entries(status())
    times, seen = [], []
    for k in range(1, a.edits + 1):
        time.sleep(0.3)
        t0 = time.perf_counter()
        put(7, k)
        first = None
        while True:
            d = entries(status()).get("d07")
            if first is None and d and d["generation"] == k + 1:
                first = (time.perf_counter() - t0) * 1000
            if d and settled(d, k + 1):
                break
            time.sleep(0.0005)
        times.append((time.perf_counter() - t0) * 1000)
        seen.append(first)
    after = entries(status())
    pids = lambda d: [c.get("pid") for c in d["components"]]
    others = [n for n in before if n != "d07"]
    touched = [n for n in others if after[n]["generation"] != before[n]["generation"] or pids(after[n]) != pids(before[n])]
    times.sort()
    print(f"deployments {a.deployments} x components {a.components}; {a.edits} edits of d07")
    print(f"edit -> applied: median {statistics.median(times):.1f} ms, p90 {times[int(len(times) * 0.9) - 1]:.1f} ms, max {times[-1]:.1f} ms")
    print(f"edit -> new generation first in status.json: median {statistics.median(seen):.1f} ms")
    print(f"other deployments touched (generation or pid changed): {len(touched)} of {len(others)}")
    runs = []
    for _ in range(50):
        t0 = time.perf_counter()
        subprocess.run([binary, "status", "--state-dir", state], stdout=subprocess.DEVNULL, check=False)
        runs.append((time.perf_counter() - t0) * 1000)
    print(f"roost status: median {statistics.median(runs):.1f} ms, max {max(runs):.1f} ms")
    fields = {}
    with open(f"/proc/{roost.pid}/status") as f:
        for line in f:
            k, _, v = line.partition(":")
            fields[k] = v.strip()
    print(f"roost VmRSS {fields['VmRSS']}, VmHWM {fields['VmHWM']}, threads {fields['Threads']}")

    def ticks():
        with open(f"/proc/{roost.pid}/stat") as f:
            parts = f.read().rsplit(")", 1)[1].split()
        return int(parts[11]) + int(parts[12])

    t = ticks()
    time.sleep(a.idle)
    print(f"idle: {ticks() - t} clock ticks over {a.idle} s")
finally:
    roost.terminate()
    roost.wait(timeout=60)
    subprocess.run(["rm", "-rf", work])
