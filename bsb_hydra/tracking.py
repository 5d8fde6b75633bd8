"""MLflow: one run per cell. The store is sqlite at the project root by default; artifacts of a new
experiment go to a fixed folder beside it (MLflow would otherwise use ./mlruns of whatever the
current directory is)."""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Dict

from omegaconf import OmegaConf


def flatten(d: Dict[str, Any], prefix: str = "") -> Dict[str, str]:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict):
            out.update(flatten(v, key + "."))
        else:
            out[key] = param_text(v)
    return out


def param_text(v: Any) -> str:
    """A config value as it is logged as an MLflow param."""
    return json.dumps(v) if isinstance(v, (list, tuple)) else str(v)


class StoreUnreachable(ConnectionError):
    """A tracking server that does not answer: said at once, instead of after MLflow's retries."""


def check_server(uri: str, timeout_s: float = 10.0) -> None:
    """For an http(s) store: one request to the server's /health, no retries. A server that answers
    at all (even 401 behind a proxy) passes; one that refuses or times out raises StoreUnreachable
    naming the URI (its password masked). MLflow's client would retry for minutes per cell
    (MLFLOW_HTTP_REQUEST_MAX_RETRIES) before saying the same."""
    if not uri.startswith(("http://", "https://")):
        return
    import requests

    try:
        requests.get(uri.rstrip("/") + "/health", timeout=timeout_s)
    except requests.RequestException as e:
        raise StoreUnreachable(f"the MLflow tracking server {mask_text(uri)} does not answer "
                               f"({type(e).__name__}): start it, or fix the URI") from None


def setup(cfg) -> str:
    """Point MLflow at the store and experiment; returns the experiment id."""
    import mlflow

    uri = cfg.mlflow.tracking_uri
    check_server(uri)
    mlflow.set_tracking_uri(uri)
    if uri.startswith("sqlite:///"):
        # Jobs started together (joblib, two sweeps) would each create a fresh store's tables and
        # race MLflow's migrations into a broken schema. The store is built (tables created or
        # checked) when the first client of the process is: the first job does it, the rest wait.
        from bsb_hydra.locks import file_lock

        with file_lock(Path(uri[len("sqlite:///"):] + ".lock")):
            client = mlflow.MlflowClient()
            exp = client.get_experiment_by_name(cfg.mlflow.experiment)
    else:
        client = mlflow.MlflowClient()
        exp = client.get_experiment_by_name(cfg.mlflow.experiment)
    if exp is not None:
        return exp.experiment_id
    location = None
    if not cfg.mlflow.tracking_uri.startswith(("http://", "https://", "databricks")):
        root = Path(cfg.mlflow.artifact_root).expanduser().resolve() / cfg.mlflow.experiment
        root.mkdir(parents=True, exist_ok=True)
        location = root.as_uri()
    try:
        return client.create_experiment(cfg.mlflow.experiment, artifact_location=location)
    except Exception:  # another job created it first
        exp = client.get_experiment_by_name(cfg.mlflow.experiment)
        if exp is None:
            raise
        return exp.experiment_id


def resolved_params(dict_cfg) -> Dict[str, str]:
    return flatten(resolved_config(dict_cfg))


def resolved_config(dict_cfg) -> Dict[str, Any]:
    """The resolved config as plain data, with secrets masked: what goes to MLflow."""
    container = OmegaConf.to_container(dict_cfg, resolve=True, enum_to_str=True)
    container.pop("hydra", None)
    return mask_secrets(drop_inert(container))


# Keys added to the schema after runs had been stored, with the value at which they change nothing:
# a run holding one at that value measured what an older run without the key measured.
LATER_INERT = {"device.core_pinning": None, "device.expected_isa": [], "data.resize": None, "data.channels": None,
               "data.mean": None, "data.std": None, "data.tokenizer_path": None, "backend.converter": "auto",
               "train.bn_recalibration": 0, "benchmark.profile": "slow", "benchmark.profile_runs": 20,
               # pytorch artifacts before 2026-12-04 were NCHW TorchScript
               "backend.export": "torchscript", "backend.channels_last": False,
               "backend.xnnpack_latest_features": False,
               # ORT dynamic transformers before 2026-12-04 were quantized unfused, and PyTorch static
               # kept torch.ao's unclipped ranges before ReLU6
               "backend.transformer_optimizer": False, "backend.fold_relu6": False,
               # added with the tasks (2026-12-06): data=random's vocab_size, model=onnx's tokenizer,
               # model=torch's inputs
               "data.vocab_size": None, "model.tokenizer": None, "model.inputs": None,
               # model=hf fed token ids alone before 2026-12-06 (its default is now the tokenizer's inputs)
               "model.feed": "ids"}


def _family(c: Dict[str, Any]) -> str:
    from bsb_hydra.config.store import model_schema

    schema = model_schema((c.get("model") or {}).get("name"))
    return getattr(schema, "family", "") if schema is not None else ""


