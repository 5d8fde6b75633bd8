#!/usr/bin/env bash
# Run a sweep on another machine over SSH (an AWS Graviton or Ampere instance, a lab box) and get
# every run into this machine's MLflow store.
#
#   scripts/remote_sweep.sh [user@]HOST [hydra overrides...]
#   scripts/remote_sweep.sh ubuntu@c7g-host -m experiment=default_grid device=graviton3
#
# 1. Copies the project's tracked files (git ls-files: no .venv, caches or stores) to REMOTE_DIR.
# 2. Sets it up there (`make setup`: venv, pinned packages, data), unless REMOTE_SETUP=skip.
# 3. Runs `python -m bsb_hydra OVERRIDES` there.
#    - MLFLOW_TRACKING_URI=http(s)://... (a shared server the remote host can reach): the remote
#      logs straight into it; nothing to bring back. MLFLOW_TRACKING_USERNAME, _PASSWORD and
#      _TOKEN, when set here, go with it.
#    - otherwise the remote logs into its own sqlite store; this script brings the store and its
#      artifact folder back (.cache/remote/HOST-TIME/) and merges them into the local store
#      (MLFLOW_TRACKING_URI, default sqlite:///mlflow.db here) with `python -m bsb_hydra.merge`:
#      a run already merged is skipped, so running the script again loses and duplicates nothing.
#
# Environment: SSH_OPTS (e.g. "-p 2222 -i ~/.ssh/key"), REMOTE_DIR (default bsb-hydra, relative to
# the remote home), REMOTE_SETUP (setup | skip), REMOTE_PYTHON (default REMOTE_DIR/.venv/bin/python),
# REMOTE_ENV (extra VAR=value words for the remote sweep, e.g. "BSB_CACHE_DIR=/data/cache"; quote a
# value as in a shell, "A='x y'", nothing in it is expanded), BACK_DIR (where the remote store is
# brought back; default .cache/remote).
#
# The overrides reach the remote sweep as typed, and the environment (the tracking URI, credentials,
# REMOTE_ENV) goes over ssh's stdin, never on a command line: any user of the remote host can read
# command lines (ps), only the owner and root a process's environment. The remote host needs bash,
# and a POSIX login shell (sh, dash, bash, zsh, ksh) for the user.
set -euo pipefail

if [ $# -lt 1 ]; then
  sed -n '2,28p' "$0" >&2
  exit 2
fi
HOST=$1; shift
# ssh takes an argument starting with "-" for an option, even in the host's place: a "host" of
# -oProxyCommand=... would run that command on this machine. The "--" in rsh already stops that;
# refusing the host says why instead of failing on a strange ssh error.
case "$HOST" in
  ""|-*) echo "[remote] host '$HOST' is empty or starts with '-' (ssh would read it as an option)" >&2; exit 2;;
esac
ROOT=$(cd "$(dirname "$0")/.." && pwd)
SSH_OPTS=${SSH_OPTS:-}
REMOTE_DIR=${REMOTE_DIR:-bsb-hydra}
REMOTE_SETUP=${REMOTE_SETUP:-setup}
REMOTE_PYTHON=${REMOTE_PYTHON:-.venv/bin/python}
REMOTE_ENV=${REMOTE_ENV:-}
LOCAL_PY=${LOCAL_PY:-$ROOT/.venv/bin/python}
URI=${MLFLOW_TRACKING_URI:-sqlite:///$ROOT/mlflow.db}
case "$REMOTE_SETUP" in setup|skip) ;; *) echo "REMOTE_SETUP=$REMOTE_SETUP: use setup or skip" >&2; exit 2;; esac

