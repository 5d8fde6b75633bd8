"""MLflow: one run per cell. The store is sqlite at the project root by default; artifacts of a new
experiment go to a fixed folder beside it (MLflow would otherwise use ./mlruns of whatever the
current directory is)."""
from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Dict

from omegaconf import OmegaConf

from bsb_hydra.local_state import _pid_start, alive as _alive, pid_namespace


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


# The headline of a cell, first in the runs table of MLflow's UI: what it is (model, scheme, backend,
# status), its size ratio, its quality delta (accuracy in pp for a classifier, the task's own metric
# otherwise), p50 at batch 1 and its speedup against the best fp32 cell of its machine.
HEADLINE_TAGS = ("model", "quant", "backend", "status")
HEADLINE_METRICS = ("size_ratio", "accuracy_delta_pp", "quality_delta", "latency_p50_ms_b1", "speedup_vs_best_fp32_b1")
HEADLINE_VIEW = "headline"  # the view's key: #/experiments/<id>/runs?viewStateShareKey=headline


def headline_view() -> str:
    """The runs-table view MLflow 3's UI reads from the experiment tag mlflow.sharedViewState.<key>
    (what its own "Save view" writes; listed in its Views menu): the headline columns first, in this
    order, then the run's dataset, duration, source and models. The UI shows no metric column by
    default; every other metric stays one click away in its Columns menu."""
    import json

    def q(kind: str, key: str) -> str:
        return f"{kind}.`{key}`"

    heads = [q("tags", k) for k in HEADLINE_TAGS] + [q("metrics", k) for k in HEADLINE_METRICS]
    fixed = [q("attributes", "Dataset"), "duration", q("attributes", "Source"), q("attributes", "Models")]
    state = {"selectedColumns": heads + [c for c in fixed if c != "duration"],
             "columnOrder": [q("attributes", "Run Name"), "runDateAndNestInfo", *heads, *fixed]}
    return json.dumps({"name": "Headline metrics", "createdAt": 0, "updatedAt": 0, "state": json.dumps(state)})


# MLflow 3's UI opens an experiment by its kind: without it, on the GenAI overview (traces, token usage);
# as model development, on its runs. Set when the tool creates an experiment, and added to one made
# before (an experiment whose kind someone set is left as it is), with the headline view.
EXPERIMENT_TAGS = {"mlflow.experimentKind": "custom_model_development",
                   f"mlflow.sharedViewState.{HEADLINE_VIEW}": headline_view()}


def ui_url(base: str, experiment_id: str) -> str:
    """The experiment's runs in MLflow's UI at ``base``, in the headline view."""
    return f"{base.rstrip('/')}/#/experiments/{experiment_id}/runs?viewStateShareKey={HEADLINE_VIEW}&workflowType=machine_learning"


def tag_experiment(client, exp) -> None:
    """EXPERIMENT_TAGS on ``exp`` (an Experiment), those it lacks."""
    for k, v in EXPERIMENT_TAGS.items():
        if k not in (exp.tags or {}):
            client.set_experiment_tag(exp.experiment_id, k, v)


def setup(cfg) -> str:
    """Point MLflow at the store and experiment (created, or tagged, as model development: see
    EXPERIMENT_TAGS); returns the experiment id."""
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
        tag_experiment(client, exp)
        return exp.experiment_id
    location = None
    if not cfg.mlflow.tracking_uri.startswith(("http://", "https://", "databricks")):
        root = Path(cfg.mlflow.artifact_root).expanduser().resolve() / cfg.mlflow.experiment
        root.mkdir(parents=True, exist_ok=True)
        location = root.as_uri()
    try:
        return client.create_experiment(cfg.mlflow.experiment, artifact_location=location, tags=EXPERIMENT_TAGS)
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
               "model.feed": "ids",
               # pytorch's static, qat, dynamic and auto were torch.ao FX / eager builds before 2026-12-06
               "backend.flow": "fx"}


def _family(c: Dict[str, Any]) -> str:
    from bsb_hydra.config.store import model_schema

    schema = model_schema((c.get("model") or {}).get("name"))
    return getattr(schema, "family", "") if schema is not None else ""


