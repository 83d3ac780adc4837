#!/usr/bin/env bash
# Kept for old command lines: fuzzes the virtqueue and virtio-blk targets, SECONDS each
# (default 60). scripts/fuzz.sh runs any target; docs/fuzzing.md.
set -euo pipefail
here=$(dirname "${BASH_SOURCE[0]}")
"$here/fuzz.sh" virtqueue "${1:-60}"
"$here/fuzz.sh" blk "${1:-60}"
