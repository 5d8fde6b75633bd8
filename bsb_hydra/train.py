"""The fp32 model: trained once per (model, data, train settings, seed) and cached by content
hash, or loaded from a user's checkpoint. Every backend and scheme of a sweep starts from it."""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Mapping, Optional

import numpy as np

from bsb_hydra.cache_files import CacheWriteError, Note, cache_lock, check_entry, printed, sha256_file, write_entry


@dataclass
class Fp32Model:
    module: "object"  # torch.nn.Module, eval mode; None for a user's ONNX file (onnx_path)
    source: str  # trained | cache | checkpoint | file
    key: str  # content hash of what determines the weights
    weights_path: str
    weights_sha256: str
    train_seconds: float = 0.0
    loss_curve: List[float] = field(default_factory=list)
    onnx_path: Optional[str] = None  # model=onnx: the fp32 model is this file, measured as it is


def plain_dict(obj):
    d = dataclasses.asdict(obj) if dataclasses.is_dataclass(obj) else dict(obj)
    return {k: (v.value if hasattr(v, "value") else v) for k, v in d.items()}


# Set by scripts/arm64_emulated.sh: the torch version that trained the cached fp32 weights natively
# (the host's), when this process's torch differs (the emulated aarch64 guest runs another torch).
TRAIN_TORCH_ENV = "BSB_FP32_TORCH_VERSION"


def local_torch_version() -> str:
    import torch

    return torch.__version__.split("+")[0]


def key_torch_version() -> str:
    """The torch version in the cache key: the one that trains the weights. The key holds no CPU
    architecture, so weights trained natively on x86_64 serve an aarch64 process with the same torch;
    one with another torch names the trainer's version in BSB_FP32_TORCH_VERSION."""
    return os.environ.get(TRAIN_TORCH_ENV, "").strip() or local_torch_version()