def drop_inert(c: Dict[str, Any]) -> Dict[str, Any]:
    """Leave out keys that do nothing in this cell and were added to a schema after runs had been
    stored: quant.analyze / quant.eval_samples on a static cell with analyze off, quant.analyze on
    an auto cell (auto always analyzes), backend.transformer_optimizer outside a transformer's
    dynamic cell, backend.fold_relu6 outside an FX static or auto cell, backend.flow outside the schemes it builds
    (static, qat, dynamic, auto), backend.aoti_batch outside AOTInductor packages, the task group at task=auto,
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
    if "fold_relu6" in b and not (q.get("scheme") in ("static", "auto") and b.get("flow", "fx") == "fx"
                                  and _family(c) not in ("transformer", "recurrent")):
        b.pop("fold_relu6")  # it changes only PyTorch's FX static builds
    if "aoti_batch" in b and not ((q.get("scheme") in ("fp32", "fp16") and b.get("export") == "aoti")
                                  or (q.get("scheme") in ("static", "qat", "dynamic", "auto")
                                      and b.get("flow") == "pt2e")):
        b.pop("aoti_batch")  # it changes only PyTorch's AOTInductor packages (PT2E int8, export=aoti)
    if "flow" in b and q.get("scheme") not in ("static", "qat", "dynamic", "auto"):
        b.pop("flow")  # fp32, fp16, int4_weight_only and fake_quant are built the same under either flow
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
    """Who holds a run open: host, pid, the pid's start time (so a reused pid is not mistaken for the
    process that opened the run) and the PID namespace (a container sharing the host name has pids
    of its own: a pid is checked only from the namespace it belongs to)."""
    import os
    import socket

    return {"host": socket.gethostname(), "pid": str(os.getpid()), "pid_start": _pid_start(os.getpid()),
            "pid_namespace": pid_namespace()}


def run_is_dead(tags: Dict[str, str], me: Dict[str, str], stale_after_s: float, now: float) -> str:
    """Why an open (RUNNING) run's process is gone, or "" if it may be alive. A run of this host and
    PID namespace is checked by its pid at once. Any other (another host, a container sharing the
    host name) is dead when its heartbeat (renewed every mlflow.heartbeat_s by bsb_hydra.tracking.
    Heartbeat) is older than stale_after_s. A run from before the heartbeat (no heartbeat tag) keeps
    the earlier rule: checked by pid on its own host, left alone elsewhere."""
    beat = t_float(tags.get("heartbeat"))
    same_space = (tags.get("host") == me["host"] and tags.get("pid") and
                  (tags.get("pid_namespace") == me.get("pid_namespace") if beat is not None else True))
    if same_space:
        if _alive(tags["pid"], tags.get("pid_start", "")):
            return ""
        return f"process {tags['pid']} on {tags['host']} ended while this run was open (SIGKILL, crash or reboot)"
    if beat is not None and now - beat > stale_after_s:
        return (f"no heartbeat from process {tags.get('pid', '?')} on {tags.get('host', '?')} for {now - beat:.0f} s "
                f"(mlflow.stale_after_s={stale_after_s:g}): it ended while this run was open")
    return ""


def t_float(v) -> "float | None":
    try:
        return float(v)
    except (TypeError, ValueError):
        return None


def close_dead_runs(client, experiment_id: str, me: Dict[str, str], stale_after_s: float = 600.0) -> list:
    """Mark KILLED every run of the experiment left RUNNING by a process that is gone (run_is_dead: a
    sweep killed with SIGKILL, a reboot, a host lost). Returns the run ids closed."""
    import time

    closed = []
    now = time.time()
    for run in search_all(client, experiment_id, "attributes.status = 'RUNNING'"):
        why = run_is_dead(run.data.tags, me, stale_after_s, now)
        if not why:
            continue
        client.set_tag(run.info.run_id, "status", "killed")
        client.set_tag(run.info.run_id, "reason", f"killed: {why}; closed by process {me['pid']} on {me['host']}")
        client.set_terminated(run.info.run_id, status="KILLED")
        fail_pending_models(client, run.info.run_id)
        closed.append(run.info.run_id)
    return closed


def fail_pending_models(client, run_id: str) -> None:
    """The LoggedModels a dead run left PENDING (its cell built the artifact, then its process was
    killed before finishing it: bsb_hydra/logged_models.py) are finalized FAILED with the run."""
    from mlflow.entities import LoggedModelStatus

    run = client.get_run(run_id)
    for out in (run.outputs.model_outputs if run.outputs else []):
        if client.get_logged_model(out.model_id).status == LoggedModelStatus.PENDING:
            client.finalize_logged_model(out.model_id, LoggedModelStatus.FAILED)


class Heartbeat:
    """``with Heartbeat(client, run_id, interval_s):`` renews the run's ``heartbeat`` tag (unix seconds)
    from a background thread while the cell runs, so that a sweep on another host or in another PID
    namespace can tell a live run from a dead one. A run that another sweep wrongly closed as KILLED
    while this one lived (a clock far off, a store unreachable for longer than stale_after_s) is put
    back to RUNNING, its killed status and reason taken away. A failing renewal is retried at the
    next beat; it never fails the cell."""

    def __init__(self, client, run_id: str, interval_s: float) -> None:
        import threading

        self.client, self.run_id, self.interval_s = client, run_id, interval_s
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._loop, name="bsb-heartbeat", daemon=True)

    def beat(self) -> None:
        import time

        self.client.set_tag(self.run_id, "heartbeat", f"{time.time():.0f}")
        run = self.client.get_run(self.run_id)
        if run.info.status == "KILLED" or run.data.tags.get("status") == "killed":
            self.client.update_run(self.run_id, status="RUNNING")
            self.client.set_tag(self.run_id, "status", "running")
            if run.data.tags.get("reason", "").startswith("killed:"):
                self.client.delete_tag(self.run_id, "reason")

    def _loop(self) -> None:
        while not self.stop.wait(self.interval_s):
            try:
                self.beat()
            except Exception:
                pass

    def __enter__(self) -> "Heartbeat":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.thread.join(timeout=60)


def _machine_filter(info: Dict[str, str]) -> str:
    return (f"tags.arch = {_quote(info['arch'])} and tags.cpu = {_quote(info['cpu'])} "
            f"and tags.emulated = {_quote(info['emulated'])}")


def claim(client, experiment_id: str, run, chash: str, info: Dict[str, str], me: Dict[str, str],
          stale_after_s: float, force: bool = False):
    """Exactly once across sweeps that share a store: after this cell's run was created (tag
    claim=pending), is another live run of the same config on this kind of machine measuring it, or
    has one just finished ok? Returns that run (the caller deletes its own run and skips), or None:
    then this run is the claim (tag claim=committed) and measures.

    Works on any store, without a lock: every sweep creates its run first, then looks. A committed
    claim always wins; between two pending ones, the earlier (start time, then run id) does. Two
    sweeps that start together both see both pending runs and agree on one; a sweep that comes later
    sees the first one committed. The finished-ok check is made again after the look, so a cell that
    another sweep finished between this sweep's first check and its run's creation is not measured
    twice (unless ``force``: measuring again is what was asked)."""
    import time

    mine = run.info.run_id
    f = f"tags.config_hash = {_quote(chash)} and attributes.status = 'RUNNING' and " + _machine_filter(info)
    now = time.time()
    key = (run.info.start_time, mine)
    rivals = [r for r in search_all(client, experiment_id, f)
              if r.info.run_id != mine and not run_is_dead(r.data.tags, me, stale_after_s, now)]
    for r in rivals:
        if r.data.tags.get("claim") != "pending" or (r.info.start_time, r.info.run_id) < key:
            return r
    done = None if force else finished_run(client, experiment_id, chash, info)
    if done is not None:
        return done
    client.set_tag(mine, "claim", "committed")
    return None


def finished_run(client, experiment_id: str, chash: str, info: Dict[str, str]):
    """The newest run of this config on this kind of machine (arch, cpu, emulation) with status ok,
    or None. The same config on another machine is another measurement, never a duplicate."""
    f = (f"tags.config_hash = {_quote(chash)} and tags.status = 'ok' and attributes.status = 'FINISHED' and "
         + _machine_filter(info))
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
