#!/usr/bin/env bash
# Derive requirements/lock-aarch64.txt from requirements/lock.txt (the x86_64 pins) and check, with
# pip's resolver for CPython 3.11 on manylinux aarch64, that every pin has a wheel there.
#   scripts/lock_aarch64.sh            # rewrite the file, then check it (needs PyPI; about 2 min)
#   scripts/lock_aarch64.sh --print    # print the derived pins only (tests/test_docker.py compares)
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
PY=${PY:-$ROOT/.venv/bin/python}
LOCK=$ROOT/requirements/lock.txt
OUT=$ROOT/requirements/lock-aarch64.txt
TORCH_AARCH64=2.10.0   # the newest CPU-only aarch64 torch wheel on PyPI (see the file's header)
TORCHVISION_AARCH64=0.25.0   # the torchvision release built against torch 2.10

derive() {
  grep -v -E '^(cuda-|nvidia-|triton==|litert-torch==|litert-converter==)' "$LOCK" | sed -E -e "s/^torch==.*/torch==$TORCH_AARCH64/" -e "s/^torchvision==.*/torchvision==$TORCHVISION_AARCH64/"
}
if [ "${1:-}" = "--print" ]; then derive; exit 0; fi

header=$(sed -n '/^#/p' "$OUT" 2>/dev/null || true)
{ printf '%s\n' "$header"; derive; } > "$OUT.tmp" && mv "$OUT.tmp" "$OUT"
echo "wrote ${OUT#$ROOT/} ($(grep -vc '^#' "$OUT") pins); checking aarch64 wheels ..."

PLATFORMS=()
for t in manylinux2014 manylinux_2_17 manylinux_2_24 manylinux_2_26 manylinux_2_27 manylinux_2_28 \
         manylinux_2_31 manylinux_2_34 manylinux_2_35 manylinux_2_36 linux; do
  PLATFORMS+=(--platform "${t}_aarch64")
done
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
# every pin exists for aarch64 (antlr4-python3-runtime 4.9.3 is a pure-Python sdist only)
"$PY" -m pip install --disable-pip-version-check --quiet --dry-run --ignore-installed --target "$tmp/t" \
  "${PLATFORMS[@]}" --python-version 3.11 --implementation cp --only-binary=:all: \
  --no-binary=antlr4-python3-runtime --no-deps -r "$OUT"
echo "ok: every pin of ${OUT#$ROOT/} has a CPython 3.11 aarch64 wheel (or is pure Python)"
