#!/usr/bin/env bash
# Runs the pipeline on ARM64 (aarch64) under QEMU user-mode emulation on an x86_64 Linux host:
#   1. qemu-aarch64-static, extracted from Debian's qemu-user-static .deb (nothing installed);
#   2. an aarch64 Debian bookworm sysroot with python3.11 (debootstrap --foreign, unpacked with dpkg -x);
#   3. aarch64 wheels pinned in requirements/aarch64-emulated.txt, installed with --no-deps into a
#      site folder the guest puts on PYTHONPATH;
#   4. a fake Neoverse-N1 /proc/cpuinfo in the sysroot, QEMU_CPU=neoverse-n1, QEMU_LD_PREFIX=sysroot;
#   5. binfmt_misc mounted if needed and qemu-aarch64 registered with the F flag (the pipeline starts
#      its benchmark workers with sys.executable); both undone on exit;
#   6. the fp32 models trained NATIVELY by the host's .venv into the model cache (BSB_CACHE_DIR);
#   7. a small sweep under emulation (quantization and measurement only), logged to MLflow as
#      experiment `arm64-emulated`, stamped arch=aarch64 emulated=true; a table and wall times.
# Idempotent: everything is cached under .cache/arm64/ and rebuilt only when missing or when its
# pins change. Usage:
#   scripts/arm64_emulated.sh [EXTRA HYDRA OVERRIDES...]     e.g. force=true, seed=1, 'model=cnn'
# Environment: ARM64_MODELS (mlp,cnn) ARM64_QUANTS (fp32,dynamic,static) ARM64_BACKENDS
# (pytorch,onnxruntime) ARM64_DEVICE (qemu_neoverse_n1) ARM64_EXPERIMENT (arm64-emulated)
# ARM64_QEMU_CPU (neoverse-n1) ARM64_NICE (15) ARM64_SETUP_ONLY=1 (stop before any emulated run)
# ARM64_CHECK_ONLY=1 (stop after the guest check: python, imports, binfmt subprocess, emulation stamp)
# ARM64_TFLITE=1 (also install requirements/aarch64-emulated-tflite.txt, +1.7 GB, and sweep backend=tflite)
# ARM64_MIRROR (default: the Debian mirror of /etc/apt/sources.list[.d]) HOST_PY (.venv/bin/python)
# MLFLOW_TRACKING_URI (sqlite:///<project>/mlflow.db) BSB_CACHE_DIR (<project>/.cache/bsb_hydra).
# Needs root (or sudo) for debootstrap/apt-get and binfmt_misc. Emulated timings mean nothing.
set -euo pipefail

T_START=$(date +%s)
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
CACHE="$ROOT/.cache/arm64"
SYSROOT="$CACHE/sysroot"
SITE="$CACHE/site"
SITE_TFLITE="$CACHE/site-tflite"
WHEELS="$CACHE/wheels"
DEBS="$CACHE/debs"
QEMU="$CACHE/bin/qemu-aarch64-static"
PINS="$ROOT/requirements/aarch64-emulated.txt"
SUITE=bookworm
HOST_PY="${HOST_PY:-$ROOT/.venv/bin/python}"
MODELS="${ARM64_MODELS:-mlp,cnn}"
QUANTS="${ARM64_QUANTS:-fp32,dynamic,static}"
TFLITE="${ARM64_TFLITE:-0}"
if [ "$TFLITE" = 1 ]; then BACKENDS="${ARM64_BACKENDS:-pytorch,onnxruntime,tflite}"
else BACKENDS="${ARM64_BACKENDS:-pytorch,onnxruntime}"; fi
DEVICE="${ARM64_DEVICE:-qemu_neoverse_n1}"
EXPERIMENT="${ARM64_EXPERIMENT:-arm64-emulated}"
QEMU_CPU_MODEL="${ARM64_QEMU_CPU:-neoverse-n1}"
NICE=(nice -n "${ARM64_NICE:-15}")
export MLFLOW_TRACKING_URI="${MLFLOW_TRACKING_URI:-sqlite:///$ROOT/mlflow.db}"
export BSB_CACHE_DIR="${BSB_CACHE_DIR:-$ROOT/.cache/bsb_hydra}"
export TF_CPP_MIN_LOG_LEVEL=2
SUDO=""
[ "$(id -u)" = 0 ] || SUDO=sudo
# pip for another platform: aarch64 manylinux wheels for CPython 3.11, never an sdist build.
PIP_PLATFORM=(--platform manylinux2014_aarch64 --platform manylinux_2_17_aarch64
              --platform manylinux_2_24_aarch64 --platform manylinux_2_26_aarch64 --platform manylinux_2_27_aarch64
              --platform manylinux_2_28_aarch64 --only-binary=:all: --python-version 3.11 --implementation cp)
