#!/usr/bin/env bash
# Figures of the systemd runtime for docs/PERFORMANCE.md ("## systemd runtime").
# Needs root (each measurement runs its own private `systemd --user`, see
# tests/support/systemd_sandbox.rs). Debug build: the times measured are systemd's and the
# bus's, not roost's CPU time.
#
#   kill -9 of a component's main process -> systemd's own restart (ActiveEnterTimestamp)
#   kill -9 -> SystemdRuntime::observe() shows Running with the new pid (event-driven)
#   kill -9 -> status.json shows Running with the new pid (the reconciler of `roost run` with
#             the systemd runtime), and an atomic replace adding a component -> Running there
#   D-Bus calls per observe when nothing changed, and after one unit changed
set -euo pipefail
cd "$(dirname "$0")/.."
exec cargo test --test systemd_bench -- --ignored --nocapture --test-threads=1