def drop_inert(c: Dict[str, Any]) -> Dict[str, Any]:
    """Leave out keys that do nothing in this cell and were added to a schema after runs had been
    stored: quant.analyze / quant.eval_samples on a static cell with analyze off, quant.analyze on
    an auto cell (auto always analyzes), backend.transformer_optimizer outside a transformer's
    dynamic cell, backend.fold_relu6 outside an FX static or auto cell, the task group at task=auto,
    and LATER_INERT's keys at their inert values. Params,
    config.json and config_hash then agree between older and newer runs of the same configuration
    (resume finds them; the report groups them together)."""
    q = c.get("quant") or {}
    if q.get("scheme") == "static" and not q.get("analyze"):
        q.pop("analyze", None)
        q.pop("eval_samples", None)
    elif q.get("scheme") == "auto":
        q.pop("analyze", None)
    b = c.get("backend") or {}
    if "transformer_optimizer" in b and not (q.get("scheme") == "dynamic" and _family(c) == "transformer"):
        b.pop("transformer_optimizer")  # it changes only a transformer's ORT dynamic build
    if "fold_relu6" in b and not (q.get("scheme") in ("static", "auto") and _family(c) not in ("transformer",
                                                                                               "recurrent")):
        b.pop("fold_relu6")  # it changes only PyTorch's FX static builds
    t = c.get("task")
    if isinstance(t, dict) and t.get("name") == "auto" and t.get("output") is None:
        del c["task"]  # added later; auto reads a built-in classifier as every earlier run did
    for dotted, inert in LATER_INERT.items():
        section, key = dotted.split(".")
        d = c.get(section)
        if isinstance(d, dict) and key in d and d[key] == inert:
            del d[key]
    return c


def drop_inert_params(params: Dict[str, str]) -> Dict[str, str]:
    """drop_inert for params as logged: runs logged between a key's addition and its entry in
    LATER_INERT carry it at its inert value; without it they read as the same config as the rest."""
    return {k: v for k, v in params.items() if not (k in LATER_INERT and v == param_text(LATER_INERT[k]))}


# --- no credentials in params, tags, artifacts or logs ----------------------------------------------

_SECRET_WORDS = r"(pass|password|passwd|secret|token|api[_-]?key|apikey|credentials?|access[_-]?key|auth)"
SECRET_KEY = re.compile(r"(^|[_.-])" + _SECRET_WORDS + r"($|[_.-])", re.I)  # not "tokenizer", "max_tokens"
_URL_USERINFO = re.compile(r"(?P<scheme>[a-z][a-z0-9+.-]*://)(?P<user>[^:/@\s]*):(?P<pw>[^@/\s]+)@", re.I)
_URL_QUERY_SECRET = re.compile(r"(?P<k>[?&](?:[^=&\s]*[_.-])?" + _SECRET_WORDS + r"=)(?P<v>[^&\s]+)", re.I)
MASK = "***"


def mask_text(text: str) -> str:
    """A URL's password (``scheme://user:PASSWORD@host``) and secret-looking query values, masked."""
    text = _URL_USERINFO.sub(lambda m: f"{m['scheme']}{m['user']}:{MASK}@", text)
    return _URL_QUERY_SECRET.sub(lambda m: f"{m['k']}{MASK}", text)


def mask_secrets(obj: Any, key: str = "") -> Any:
    """Mask the values of secret-looking keys (password, token, api_key, ...) and any credentials
    inside URL strings, recursively."""
    if isinstance(obj, dict):
        return {k: mask_secrets(v, str(k)) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [mask_secrets(v, key) for v in obj]
    if key and SECRET_KEY.search(key) and obj not in (None, "", False):
        return MASK
    return mask_text(obj) if isinstance(obj, str) else obj


# --- resume: finished cells are skipped; runs of processes that died are closed ---------------------

def _quote(v: str) -> str:
    return "'" + str(v).replace("'", "\\'") + "'"


def process_identity() -> Dict[str, str]:
    """Who holds a run open: host, pid and the pid's start time (so a reused pid is not mistaken
    for the process that opened the run)."""
    import os
    import socket

    return {"host": socket.gethostname(), "pid": str(os.getpid()), "pid_start": _pid_start(os.getpid())}


def _pid_start(pid: int) -> str:
    try:  # field 22 of /proc/PID/stat, after the parenthesised command name
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return ""


def _alive(pid: str, start: str) -> bool:
    try:
        now = _pid_start(int(pid))
    except ValueError:
        return False
    return bool(now) and (not start or now == start)


def close_dead_runs(client, experiment_id: str, me: Dict[str, str]) -> list:
    """Mark KILLED every run of the experiment left RUNNING by a process of this host that no longer
    exists (a sweep killed with SIGKILL, a reboot). Runs opened on other hosts are left alone: this
    host cannot tell whether they are still being written. Returns the run ids closed."""
    closed = []
    for run in search_all(client, experiment_id, "attributes.status = 'RUNNING'"):
        t = run.data.tags
        if t.get("host") != me["host"] or not t.get("pid") or _alive(t["pid"], t.get("pid_start", "")):
            continue
        reason = (f"killed: process {t['pid']} on {t['host']} ended while this run was open (SIGKILL, crash "
                  f"or reboot); closed by process {me['pid']}")
        client.set_tag(run.info.run_id, "status", "killed")
        client.set_tag(run.info.run_id, "reason", reason)
        client.set_terminated(run.info.run_id, status="KILLED")
        closed.append(run.info.run_id)
    return closed


def finished_run(client, experiment_id: str, chash: str, info: Dict[str, str]):
    """The newest run of this config on this kind of machine (arch, cpu, emulation) with status ok,
    or None. The same config on another machine is another measurement, never a duplicate."""
    f = (f"tags.config_hash = {_quote(chash)} and tags.status = 'ok' and attributes.status = 'FINISHED' "
         f"and tags.arch = {_quote(info['arch'])} and tags.cpu = {_quote(info['cpu'])} "
         f"and tags.emulated = {_quote(info['emulated'])}")
    runs = client.search_runs([experiment_id], filter_string=f, max_results=1, order_by=["attributes.start_time DESC"])
    return runs[0] if runs else None


def search_all(client, experiment_id: str, filter_string: str = "") -> list:
    """Every run of the experiment matching the filter, newest first (MLflow's search, paged)."""
    out, token = [], None
    while True:
        page = client.search_runs([experiment_id], filter_string=filter_string, max_results=1000,
                                  order_by=["attributes.start_time DESC"], page_token=token)
        out.extend(page)
        token = page.token
        if not token:
            return out
