#!/usr/bin/env python3
"""Prints BatDetect2's results for one recording as roost's findings JSON.

usage: batdetect2_to_roost.py [--duration S] [--sample-rate HZ] RESULTS_JSON

RESULTS_JSON is the file `batdetect2 detect AUDIO_DIR ANN_DIR THRESHOLD` writes for one
recording (ANN_DIR/<name>.wav.json), or the dictionary `batdetect2.api.process_file` returns
(its "pred_dict" is used). Each entry of "annotation" becomes one detection: location
[start_time, low_freq, end_time, high_freq], detection_score det_prob, and a tag "species" with
the value of "class" and confidence class_prob (as acoupi_batdetect2 does). Times are cut at the
recording's duration (--duration, else ROOST_DURATION_S, else the file's "duration") and the
high frequency at half its sample rate (--sample-rate, else ROOST_SAMPLE_RATE). Time-expanded
results (time_exp other than 1) are refused. Python 3 standard library only. Exit status 2:
wrong usage; 1: unreadable results.
"""

import argparse
import json
import os
import sys


class BadResults(Exception):
    pass


def env_float(name):
    value = os.environ.get(name)
    return float(value) if value else None


def number(annotation, key, index):
    value = annotation.get(key)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise BadResults("annotation[%d].%s: %r is not a number" % (index, key, value))
    return float(value)


def detections(doc, args):
    if isinstance(doc, dict) and isinstance(doc.get("pred_dict"), dict):
        doc = doc["pred_dict"]
    if not isinstance(doc, dict):
        raise BadResults("not a BatDetect2 result (a JSON object with an \"annotation\" list)")
    if float(doc.get("time_exp", 1) or 1) != 1:
        raise BadResults("time-expanded results (time_exp %s) are not supported" % doc["time_exp"])
    annotations = doc.get("annotation", [])
    if not isinstance(annotations, list):
        raise BadResults("\"annotation\" is not a list")
    duration = args.duration if args.duration is not None else doc.get("duration")
    found = []
    for i, a in enumerate(annotations):
        if not isinstance(a, dict):
            raise BadResults("annotation[%d] is not an object" % i)
        start, end = number(a, "start_time", i), number(a, "end_time", i)
        low, high = number(a, "low_freq", i), number(a, "high_freq", i)
        if duration is not None:
            start, end = min(start, float(duration)), min(end, float(duration))
        if args.sample_rate:
            high = min(high, args.sample_rate / 2)
            low = min(low, high)
        tags = []
        if str(a.get("class", "")).strip():
            tags.append({
                "key": "species",
                "value": str(a["class"]).strip(),
                "confidence_score": number(a, "class_prob", i),
            })
        found.append({
            "location": [start, low, end, high],
            "detection_score": number(a, "det_prob", i),
            "tags": tags,
        })
    return found


def main():
    parser = argparse.ArgumentParser(
        description="Print BatDetect2's results for one recording as roost's findings JSON."
    )
    parser.add_argument("results", help="BatDetect2's JSON output for one file")
    parser.add_argument("--duration", type=float, default=env_float("ROOST_DURATION_S"),
                        help="recording's duration in seconds (default: ROOST_DURATION_S)")
    parser.add_argument("--sample-rate", type=float, default=env_float("ROOST_SAMPLE_RATE"),
                        help="recording's sample rate in Hz (default: ROOST_SAMPLE_RATE)")
    args = parser.parse_args()
    try:
        with open(args.results, encoding="utf-8") as f:
            doc = json.load(f)
        findings = {"detections": detections(doc, args)}
    except (OSError, ValueError, BadResults) as e:
        print("batdetect2_to_roost.py: %s: %s" % (args.results, e), file=sys.stderr)
        return 1
    json.dump(findings, sys.stdout)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