def cache_key(model_cfg, data_cfg, train_cfg, seed: int, input_shape, num_classes) -> str:
    m = plain_dict(model_cfg)
    m.pop("checkpoint", None)
    m.pop("default_data", None)
    t = plain_dict(train_cfg)
    t.pop("name", None)  # `smoke` and an identical custom preset share weights
    if not t.get("bn_recalibration"):  # added later: off, the old key
        t.pop("bn_recalibration", None)
    d = plain_dict(data_cfg)
    d.pop("limit_test", None)
    for k in ("resize", "channels", "mean", "std", "tokenizer_path"):  # added later: unset, the old key
        if d.get(k) is None:
            d.pop(k, None)
    key = {"model": m, "data": d, "train": t, "seed": seed, "input_shape": list(input_shape),
           "num_classes": num_classes, "torch": key_torch_version(),
           # weights trained before the initial weights were seeded are not this key's
           "init": "seeded"}
    code = model_cfg.cache_identity() if hasattr(model_cfg, "cache_identity") else ""
    if code:  # model=torch: the target's source file
        key["code"] = code
    blob = json.dumps(key, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


def training_subset(ds, limit: Optional[int], seed: int):
    """The training split, or a seeded subset of ``limit`` samples of it (smoke runs). A fitted
    (lazily resized) image split stays lazy."""
    from bsb_hydra.data.transforms import take

    x, y = ds.x_train, ds.y_train
    if limit is not None and limit < len(y):
        idx = np.sort(np.random.default_rng(seed + 2).choice(len(y), limit, replace=False))
        x, y = take(x, idx), y[idx]
    return x, y


def trim_trailing_padding(ids):
    """Drop the pad columns after a batch's longest text. For right-padded ids into a model that masks
    padding out (the transformers), this changes nothing but the cost of the step."""
    cols = (ids != 0).any(0).nonzero()
    return ids[:, :int(cols.max()) + 1] if len(cols) else ids[:, :1]


def _batches(n: int, batch_size: int, gen, lengths=None):
    """Shuffled mini-batches of indices. With ``lengths`` (texts whose batches are trimmed), batches
    are drawn from length-sorted chunks of 50 batches and then shuffled ("group by length"): the
    same samples per epoch with less padding to compute."""
    import torch

    perm = torch.randperm(n, generator=gen)
    if lengths is None:
        return [perm[i:i + batch_size] for i in range(0, n, batch_size)]
    chunk = 50 * batch_size
    perm = torch.cat([p[torch.argsort(lengths[p], stable=True)] for p in perm.split(chunk)])
    batches = list(perm.split(batch_size))
    return [batches[i] for i in torch.randperm(len(batches), generator=gen).tolist()]


def train_model(module, ds, cfg, seed: int, label: str = "train") -> List[float]:
    """Train ``module`` on ds's training split with cfg's epochs, batch_size, lr (one-cycle),
    weight_decay and limit_samples. Returns the per-epoch mean loss. Also QAT's fine-tuning loop."""
    import torch
    from torch import nn

    from bsb_hydra.feeds import Feeds

    torch.manual_seed(seed)
    x, y = training_subset(ds, cfg.limit_samples, seed)
    # a fitted image split (bsb_hydra/data/transforms.py) is transformed batch by batch; several named
    # inputs (a tokenizer's: bsb_hydra/feeds.py) are indexed together and fed positionally
    feeds = [torch.from_numpy(np.ascontiguousarray(v)) for v in x.values()] if isinstance(x, Feeds) else None
    xt = torch.from_numpy(x) if isinstance(x, np.ndarray) else None
    yt = torch.from_numpy(y)
    trim = getattr(module, "trims_trailing_padding", False) and (
        (xt is not None and xt.dtype == torch.int64) or feeds is not None)
    # the columns a batch may drop: after its longest text (the attention mask's, else the ids' non-pad)
    mask = (feeds[x.names.index("attention_mask")] if feeds is not None and "attention_mask" in x.names
            else feeds[0] if feeds is not None else xt)
    params = [p for p in module.parameters() if p.requires_grad]  # a frozen encoder stays as it is
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=getattr(cfg, "weight_decay", 0.0))
    steps = cfg.epochs * ((len(y) + cfg.batch_size - 1) // cfg.batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=steps)
    loss_fn = nn.CrossEntropyLoss()
    gen = torch.Generator().manual_seed(seed)
    curve = []
    module.train()
    for m in module.modules():  # a frozen batch-norm (a pretrained backbone's) keeps its running statistics
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and not any(p.requires_grad for p in m.parameters()):
            m.eval()
    lengths = (mask != 0).sum(1) if trim else None
    for epoch in range(cfg.epochs):
        total, n = 0.0, 0
        last = time.perf_counter()
        batches = _batches(len(y), cfg.batch_size, gen, lengths)
        for i, b in enumerate(batches):
            if time.perf_counter() - last > 60:  # real-size models: minutes per epoch
                print(f"  {label} epoch {epoch + 1}/{cfg.epochs}: batch {i}/{len(batches)}, loss {total / max(n, 1):.4f}",
                      flush=True)
                last = time.perf_counter()
            if feeds is not None:
                args = [t[b] for t in feeds]
                if trim:
                    keep = trim_trailing_padding(mask[b]).shape[1]
                    args = [a[:, :keep] for a in args]
            else:
                xb = xt[b] if xt is not None else torch.from_numpy(x[b.numpy()])
                args = [trim_trailing_padding(xb) if trim else xb]
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(module(*args), yt[b])
            loss.backward()
            opt.step()
            sched.step()
            total += loss.item() * len(b)
            n += len(b)
        curve.append(total / n)
        print(f"  {label} epoch {epoch + 1}/{cfg.epochs}: loss {curve[-1]:.4f}", flush=True)
    if getattr(cfg, "bn_recalibration", 0) and feeds is None:
        recalibrate_bn(module, x, cfg.bn_recalibration, cfg.batch_size, seed)
    module.eval()
    return curve


def recalibrate_bn(module, x, n: int, batch_size: int, seed: int) -> None:
    """Batch-norm running statistics recomputed for the final weights over ``n`` training samples
    (torch's ``swa_utils.update_bn``, forward passes only); a frozen batch-norm keeps its own."""
    import torch
    from torch import nn

    frozen = {m: (m.running_mean.clone(), m.running_var.clone()) for m in module.modules()
              if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats
              and not any(p.requires_grad for p in m.parameters())}
    idx = np.sort(np.random.default_rng(seed + 3).choice(len(x), min(n, len(x)), replace=False))
    batches = [torch.from_numpy(np.ascontiguousarray(x[idx[i:i + batch_size]])) for i in range(0, len(idx), batch_size)]
    with torch.no_grad():
        torch.optim.swa_utils.update_bn(batches, module)
        for m, (mean, var) in frozen.items():
            m.running_mean.copy_(mean)
            m.running_var.copy_(var)
    print(f"  batch-norm statistics recomputed over {len(idx)} training samples", flush=True)


def read_state_dict(path: Path, model_cfg):
    """A checkpoint's state_dict, read with ``torch.load(weights_only=True)``; unpickled only for
    model=torch with ``model.allow_pickle=true`` (a file the user trusts, bsb_hydra/untrusted.py).
    A refusal leads with why: the callables the pickle names, never torch's advice to retry with
    ``weights_only=False``."""
    import torch

    from bsb_hydra.config.base import InputError
    from bsb_hydra.untrusted import OPT_IN, pickle_refusal, torch_reason

    trusted = bool(getattr(model_cfg, "allow_pickle", False))
    try:
        return torch.load(path, map_location="cpu", weights_only=not trusted)
    except Exception as e:
        if trusted:
            raise InputError(f"model.checkpoint={str(path)!r} does not unpickle (model.allow_pickle=true): "
                             f"{type(e).__name__}: {str(e).strip()[:300]}") from None
        refused = pickle_refusal(path, e)
        if refused is None:
            raise InputError(f"model.checkpoint={str(path)!r} cannot be read as a weights-only state_dict "
                             f"(torch.load(weights_only=True)): {type(e).__name__}: {torch_reason(e).rstrip('.')}. "
                             f"Save the model's weights with torch.save(model.state_dict(), PATH)") from None
    if hasattr(model_cfg, "allow_pickle"):
        opt_in = f"{OPT_IN}, or save the weights alone with torch.save(model.state_dict(), PATH)"
    else:  # a built-in model takes plain weights only
        opt_in = ("save the weights alone with torch.save(model.state_dict(), PATH) (model=torch model.target=... "
                  "with model.allow_pickle=true unpickles a file you trust)")
    raise InputError(f"model.checkpoint={str(path)!r} is not plain weights: {refused}; {opt_in}")


def check_outputs(module, ds, model_cfg) -> None:
    """One forward pass on a training sample before any training: the model must take the data's
    inputs and give one logit per class (a user's module or checkpoint may not)."""
    import torch

    from bsb_hydra.config.base import InputError
    from bsb_hydra.models import model_label

    from bsb_hydra.feeds import describe, materialize, to_torch_args

    one = materialize(ds.x_train[:1])
    try:
        with torch.inference_mode():
            out = module.eval()(*to_torch_args(one))
    except Exception as e:
        shape = f"of shape ({', '.join(map(str, one.shape[1:]))})" if isinstance(one, np.ndarray) else describe(one)
        raise InputError(f"model={model_label(model_cfg)} cannot run data={ds.name}'s inputs {shape} "
                         f"({type(e).__name__}: {str(e).strip().splitlines()[0][:200]})") from None
    shape = tuple(getattr(out, "shape", ()))
    if ds.num_classes is not None and (len(shape) != 2 or shape[1] != ds.num_classes):
        raise InputError(f"model={model_label(model_cfg)} outputs shape {shape} for one sample; data={ds.name} has "
                         f"{ds.num_classes} classes, so (1, {ds.num_classes}) was expected")


def get_fp32_model(cfg, ds, cache_dir: str, note: Note = printed) -> Fp32Model:
    """The trained fp32 model, every parameter trainable again: a frozen pretrained backbone is a
    choice of the fp32 training (model.freeze_backbone), not of QAT's fine-tuning that starts from it.
    ``note`` hears what the model cache has to say (an entry rebuilt, a write that failed)."""
    fp32 = _get_fp32_model(cfg, ds, cache_dir, note)
    if fp32.module is not None:
        for p in fp32.module.parameters():
            p.requires_grad_(True)
    return fp32


def state_dict_sha256(module) -> str:
    """The SHA-256 of the weights as the cache would file them, for weights that could not be filed:
    it keys the artifact and logits caches. Hashed as torch.save writes, without holding a copy."""
    import torch

    class Sink:
        def __init__(self):
            self.h = hashlib.sha256()

        def write(self, b) -> int:
            self.h.update(b)
            return len(b)

        def flush(self) -> None:
            pass

    sink = Sink()
    torch.save(module.state_dict(), sink)
    return sink.h.hexdigest()


def _get_fp32_model(cfg, ds, cache_dir: str, note: Note) -> Fp32Model:
    import torch

    from bsb_hydra.config.base import InputError
    from bsb_hydra.models import build_model, model_label

    if not ds.labelled and cfg.model.needs_training(False):
        raise InputError(f"data={ds.name} has no labels, so model={model_label(cfg.model)} cannot be trained on it: "
                         "give its trained weights (model.checkpoint=...), a model file (model=onnx, model=torch "
                         "with a whole-model checkpoint) or labelled data")
    # The initial weights come from the seed too: here torch's default generator starts from a
    # different seed in every process (torch.initial_seed() differs), so without this two trainings
    # under one cache key differed (a smoke-trained mlp scored 16% in one process and 57% in another).
    torch.manual_seed(cfg.seed)
    module = build_model(cfg.model, ds.input_shape, ds.num_classes)
    if isinstance(module, Fp32Model):  # a user's whole model file (ONNX, TorchScript, ...): nothing to train
        return module  # its outputs are checked by the task's probe (bsb_hydra/steps.py)
    path = Path(cfg.model.checkpoint).expanduser() if cfg.model.checkpoint else None
    if path is not None and not path.is_file():
        raise InputError(f"model.checkpoint={cfg.model.checkpoint!r}: no such file")
    if path is None:
        check_outputs(module, ds, cfg.model)  # training needs one score per class
    if path is not None:
        state = read_state_dict(path, cfg.model)
        if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
            what = (f"a dict with keys {', '.join(map(str, list(state)[:6]))}" if isinstance(state, Mapping)
                    else f"a {type(state).__name__}")
            raise InputError(f"model.checkpoint={str(path)!r} holds {what}, not a state_dict (parameter name -> "
                             f"tensor): save torch.save(model.state_dict(), PATH)")
        try:
            module.load_state_dict(state)
        except RuntimeError as e:
            first = str(e).strip().splitlines()
            raise InputError(f"model.checkpoint={str(path)!r} does not fit model={model_label(cfg.model)} for input "
                             f"{ds.input_shape}: {' '.join(line.strip() for line in first[:3])[:400]}") from None
        module.eval()
        digest = sha256_file(path)
        return Fp32Model(module, "checkpoint", "ckpt-" + digest[:20], str(path), digest)

    key = cache_key(cfg.model, cfg.data, cfg.train, cfg.seed, ds.input_shape, ds.num_classes)
    folder = Path(cache_dir) / "models"
    weights = folder / f"{model_label(cfg.model)}-{key}.pt"
    meta_path = weights.with_suffix(".json")
    with cache_lock(folder / f".{key}.lock", note) as writable:
        if writable:
            for stale in folder.glob(f"{weights.stem}.*tmp*"):  # left by a job killed mid-write
                stale.unlink(missing_ok=True)
        meta, why = check_entry(weights, meta_path)
        if meta is not None:
            try:
                module.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True))
            except Exception as e:
                from bsb_hydra.untrusted import torch_reason

                why = f"{type(e).__name__}: {torch_reason(e)}"
            else:
                module.eval()
                return Fp32Model(module, "cache", key, str(weights), meta["sha256"], meta.get("train_seconds", 0.0),
                                 meta.get("loss_curve", []))
        if why:  # a corrupt cache entry is never used: say which file, then retrain
            note(f"cached model {weights} is unusable ({why}): retraining")
        if key_torch_version() != local_torch_version():  # never file this torch's weights under another's key
            raise RuntimeError(f"{TRAIN_TORCH_ENV}={key_torch_version()}: the fp32 weights trained by torch "
                               f"{key_torch_version()} ({weights.name}) are not in the cache {folder}, and this "
                               f"process (torch {local_torch_version()}) must not train them: train them natively "
                               f"first (scripts/arm64_emulated.sh does), with the same model/data/train/seed")
        torch.set_num_threads(os.cpu_count() or 1)
        t0 = time.perf_counter()
        curve = train_model(module, ds, cfg.train, cfg.seed)
        seconds = time.perf_counter() - t0
        meta = {"train_seconds": seconds, "loss_curve": curve, "torch": local_torch_version(),
                "machine": platform.machine()}
        unstored = "" if writable else f"the cache {folder} is read-only"
        if writable:
            try:
                digest = write_entry(weights, meta_path, lambda f: torch.save(module.state_dict(), f), meta)
            except CacheWriteError as e:
                unstored = str(e)
        if unstored:  # a cache only saves time: the cell goes on with the weights in memory
            note(f"NOTE: {unstored}: the trained model is used from memory, not cached")
            return Fp32Model(module, "trained", key, "", state_dict_sha256(module), seconds, curve)
    return Fp32Model(module, "trained", key, str(weights), digest, seconds, curve)