# REMOTE_ENV is split into words as a shell splits a command line (quotes group, a backslash
# escapes) by Python's shlex, which expands nothing: "$(...)" and backquotes stay text. Each word
# must be VAR=value: the remote exports it as it is.
remote_env=()
if [ -n "$REMOTE_ENV" ]; then
  mapfile -d '' remote_env < <(printf '%s' "$REMOTE_ENV" | "$LOCAL_PY" -c \
    'import shlex, sys; sys.stdout.write("".join(w + "\0" for w in shlex.split(sys.stdin.read())))')
  wait $! || { echo "[remote] REMOTE_ENV cannot be split into words (an unclosed quote?)" >&2; exit 2; }
  for kv in "${remote_env[@]}"; do
    [[ $kv =~ ^[A-Za-z_][A-Za-z0-9_]*= ]] || { echo "[remote] REMOTE_ENV: '${kv%%=*}' is not VAR=value" >&2; exit 2; }
  done
fi

# shellcheck disable=SC2086
rsh() { ssh $SSH_OPTS -o BatchMode=yes -- "$HOST" "$@"; }
# Quotes each argument for the remote login shell in POSIX single quotes, which every such shell
# (sh, dash, bash, zsh) reads byte for byte. bash's printf %q writes a newline as $'\n', which dash
# reads as a dollar sign and a quoted "\n".
sq() {
  local a out=
  for a in "$@"; do out+="'${a//\'/\'\\\'\'}' "; done
  printf '%s' "${out% }"
}

echo "[remote] $HOST: checking the connection"
rsh true || { echo "[remote] cannot reach $HOST over ssh (SSH_OPTS='$SSH_OPTS')" >&2; exit 1; }

echo "[remote] copying the project to $HOST:$REMOTE_DIR"
rsh "mkdir -p -- $(sq "$REMOTE_DIR")"
(cd "$ROOT" && git ls-files -z | tar --null -T - -czf -) | rsh "tar -xzf - -C $(sq "$REMOTE_DIR")"

if [ "$REMOTE_SETUP" = setup ]; then
  echo "[remote] make setup on $HOST (first time: about 10 minutes)"
  rsh "cd -- $(sq "$REMOTE_DIR") && make setup"
fi

shared=no
case "$URI" in http://*|https://*) shared=yes;; esac
# Without a shared server the remote sweep logs into its own default store, REMOTE_DIR/mlflow.db.
sweep_env=(TF_CPP_MIN_LOG_LEVEL=2)
if [ $shared = yes ]; then
  sweep_env+=("MLFLOW_TRACKING_URI=$URI")
  for var in MLFLOW_TRACKING_USERNAME MLFLOW_TRACKING_PASSWORD MLFLOW_TRACKING_TOKEN; do
    if [ -n "${!var:-}" ]; then sweep_env+=("$var=${!var}"); fi
  done
fi
sweep_env+=("${remote_env[@]}")
# Runs under bash on the remote host: the NUL-terminated VAR=value records on stdin go into the
# environment, then the sweep runs with the rest of the arguments (stdin /dev/null: the records
# were all of it).
# shellcheck disable=SC2016
remote_prog='while IFS= read -r -d "" kv; do export "$kv"; done; cd -- "$1" && shift && exec "$@" </dev/null'
stamp=$(date -u +%Y%m%d-%H%M%S)
echo "[remote] sweep on $HOST: $*"
printf '%s\0' "${sweep_env[@]}" | rsh "bash -c $(sq "$remote_prog") remote_sweep $(sq "$REMOTE_DIR" \
  "$REMOTE_PYTHON" -m bsb_hydra "$@" "hydra.sweep.dir=multirun_outputs/remote-$stamp")"

if [ $shared = yes ]; then
  echo "[remote] the runs went to the shared server $(echo "$URI" | sed -E 's#://[^/@]*@#://***@#')"
  exit 0
fi
back="${BACK_DIR:-$ROOT/.cache/remote}/${HOST##*@}-$stamp"
mkdir -p "$back"
echo "[remote] bringing the store and artifacts back to $back"
rsh "cd -- $(sq "$REMOTE_DIR") && tar -czf - mlflow.db mlartifacts" | tar -xzf - -C "$back"
# merge reads its target from MLFLOW_TRACKING_URI: a URI with a password stays off the command line.
MLFLOW_TRACKING_URI=$URI "$LOCAL_PY" -m bsb_hydra.merge "$back/mlflow.db" --artifacts "$back/mlartifacts" \
  --artifact-root "$ROOT/mlartifacts"
