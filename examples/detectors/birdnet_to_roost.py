#!/usr/bin/env python3
"""Prints BirdNET-Analyzer's results for one recording as roost's findings JSON.

usage: birdnet_to_roost.py [--low-hz HZ] [--high-hz HZ] [--duration S] [--sample-rate HZ] RESULTS

RESULTS is BirdNET-Analyzer's output for one file, in any of its table formats:
  --rtype csv    "Start (s),End (s),Scientific name,Common name,Confidence[,File]"
  --rtype r      "filepath,start,end,scientific_name,common_name,confidence,..."
  --rtype table  the Raven selection table (tab-separated, "Begin Time (s)", "Low Freq (Hz)" ...)

Each row becomes one detection: location [start, low, end, high], detection_score and tags
"species" (scientific name), "common_name" and "species_code" (where the format has them), all
with BirdNET's confidence. The band is the selection table's, else 0-15000 Hz (BirdNET's own
band) unless --low-hz/--high-hz say otherwise. BirdNET pads the last 3 s segment past the end of
the file: times are cut at the recording's duration (--duration, else ROOST_DURATION_S), and
the high frequency at half its sample rate (--sample-rate, else ROOST_SAMPLE_RATE).
Python 3 standard library only. Exit status 2: wrong usage; 1: unreadable results.
"""

import argparse
import csv
import json
import os
import sys

# Canonical name -> the column names BirdNET-Analyzer's formats use for it.
COLUMNS = {
    "start": ("Start (s)", "Begin Time (s)", "start"),
    "end": ("End (s)", "End Time (s)", "end"),
    "low": ("Low Freq (Hz)",),
    "high": ("High Freq (Hz)",),
    "species": ("Scientific name", "Scientific Name", "scientific_name"),
    "common_name": ("Common name", "Common Name", "common_name"),
    "species_code": ("Species Code",),
    "confidence": ("Confidence", "confidence"),
}
BIRDNET_LOW_HZ = 0.0
BIRDNET_HIGH_HZ = 15000.0


class BadResults(Exception):
    pass


def env_float(name):
    value = os.environ.get(name)
    return float(value) if value else None


def columns_of(header):
    found = {}
    for name, aliases in COLUMNS.items():
        for alias in aliases:
            if alias in header:
                found[name] = alias
                break
    for required in ("start", "end", "confidence"):
        if required not in found:
            raise BadResults(
                "no %r column (found %s): is this a BirdNET-Analyzer results file?"
                % (COLUMNS[required][0], ", ".join(header))
            )
    return found


def number(row, column, line):
    try:
        return float(row[column])
    except (TypeError, ValueError):
        raise BadResults("line %d: %r is not a number in column %r" % (line, row[column], column))


def detections(lines, args):
    delimiter = "\t" if "\t" in lines[0] else ","
    reader = csv.DictReader(lines, delimiter=delimiter)
    columns = columns_of(reader.fieldnames or [])
    found = []
    for line, row in enumerate(reader, start=2):
        if not any((value or "").strip() for key, value in row.items() if key is not None):
            continue
        # The selection table's placeholder row for a file without detections.
        if "common_name" in columns and row[columns["common_name"]] == "nocall":
            continue
        start = number(row, columns["start"], line)
        end = number(row, columns["end"], line)
        confidence = number(row, columns["confidence"], line)
        low = number(row, columns["low"], line) if "low" in columns else BIRDNET_LOW_HZ
        high = number(row, columns["high"], line) if "high" in columns else BIRDNET_HIGH_HZ
        low = args.low_hz if args.low_hz is not None else low
        high = args.high_hz if args.high_hz is not None else high
        if args.duration is not None:
            start, end = min(start, args.duration), min(end, args.duration)
        if args.sample_rate:
            high = min(high, args.sample_rate / 2)
            low = min(low, high)
        tags = [
            {"key": key, "value": row[columns[key]].strip(), "confidence_score": confidence}
            for key in ("species", "common_name", "species_code")
            if key in columns and (row[columns[key]] or "").strip()
        ]
        found.append(
            {"location": [start, low, end, high], "detection_score": confidence, "tags": tags}
        )
    return found


def main():
    parser = argparse.ArgumentParser(
        description="Print BirdNET-Analyzer's results for one recording as roost's findings JSON."
    )
    parser.add_argument("results", help="BirdNET-Analyzer's csv, r or selection-table output for one file")
    parser.add_argument("--low-hz", type=float, help="low edge of every detection (default: the file's, else 0)")
    parser.add_argument("--high-hz", type=float, help="high edge of every detection (default: the file's, else 15000)")
    parser.add_argument("--duration", type=float, default=env_float("ROOST_DURATION_S"),
                        help="recording's duration in seconds (default: ROOST_DURATION_S)")
    parser.add_argument("--sample-rate", type=float, default=env_float("ROOST_SAMPLE_RATE"),
                        help="recording's sample rate in Hz (default: ROOST_SAMPLE_RATE)")
    args = parser.parse_args()
    try:
        with open(args.results, encoding="utf-8-sig", newline="") as f:
            lines = f.read().splitlines()
        if not lines:
            raise BadResults("the file is empty")
        findings = {"detections": detections(lines, args)}
    except (OSError, UnicodeDecodeError, BadResults) as e:
        print("birdnet_to_roost.py: %s: %s" % (args.results, e), file=sys.stderr)
        return 1
    json.dump(findings, sys.stdout)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
