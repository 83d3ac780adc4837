#!/usr/bin/env bash
# Builds the test inmates (guests/inmates) into OUTDIR (default: build/inmates
# in the repo).  Prints OUTDIR as the last line, for scripts to capture.
#   scripts/build-inmates.sh [OUTDIR]
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
outdir=${1:-$repo/build/inmates}
mkdir -p "$outdir"
outdir=$(cd "$outdir" && pwd)

if ! command -v gcc >/dev/null || ! command -v make >/dev/null || ! command -v ld >/dev/null; then
	echo "build-inmates: gcc/make/binutils missing, installing build-essential" >&2
	export DEBIAN_FRONTEND=noninteractive
	apt-get update -qq >&2
	apt-get install -y -qq build-essential >&2
fi

make -C "$repo/guests/inmates" --no-print-directory -j"$(nproc)" O="$outdir" >&2
echo "$outdir"
