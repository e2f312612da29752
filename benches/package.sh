#!/usr/bin/env bash
# The package figures of docs/PERFORMANCE.md: package and stripped binary size per architecture,
# and the wall time of `roost status` and `roost check --offline` under qemu-user (arm64, armhf)
# beside the amd64 binary on this machine, in the same run.
#
#   packaging/build-debs && benches/package.sh [--runs N]     (default 20 runs per figure)
set -euo pipefail
cd "$(dirname "$0")/.."
runs=20
[ "${1:-}" = "--runs" ] && runs=$2
target_dir="${CARGO_TARGET_DIR:-$PWD/target}"
version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n1)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

mb() { awk -v b="$1" 'BEGIN { printf "%.2f MB", b / 1e6 }'; }

echo "| architecture | package | stripped binary |"
echo "|---|---|---|"
for arch in amd64 arm64 armhf; do
    deb="$target_dir/debian/roost_${version}_${arch}.deb"
    dpkg-deb -x "$deb" "$work/$arch"
    echo "| $arch | $(mb "$(stat -c %s "$deb")") | $(mb "$(stat -c %s "$work/$arch/usr/bin/roost")") |"
done

# A state folder with a real status.json: the amd64 binary runs the packaged deployment for 2 s.
state="$work/state"
"$work/amd64/usr/bin/roost" run --runtime process --file packaging/deployment.yaml \
    --state-dir "$state" 2>/dev/null &
roost=$!
sleep 2
kill -TERM "$roost"
wait "$roost" || true
example=examples/dawn-chorus.yaml

# Median wall time in milliseconds of `$runs` runs of the command (its exit status is ignored:
# `roost status` on a stopped roost exits 3).
median_ms() {
    local times=() i start end
    for ((i = 0; i < runs; i++)); do
        start=$(date +%s%N)
        "$@" >/dev/null 2>&1 || true
        end=$(date +%s%N)
        times+=($(((end - start) / 1000)))
    done
    printf '%s\n' "${times[@]}" | sort -n | awk '{ v[NR] = $1 } END { printf "%.1f", v[int((NR + 1) / 2)] / 1000 }'
}

echo
echo "| command (median of $runs) | amd64 native | arm64 qemu | ratio | armhf qemu | ratio |"
echo "|---|---|---|---|---|---|"
for what in status check; do
    if [ "$what" = status ]; then
        args=(status --state-dir "$state")
        label="roost status"
    else
        args=(check --offline --file "$example")
        label="roost check --offline ($(basename "$example"))"
    fi
    native=$(median_ms "$work/amd64/usr/bin/roost" "${args[@]}")
    arm64=$(median_ms qemu-aarch64-static "$work/arm64/usr/bin/roost" "${args[@]}")
    armhf=$(median_ms qemu-arm-static "$work/armhf/usr/bin/roost" "${args[@]}")
    ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.1fx", a / b }'; }
    echo "| \`$label\` | $native ms | $arm64 ms | $(ratio "$arm64" "$native") | $armhf ms | $(ratio "$armhf" "$native") |"
done
