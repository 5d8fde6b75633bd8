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
#      logs straight into it; nothing to bring back.
#    - otherwise the remote logs into its own sqlite store; this script brings the store and its
#      artifact folder back (.cache/remote/HOST-TIME/) and merges them into the local store
#      (MLFLOW_TRACKING_URI, default sqlite:///mlflow.db here) with `python -m bsb_hydra.merge`:
#      a run already merged is skipped, so running the script again loses and duplicates nothing.
#
# Environment: SSH_OPTS (e.g. "-p 2222 -i ~/.ssh/key"), REMOTE_DIR (default bsb-hydra, relative to
# the remote home), REMOTE_SETUP (setup | skip), REMOTE_PYTHON (default REMOTE_DIR/.venv/bin/python),
# REMOTE_ENV (extra VAR=value words for the remote sweep, e.g. "BSB_CACHE_DIR=/data/cache"),
# BACK_DIR (where the remote store is brought back; default .cache/remote).
set -euo pipefail

if [ $# -lt 1 ]; then
  sed -n '2,20p' "$0" >&2
  exit 2
fi
HOST=$1; shift
ROOT=$(cd "$(dirname "$0")/.." && pwd)
SSH_OPTS=${SSH_OPTS:-}
REMOTE_DIR=${REMOTE_DIR:-bsb-hydra}
REMOTE_SETUP=${REMOTE_SETUP:-setup}
REMOTE_PYTHON=${REMOTE_PYTHON:-.venv/bin/python}
REMOTE_ENV=${REMOTE_ENV:-}
LOCAL_PY=${LOCAL_PY:-$ROOT/.venv/bin/python}
URI=${MLFLOW_TRACKING_URI:-sqlite:///$ROOT/mlflow.db}
case "$REMOTE_SETUP" in setup|skip) ;; *) echo "REMOTE_SETUP=$REMOTE_SETUP: use setup or skip" >&2; exit 2;; esac

# shellcheck disable=SC2086
rsh() { ssh $SSH_OPTS -o BatchMode=yes "$HOST" "$@"; }
q() { printf '%q ' "$@"; }

echo "[remote] $HOST: checking the connection"
rsh true || { echo "[remote] cannot reach $HOST over ssh (SSH_OPTS='$SSH_OPTS')" >&2; exit 1; }

echo "[remote] copying the project to $HOST:$REMOTE_DIR"
rsh "mkdir -p $(q "$REMOTE_DIR")"
(cd "$ROOT" && git ls-files -z | tar --null -T - -czf -) | rsh "tar -xzf - -C $(q "$REMOTE_DIR")"

if [ "$REMOTE_SETUP" = setup ]; then
  echo "[remote] make setup on $HOST (first time: about 10 minutes)"
  rsh "cd $(q "$REMOTE_DIR") && make setup"
fi

shared=no
case "$URI" in http://*|https://*) shared=yes;; esac
if [ $shared = yes ]; then
  remote_uri=$URI
else
  remote_uri=""  # the remote's own default store: REMOTE_DIR/mlflow.db
fi
stamp=$(date -u +%Y%m%d-%H%M%S)
echo "[remote] sweep on $HOST: $*"
rsh "cd $(q "$REMOTE_DIR") && env ${remote_uri:+MLFLOW_TRACKING_URI=$(q "$remote_uri")} $REMOTE_ENV \
  TF_CPP_MIN_LOG_LEVEL=2 $(q "$REMOTE_PYTHON") -m bsb_hydra $(q "$@") hydra.sweep.dir=multirun_outputs/remote-$stamp"

if [ $shared = yes ]; then
  echo "[remote] the runs went to the shared server $(echo "$URI" | sed -E 's#://[^/@]*@#://***@#')"
  exit 0
fi
back="${BACK_DIR:-$ROOT/.cache/remote}/${HOST##*@}-$stamp"
mkdir -p "$back"
echo "[remote] bringing the store and artifacts back to $back"
rsh "cd $(q "$REMOTE_DIR") && tar -czf - mlflow.db mlartifacts" | tar -xzf - -C "$back"
"$LOCAL_PY" -m bsb_hydra.merge "$back/mlflow.db" --artifacts "$back/mlartifacts" --into "$URI" \
  --artifact-root "$ROOT/mlartifacts"
