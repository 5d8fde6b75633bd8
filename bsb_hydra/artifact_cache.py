"""Converted fp32 artifacts, reused across cells: CACHE/artifacts/<key>/.

Every cell times its quantized artifact beside the fp32 artifact of the same backend, so a sweep of
N schemes on one backend would convert the same fp32 model N times (a litert-torch conversion of a
224-px model takes 10-25 s, an AOTInductor compile 10-20 s). The first cell converts and files it
here; the others copy it into their own work folder. The key is the content of everything the
conversion reads: the weights' sha256, the model config (and a user model's source file), the
input's shape and dtype, the backend and its config (less the keys only its runner or other
schemes read), the machine's architecture and ISA, the seed, the versions of the packages that
convert, and the source of the code that builds (bsb_hydra/backends, bsb_hydra/models). A change
to any of them is a new entry, never a stale artifact. Each file's sha256 is recorded and checked
before reuse: an entry that does not match is converted again, and said so. A full disk or a
read-only cache leaves the cell with its own conversion, not filed (bsb_hydra/cache_files.py)."""
from __future__ import annotations

import functools
import hashlib
import json
import os
import shutil
from importlib import metadata
from pathlib import Path
from typing import Any, Callable, Dict, Optional, Tuple

from bsb_hydra.backends.base import Artifact, BuildContext
from bsb_hydra.cache_files import CacheWriteError, cache_lock, printed, remove_quietly, sha256_file
from bsb_hydra.train import plain_dict

PACKAGE = Path(__file__).resolve().parent
# The code whose change changes a converted artifact, and the packages that define the models.
SOURCE_DIRS = ("backends", "models")
MODEL_PACKAGES = ("torch", "torchvision", "transformers")


@functools.lru_cache(maxsize=1)
def code_digest() -> str:
    h = hashlib.sha256()
    for d in SOURCE_DIRS:
        for path in sorted((PACKAGE / d).rglob("*.py")):
            h.update(str(path.relative_to(PACKAGE)).encode())
            h.update(path.read_bytes())
    return h.hexdigest()[:20]


def package_versions(names) -> Dict[str, str]:
    out = {}
    for name in names:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "absent"
    return out


def key_parts(backend, ctx: BuildContext) -> Dict[str, Any]:
    """What the fp32 artifact of ``backend`` depends on (the cache key is its hash)."""
    cfg = ctx.cfg
    model = plain_dict(cfg.model)
    model.pop("checkpoint", None)  # the weights' sha256 stands for them
    return {
        "weights_sha256": ctx.weights_sha256, "model": model, "input_shape": list(ctx.example.shape[1:]),
        "input_dtype": str(ctx.example.dtype), "num_classes": int(getattr(ctx.data, "num_classes", 0) or 0),
        "seed": cfg.seed, "arch": ctx.arch, "isa": ctx.isa, "backend": backend.fp32_cache_parts(cfg),
        "packages": package_versions(MODEL_PACKAGES + tuple(backend.fp32_packages)), "code": code_digest(),
    }


def digest(parts: Dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:24]


def artifact_files(art: Artifact) -> list:
    """The artifact's file and its companions beside it: ``fp32.b8.tflite`` and
    ``fp32.tflite.batches.json`` of a litert-torch model, an ONNX file's external data."""
    path = Path(art.path)
    stem = path.name.split(".")[0]
    return sorted(p for p in path.parent.iterdir() if p.is_file() and p.name.split(".")[0] == stem)


def _load(entry: Path, workdir: Path) -> Tuple[Optional[Artifact], str]:
    """The cached artifact copied into ``workdir`` (None and why not, when the entry is unusable)."""
    meta_path = entry / "meta.json"
    if not meta_path.is_file():
        return None, "meta.json is missing" if entry.is_dir() and any(entry.iterdir()) else ""
    try:
        meta = json.loads(meta_path.read_text())
        for name, digest in meta["files"].items():
            got = sha256_file(entry / name)
            if got != digest:
                return None, f"{name} has sha256 {got[:12]}..., not the {digest[:12]}... recorded"
        art = Artifact(workdir / meta["path"], meta["input_dtype"], dict(meta["info"]),
                       companions=[workdir / name for name in meta.get("companions", [])])
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        return None, f"{type(e).__name__}: {e}"
    for name in meta["files"]:  # a failure here is the work folder's (its disk), not the entry's
        shutil.copyfile(entry / name, workdir / name)
    return art, ""


def _store(entry: Path, art: Artifact, parts: Dict[str, Any]) -> None:
    """The artifact's files and meta.json in a temporary folder, renamed to ``entry``. A write that
    fails removes the folder and raises CacheWriteError."""
    tmp = entry.with_name(f"{entry.name}.tmp{os.getpid()}")
    try:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        files = {}
        for path in artifact_files(art):
            shutil.copyfile(path, tmp / path.name)
            files[path.name] = sha256_file(tmp / path.name)
        meta = {"path": Path(art.path).name, "input_dtype": art.input_dtype, "info": art.info, "files": files,
                "companions": [Path(p).name for p in art.companions], "key_parts": parts}
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1, sort_keys=True, default=str))
        shutil.rmtree(entry, ignore_errors=True)  # an unusable entry
        os.replace(tmp, entry)
    except OSError as e:
        remove_quietly(tmp)
        raise CacheWriteError(entry, e) from e


def fp32_artifact(backend, ctx: BuildContext, build: Callable[[], Artifact], cache_dir: str,
                  log=printed) -> Tuple[Artifact, str, str]:
    """The fp32 artifact of ``backend`` for ``ctx``, from the cache or by ``build`` (then filed).
    Returns (artifact, "hit" | "stored" | "not_stored", key); ``log`` hears what the cache has to
    say. Concurrent jobs of one key convert once: the second waits for the first and copies its
    files. A cache that cannot take the entry (a full disk, read-only) leaves the cell with its own
    conversion: not_stored."""
    parts = key_parts(backend, ctx)
    key = digest(parts)
    root = Path(cache_dir) / "artifacts"
    entry = root / key
    with cache_lock(root / f".{key}.lock", log) as writable:
        art, why = _load(entry, ctx.workdir)
        if art is not None:
            backend.fp32_cached(ctx, art)
            return art, "hit", key
        if why:
            log(f"cached fp32 artifact {entry} is unusable ({why}): converting again")
        art = build()
        if art.simulated:
            return art, "stored", key
        if not writable:
            return art, "not_stored", key
        try:
            _store(entry, art, parts)
        except CacheWriteError as e:
            log(f"NOTE: {e}: the cell goes on with its own conversion, not cached")
            return art, "not_stored", key
        return art, "stored", key