# The sweep: tiny on purpose (emulation is 70-400x slower than native). Host pre-training and guest
# sweep share data/train settings, so the model cache keys match.
DATA_TRAIN=(data=fashion_mnist data.limit_test=500 train=smoke)
BENCH=("benchmark.batch_sizes=[1]" benchmark.min_runs=5 benchmark.min_duration_s=0.05
       benchmark.warmup_runs=1 benchmark.repeats=1)

log() { printf '\n[arm64 %s] %s\n' "$(date -u +%H:%M:%S)" "$*"; }
die() { printf '[arm64] ERROR: %s\n' "$*" >&2; exit 1; }
pip_quiet() {  # this machine's pip.conf lists file:// indexes that lack most projects: drop that noise
  "$@" 2>&1 | { grep -v 'is ignored: it is neither a file nor a directory' || true; }
}
apt_get() {  # apt-get, with one `apt-get update` retry (stale or absent package lists)
  $SUDO apt-get "$@" || { $SUDO apt-get update -qq && $SUDO apt-get "$@"; }
}

[ "$(uname -m)" = x86_64 ] || die "this script emulates aarch64 on an x86_64 host; this is $(uname -m)"
[ -x "$HOST_PY" ] || die "$HOST_PY not found: run \`make setup\` first (or set HOST_PY)"
[ -f /usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz ] ||
  die "Debian's dataset-fashion-mnist is missing: make data (or apt-get install -y dataset-fashion-mnist)"
mkdir -p "$CACHE" "$DEBS" "$WHEELS" "$CACHE/bin"

# ---------------------------------------------------------------------------------- 1. qemu
if [ ! -x "$QEMU" ]; then
  log "qemu-aarch64-static: extracting it from Debian's qemu-user-static .deb (not installed)"
  rm -f "$DEBS"/qemu-user-static_*.deb
  (cd "$DEBS" && apt_get -o APT::Sandbox::User=root download qemu-user-static)
  deb=$(ls "$DEBS"/qemu-user-static_*.deb | head -1)
  dpkg-deb --fsys-tarfile "$deb" | tar -x -O ./usr/bin/qemu-aarch64-static > "$QEMU.tmp"
  chmod 755 "$QEMU.tmp" && mv "$QEMU.tmp" "$QEMU"
fi
"$QEMU" --version | head -1

# ---------------------------------------------------------------------------------- 2. sysroot
debian_mirror() {
  if [ -n "${ARM64_MIRROR:-}" ]; then echo "$ARM64_MIRROR"; return; fi
  local m
  # one-line `deb URL suite ...` entries and deb822 `URIs:` lines; the main archive, not -security.
  m=$( { cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null |
           awk '$1 == "deb" { for (i = 2; i <= NF; i++) if ($i ~ /^(https?|file):/) { print $i; break } }'
         cat /etc/apt/sources.list.d/*.sources 2>/dev/null | awk '$1 == "URIs:" { for (i = 2; i <= NF; i++) print $i }'
       } | grep -E '/debian/?$' | head -1 || true)
  echo "${m:-http://deb.debian.org/debian}"
}
SYSROOT_STAMP="$SYSROOT/.bsb-arm64-sysroot"
if [ ! -f "$SYSROOT_STAMP" ]; then
  command -v debootstrap >/dev/null || { log "installing debootstrap"; apt_get install -y -qq debootstrap; }
  MIRROR=$(debian_mirror)
  log "sysroot: debootstrap --arch=arm64 --foreign --variant=minbase --include=python3.11 $SUITE ($MIRROR)"
  t0=$(date +%s)
  $SUDO rm -rf "$SYSROOT"
  $SUDO "${NICE[@]}" debootstrap --arch=arm64 --foreign --variant=minbase --include=python3.11 "$SUITE" "$SYSROOT" "$MIRROR" \
    > "$CACHE/debootstrap.log" 2>&1 || { tail -20 "$CACHE/debootstrap.log"; die "debootstrap failed (log: $CACHE/debootstrap.log)"; }
  log "sysroot: unpacking $(ls "$SYSROOT"/var/cache/apt/archives/*.deb | wc -l) .debs with dpkg -x (no emulated second stage)"
  for f in "$SYSROOT"/var/cache/apt/archives/*.deb; do $SUDO "${NICE[@]}" dpkg -x "$f" "$SYSROOT"; done
  # No second stage ran py3compile: compile the guest's stdlib natively (same 3.11 bytecode), or
  # every emulated process would compile what it imports.
  $SUDO "${NICE[@]}" "$HOST_PY" -m compileall -q "$SYSROOT/usr/lib/python3.11" >/dev/null || true
  echo "$SUITE $MIRROR $(date -u +%FT%TZ)" | $SUDO tee "$SYSROOT_STAMP" >/dev/null
  log "sysroot built in $(( $(date +%s) - t0 )) s ($(du -sh "$SYSROOT" | cut -f1))"
fi
[ -x "$SYSROOT/usr/bin/python3.11" ] || die "$SYSROOT/usr/bin/python3.11 missing: rm -rf $SYSROOT and run again"

# ONNX Runtime's cpuinfo library segfaults on the host's x86 /proc/cpuinfo: qemu's -L prefix makes
# the guest read this one instead. One Neoverse-N1 (Graviton2) entry per host CPU.
mkdir -p "$SYSROOT/proc"
{
  for ((i = 0; i < $(nproc); i++)); do
    printf 'processor\t: %d\nBogoMIPS\t: 243.75\n' "$i"
    printf 'Features\t: fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop asimddp ssbs\n'
    printf 'CPU implementer\t: 0x41\nCPU architecture: 8\nCPU variant\t: 0x3\nCPU part\t: 0xd0c\nCPU revision\t: 1\n\n'
  done
} > "$SYSROOT/proc/cpuinfo.tmp" && mv "$SYSROOT/proc/cpuinfo.tmp" "$SYSROOT/proc/cpuinfo"
# oneDNN (inside torch) reads the core's MIDR from sysfs ("Can't open MIDR_EL1 sysfs entry" otherwise):
# Neoverse-N1 r3p1, as in the cpuinfo above. Other /sys paths still fall through to the host's.
for ((i = 0; i < $(nproc); i++)); do
  mkdir -p "$SYSROOT/sys/devices/system/cpu/cpu$i/regs/identification"
  echo 0x00000000413fd0c1 > "$SYSROOT/sys/devices/system/cpu/cpu$i/regs/identification/midr_el1"
done

# ---------------------------------------------------------------------------------- 3. wheels
# install_site PINFILE SITE_DIR: download the pinned aarch64 wheels (--no-deps: the pin file is the
# whole set) into $WHEELS and install them into SITE_DIR; redone only when the pin file changes.
install_site() {
  local pins=$1 site=$2 stamp t0 antlr
  stamp="$site/.installed-$(grep -E '^[A-Za-z0-9]' "$pins" | sha1sum | cut -c1-12)"  # the pins, not the comments
  [ -f "$stamp" ] && return 0
  t0=$(date +%s)
  grep -E '^[A-Za-z0-9]' "$pins" | grep -v '^antlr4-python3-runtime' > "$CACHE/pins-binary.txt"
  log "wheels: pip download (aarch64, cp311, --no-deps) of $(wc -l < "$CACHE/pins-binary.txt") pins of ${pins#$ROOT/}"
  pip_quiet "$HOST_PY" -m pip download -q --no-deps "${PIP_PLATFORM[@]}" -d "$WHEELS" -r "$CACHE/pins-binary.txt"
  # hydra-core's parser runtime is an sdist on PyPI: build its pure-Python wheel on the host.
  antlr=$(grep '^antlr4-python3-runtime==' "$pins" || true)
  if [ -n "$antlr" ] && ! ls "$WHEELS"/antlr4_python3_runtime-"${antlr#*==}"-py3-none-any.whl >/dev/null 2>&1; then
    pip_quiet "$HOST_PY" -m pip wheel -q --no-deps -w "$WHEELS" "$antlr"
  fi
  log "wheels: pip install --no-index --no-deps --target ${site#$ROOT/}"
  rm -rf "$site"
  pip_quiet "${NICE[@]}" "$HOST_PY" -m pip install -q --no-index --no-deps --find-links "$WHEELS" --target "$site" \
    "${PIP_PLATFORM[@]}" -r "$pins"
  touch "$stamp"
  log "${site#$ROOT/} built in $(( $(date +%s) - t0 )) s ($(du -sh "$site" | cut -f1))"
}
install_site "$PINS" "$SITE"
GUEST_PATH="$SITE"
if [ "$TFLITE" = 1 ]; then  # the stretch goal: TensorFlow's converter and LiteRT in the guest (+1.7 GB)
  install_site "$ROOT/requirements/aarch64-emulated-tflite.txt" "$SITE_TFLITE"
  GUEST_PATH="$SITE:$SITE_TFLITE"
fi
T_SETUP=$(( $(date +%s) - T_START ))
log "setup done in ${T_SETUP} s (sysroot $(du -sh "$SYSROOT" | cut -f1), site-packages $(du -shc ${GUEST_PATH//:/ } | tail -1 | cut -f1))"
if [ "${ARM64_SETUP_ONLY:-0}" = 1 ]; then exit 0; fi

# ---------------------------------------------------------------------------------- 4. guest env
GUEST_PY="$SYSROOT/usr/bin/python3.11"
HOST_TORCH=$("$HOST_PY" -c "from importlib.metadata import version; print(version('torch').split('+')[0])")
GUEST_TORCH=$(grep -E '^torch==' "$PINS" | cut -d= -f3)
# Only guest commands get these: a QEMU_* variable in the host's environment would stamp the host's
# runs emulated=true. PYTHONNOUSERSITE: the guest's HOME is the sysroot's /root, but be sure.
# BSB_FP32_TORCH_VERSION: the guest's torch differs from the host's, which trains the fp32 weights;
# the model cache key names the trainer's version, and the guest refuses to train (bsb_hydra/train.py).
GUEST_ENV=(env QEMU_LD_PREFIX="$SYSROOT" QEMU_CPU="$QEMU_CPU_MODEL" PYTHONPATH="$GUEST_PATH:$ROOT" PYTHONNOUSERSITE=1
           BSB_FP32_TORCH_VERSION="$HOST_TORCH")
guest() { "${GUEST_ENV[@]}" "${NICE[@]}" "$QEMU" "$GUEST_PY" "$@"; }

# ---------------------------------------------------------------------------------- 5. binfmt_misc
BINFMT=/proc/sys/fs/binfmt_misc
BINFMT_NAME=bsb-qemu-aarch64
BINFMT_MOUNT_MARK="$CACHE/binfmt-mounted-by-script"  # survives a killed run: the next run unmounts
MOUNTED=0
REGISTERED=0
cleanup() {
  local rc=$?
  if [ "$REGISTERED" = 1 ] && [ -e "$BINFMT/$BINFMT_NAME" ]; then
    echo -1 | $SUDO tee "$BINFMT/$BINFMT_NAME" >/dev/null && echo "[arm64] binfmt_misc: $BINFMT_NAME unregistered"
  fi
  if [ "$MOUNTED" = 1 ]; then
    if [ -z "$(ls "$BINFMT" 2>/dev/null | grep -v -x -e register -e status)" ]; then
      $SUDO umount "$BINFMT" && rm -f "$BINFMT_MOUNT_MARK" && echo "[arm64] binfmt_misc: unmounted"
    else
      echo "[arm64] binfmt_misc: left mounted (other handlers are registered: $(ls "$BINFMT" | tr '\n' ' '))"
    fi
  fi
  exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
if [ ! -e "$BINFMT/register" ]; then
  $SUDO mount -t binfmt_misc binfmt_misc "$BINFMT" || die "cannot mount binfmt_misc (needs root)"
  MOUNTED=1
  touch "$BINFMT_MOUNT_MARK"
  echo "[arm64] binfmt_misc: mounted at $BINFMT"
elif [ -f "$BINFMT_MOUNT_MARK" ]; then
  MOUNTED=1  # an earlier run of this script mounted it and was killed before unmounting
fi
if [ -e "$BINFMT/$BINFMT_NAME" ]; then  # left by a killed run
  echo -1 | $SUDO tee "$BINFMT/$BINFMT_NAME" >/dev/null
fi
# The aarch64 ELF magic and mask of Debian's /usr/lib/binfmt.d/qemu-aarch64.conf; F: the kernel opens
# the interpreter now, so it works from any mount namespace or chroot.
MAGIC='\x7fELF\x02\x01\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00\x02\x00\xb7\x00'
MASK='\xff\xff\xff\xff\xff\xff\xff\x00\xff\xff\xff\xff\xff\xff\xff\xff\xfe\xff\xff\xff'
REGISTERED=1
printf ':%s:M::%s:%s:%s:F' "$BINFMT_NAME" "$MAGIC" "$MASK" "$QEMU" | $SUDO tee "$BINFMT/register" >/dev/null ||
  { REGISTERED=0; die "cannot register qemu-aarch64 with binfmt_misc"; }
echo "[arm64] binfmt_misc: $BINFMT_NAME registered ($(grep -h '^flags' "$BINFMT/$BINFMT_NAME"))"

# ---------------------------------------------------------------------------------- 6. checks
log "guest check: python, arch, emulation stamp, imports, data path, a subprocess via binfmt_misc"
t0=$(date +%s)
guest - <<'EOF'
import os, platform, subprocess, sys
from pathlib import Path
from bsb_hydra.sysinfo import system_info
info = system_info()
print(f"  python {platform.python_version()} {platform.machine()} executable={sys.executable}")
print(f"  arch={info['arch']} emulated={info['emulated']} cpu={info['cpu']} isa={info['isa']}")
assert info["arch"] == "aarch64" and info["emulated"] == "true", info
fm = Path("/usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz")  # the host's, through qemu's -L fallback
print(f"  {fm}: {fm.stat().st_size} bytes")
out = subprocess.run([sys.executable, "-c", "import platform; print(platform.machine())"], capture_output=True,
                     text=True, check=True).stdout.strip()
print(f"  subprocess sys.executable -> {out}")
assert out == "aarch64"
import numpy, onnx, onnxruntime, torch, hydra, mlflow, sqlalchemy, alembic  # noqa: E401
torch.backends.quantized.engine = "qnnpack"
print(f"  torch {torch.__version__} engines {torch.backends.quantized.supported_engines}, onnxruntime "
      f"{onnxruntime.__version__} {onnxruntime.get_available_providers()}, numpy {numpy.__version__}, "
      f"mlflow {mlflow.__version__}, hydra {hydra.__version__}")
from importlib.util import find_spec
print("  tflite backend packages: " + ", ".join(f"{m} {'yes' if find_spec(m) else 'no'}"
                                             for m in ("tensorflow", "tf_keras", "ai_edge_litert")))
EOF
T_CHECK=$(( $(date +%s) - t0 ))
log "guest check done in ${T_CHECK} s"
if [ "${ARM64_CHECK_ONLY:-0}" = 1 ]; then exit 0; fi

# ---------------------------------------------------------------------------------- 7. training
# Natively on x86_64: one fp32 pytorch cell per model trains (or finds) the weights in BSB_CACHE_DIR,
# logged to its own experiment. The user's overrides come first, then what a pre-training must be.
STAMP=$(date -u +%Y-%m-%d_%H-%M-%S)
log "training natively (host torch $HOST_TORCH): model=$MODELS into $BSB_CACHE_DIR"
t0=$(date +%s)
PYTHONPATH="$ROOT" "${NICE[@]}" "$HOST_PY" -m bsb_hydra -m "model=$MODELS" "${DATA_TRAIN[@]}" "${BENCH[@]}" "$@" \
  quant=fp32 backend=pytorch device=local force=true "mlflow.experiment=$EXPERIMENT-host-pretrain" \
  "hydra.sweep.dir=multirun_outputs/arm64-pretrain-$STAMP"
T_TRAIN=$(( $(date +%s) - t0 ))
statuses=$(cat multirun_outputs/arm64-pretrain-"$STAMP"/*/result.json 2>/dev/null | grep -o '"status": "[a-z]*"' || true)
if [ -z "$statuses" ] || grep -qv '"ok"' <<< "$statuses"; then
  die "the native pre-training cells did not all end ok: see multirun_outputs/arm64-pretrain-$STAMP"
fi

# ---------------------------------------------------------------------------------- 8. sweep
SWEEP_DIR="multirun_outputs/arm64-emulated-$STAMP"
log "emulated sweep (aarch64, QEMU_CPU=$QEMU_CPU_MODEL, guest torch $GUEST_TORCH): model=$MODELS quant=$QUANTS backend=$BACKENDS -> $SWEEP_DIR"
t0=$(date +%s)
set +e
guest -m bsb_hydra -m "model=$MODELS" "quant=$QUANTS" "backend=$BACKENDS" "device=$DEVICE" "${DATA_TRAIN[@]}" \
  "${BENCH[@]}" "mlflow.experiment=$EXPERIMENT" "hydra.sweep.dir=$SWEEP_DIR" "$@" \
  < /dev/null 2>&1 | sed -u 's/^/  | /'
SWEEP_RC=${PIPESTATUS[0]}
set -e
T_SWEEP=$(( $(date +%s) - t0 ))
# ---------------------------------------------------------------------------------- 9. report
log "cells of $SWEEP_DIR (guest exit code $SWEEP_RC)"
"$HOST_PY" - "$SWEEP_DIR" <<'EOF'
import json, sys
from pathlib import Path
rows = [json.loads(p.read_text()) for p in Path(sys.argv[1]).glob("*/result.json")]
rows.sort(key=lambda r: int(r.get("job_num") or 0))
print(f"{'#':>3}  {'cell':<40} {'status':<12} {'seconds':>8}  reason")
for r in rows:
    reason = (r.get("reason") or "").splitlines()[0][:110] if r.get("reason") else ""
    print(f"{r.get('job_num', ''):>3}  {r['cell']:<40} {r['status']:<12} {r.get('seconds', 0):>8.1f}  {reason}")
counts = {}
for r in rows:
    counts[r["status"]] = counts.get(r["status"], 0) + 1
print("cells: " + (", ".join(f"{v} {k}" for k, v in sorted(counts.items())) or "none"))
EOF
T_ALL=$(( $(date +%s) - T_START ))
printf '\nwall time: setup %d s, guest check %d s, native training %d s, emulated sweep %d s, total %d s\n' \
  "$T_SETUP" "$T_CHECK" "$T_TRAIN" "$T_SWEEP" "$T_ALL"
printf 'MLflow: %s, experiment %s (host pre-training: %s-host-pretrain)\n' "$MLFLOW_TRACKING_URI" "$EXPERIMENT" "$EXPERIMENT"
exit "$SWEEP_RC"
