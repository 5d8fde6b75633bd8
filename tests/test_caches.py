"""The caches (bsb_hydra/cache_files.py): the fp32 models, the converted fp32 artifacts, the PyTorch
test logits and the machine's peak. Each checks the SHA-256 recorded with an entry and builds a bad
entry again, naming the file and what was wrong; a full disk or a read-only cache costs the time a
cache saves, never a cell. One test per finding of issue 31, calling the caches directly (digits,
smoke training) rather than through a sweep."""
import builtins
import dataclasses
import errno
import hashlib
import io
import json
import os
import subprocess
from pathlib import Path
from types import SimpleNamespace as NS

import numpy as np
import pytest

from bsb_hydra import artifact_cache
from bsb_hydra.bench import peak
from bsb_hydra.scoring import agreement_with_pytorch, pytorch_test_logits
from bsb_hydra.train import get_fp32_model
from tests.conftest import CONF, fill_disk

BATCH = 64  # the eval batch of the logits' key


class Log:
    """The cell's log, as the steps see it: what was tagged."""

    def __init__(self):
        self.t = {}

    def tags(self, d):
        self.t.update({k: str(v) for k, v in d.items() if v is not None and str(v) != ""})

    def metrics(self, d):
        pass

    def metric(self, key, value, step):
        pass


@pytest.fixture(scope="module")
def digits():
    """model=mlp on digits with smoke training (a second or two to train), composed and loaded once."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from bsb_hydra.config import register_configs, validate
    from bsb_hydra.steps import load_data

    register_configs()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = compose("config", overrides=["model=mlp", "data=digits", "train=smoke"])
    GlobalHydra.instance().clear()
    cfg.paths.root = "/tmp/project"
    cfg = validate(cfg)
    return cfg, load_data(cfg, Log())


def with_cache(cfg, cache: Path, **changes):
    return dataclasses.replace(cfg, paths=dataclasses.replace(cfg.paths, cache_dir=str(cache)), **changes)


class _Full:
    """A file whose every write finds the disk full (the simulated ENOSPC)."""

    def __init__(self, f, error: OSError):
        self._f, self._error = f, error

    def write(self, data):
        raise self._error

    def __getattr__(self, name):
        return getattr(self._f, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._f.close()


class Disk:
    """A cache folder whose faults a test switches on. It is a 2 MiB tmpfs of its own where this
    process may mount one (root in a container): the kernel then gives the real ENOSPC (a filler
    takes the last byte) and EROFS (remounted read-only; root ignores chmod). Elsewhere the same
    errors come from patched file functions: every write under the folder through Python's open
    (ENOSPC), or every open for writing, rename, removal and mkdir there (EROFS)."""

    def __init__(self, root: Path):
        self.root = root
        root.mkdir()
        self.mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(root)],
                                      capture_output=True).returncode == 0
        self.patch = pytest.MonkeyPatch()
        self.filler = root / ".filler"

    def fill(self) -> None:
        if not self.mounted:
            return self._simulate(errno.ENOSPC)
        fill_disk(self.filler)

    def free(self) -> None:
        if self.mounted:
            self.filler.unlink()
        self.patch.undo()

    def read_only(self) -> None:
        if not self.mounted:
            return self._simulate(errno.EROFS)
        subprocess.run(["mount", "-o", "remount,ro", str(self.root)], check=True)

    def close(self) -> None:
        self.patch.undo()
        if self.mounted:
            subprocess.run(["umount", "-l", str(self.root)], check=False)

    def _simulate(self, code: int) -> None:
        root = os.path.realpath(self.root)

        def under(path, dir_fd=None) -> bool:
            if isinstance(path, int):
                return False
            p = os.fsdecode(os.fspath(path))
            if dir_fd is not None and not os.path.isabs(p):
                p = os.path.join(os.readlink(f"/proc/self/fd/{dir_fd}"), p)
            p = os.path.abspath(p)
            return p == root or p.startswith(root + os.sep)

        def error(path) -> OSError:
            return OSError(code, os.strerror(code), os.fsdecode(os.fspath(path)))

        real_open, real_os_open = builtins.open, os.open

        def fake_open(file, mode="r", *a, **kw):
            if under(file) and any(c in mode for c in "wax+"):
                if code == errno.EROFS:
                    raise error(file)
                return _Full(real_open(file, mode, *a, **kw), error(file))
            return real_open(file, mode, *a, **kw)

        self.patch.setattr(builtins, "open", fake_open)
        self.patch.setattr(io, "open", fake_open)
        if code != errno.EROFS:
            return
        writes = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC

        def fake_os_open(path, flags, mode=0o777, *, dir_fd=None):
            if flags & writes and under(path, dir_fd):
                raise error(path)
            return real_os_open(path, flags, mode, dir_fd=dir_fd)

        self.patch.setattr(os, "open", fake_os_open)
        for name in ("replace", "rename", "unlink", "remove", "rmdir", "mkdir"):
            real = getattr(os, name)

            def refuse(path, *a, _real=real, _name=name, **kw):
                if under(path, kw.get("dir_fd")):
                    if _name == "mkdir" and os.path.exists(path):  # as Linux answers on a read-only mount
                        raise FileExistsError(errno.EEXIST, os.strerror(errno.EEXIST), os.fspath(path))
                    raise error(path)
                return _real(path, *a, **kw)

            self.patch.setattr(os, name, refuse)


@pytest.fixture
def disk(tmp_path):
    d = Disk(tmp_path / "cache")
    yield d
    d.close()


def _fake_peak(calls):
    def measure(threads, size, min_duration_s):
        calls.append(threads)
        return {"measured_at": "now", "threads": threads, "size": size, "mem_bandwidth_gbs": 1.0,
                "runtimes": {"pytorch": {"gflops_fp32": 10.0, "gops_int8": 25.0, "int8_ratio": 2.5,
                                         "call_floor_ms": 0.01}},
                "gflops_fp32": 10.0, "gops_int8": 25.0, "int8_peak_ratio": 2.5}
    return measure


def _snapshot(root: Path):
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*")) if p.is_file()}


# --------------------------------------------------------------------------- finding 8: the logits
def test_altered_pytorch_logits_are_named_and_computed_again(digits, tmp_path, capsys):
    """Altered cached logits were read as they were: fp32_vs_pytorch_agreement=0.0, status ok."""
    cfg, ds = digits
    cache = tmp_path / "cache"
    fp32 = get_fp32_model(cfg, ds, str(cache))
    logits = pytorch_test_logits(fp32, ds, BATCH, str(cache))
    (path,) = (cache / "logits").glob("*.npy")
    np.save(path, np.roll(logits, 1, axis=1))  # a valid file, other contents: every argmax moves
    capsys.readouterr()
    cell = NS(backend=NS(name="onnxruntime"), benchmark=NS(eval_batch_size=BATCH), paths=NS(cache_dir=str(cache)))
    timed = NS(ref=NS(outputs=NS(first_output=lambda: logits)))  # the fp32 artifact agrees with PyTorch
    m = agreement_with_pytorch(cell, NS(name="classification"), fp32, ds, timed)
    assert m == {"fp32_vs_pytorch_agreement": 1.0, "fp32_vs_pytorch_max_abs_logit_diff": 0.0}
    said = capsys.readouterr().out
    assert f"cached PyTorch logits {path} are unusable (sha256 " in said and "computing them again" in said
    assert np.array_equal(np.load(path), logits)  # filed again
    assert np.array_equal(pytorch_test_logits(fp32, ds, BATCH, str(cache)), logits)
    path.with_suffix(".json").unlink()  # an entry without its record (written before there was one)
    assert np.array_equal(pytorch_test_logits(fp32, ds, BATCH, str(cache)), logits)
    assert f"{path.with_suffix('.json').name} is missing" in capsys.readouterr().out


# ------------------------------------------------------------------------- finding 11a: a full disk
def test_full_disk_under_the_model_cache_names_the_file_and_the_cell_goes_on(digits, disk):
    """A full disk read "[enforce fail at inline_container.cc:672] . unexpected pos 1344 vs 1238",
    left a .pt.tmp<pid> file and failed the cell."""
    from bsb_hydra.steps import load_fp32

    cfg, ds = digits
    disk.fill()
    log = Log()
    fp32 = load_fp32(with_cache(cfg, disk.root), ds, log)
    from bsb_hydra.train import state_dict_sha256

    weights = disk.root / "models" / f"mlp-{fp32.key}.pt"
    assert fp32.source == "trained" and fp32.module is not None
    assert fp32.weights_sha256 == state_dict_sha256(fp32.module)  # keys the artifact and logits caches
    note = log.t["fp32_cache_note"]
    assert f"cannot write the cache file {weights}: ENOSPC (No space left on device)" in note, note
    assert "the trained model is used from memory, not cached" in note
    assert sorted(p.name for p in (disk.root / "models").iterdir()) == [f".{fp32.key}.lock"]  # no .tmp file left

    disk.free()
    stored = get_fp32_model(cfg, ds, str(disk.root))
    assert stored.source == "trained" and weights.is_file()
    assert stored.weights_sha256 == fp32.weights_sha256  # the digest in memory is the file's
    assert get_fp32_model(cfg, ds, str(disk.root)).source == "cache"


def test_full_disk_under_the_other_caches_names_the_file_and_goes_on(compose_cfg, digits, disk, monkeypatch):
    """The same for the artifacts, the logits and the peak: what was built is used, not filed."""
    from tests.test_artifact_cache import _ctx, _Files

    cfg, ds = digits
    fp32 = get_fp32_model(cfg, ds, str(disk.root))  # the weights are cached before the disk fills
    disk.fill()
    said = []
    backend, ctx = _Files(), _ctx(compose_cfg, ["model=cnn"], disk.root.parent / "cell")
    art, how, key = artifact_cache.fp32_artifact(backend, ctx, lambda: backend.build_fp32(ctx, ctx.workdir / "fp32.tflite"),
                                                 str(disk.root), log=said.append)
    assert how == "not_stored" and art.path.read_bytes() == b"b1 model"
    assert said == [f"NOTE: cannot write the cache file {disk.root / 'artifacts' / key}: ENOSPC (No space left on "
                    f"device): the cell goes on with its own conversion, not cached"]
    logits = pytorch_test_logits(fp32, ds, BATCH, str(disk.root), note=said.append)
    assert logits.shape == (len(ds.y_test), 10) and "ENOSPC" in said[-1] and "logits" in said[-1]
    calls = []
    monkeypatch.setattr(peak, "measure_peak", _fake_peak(calls))
    figures = peak.machine_peak(disk.root / "peak", 1, 64, log=lambda s: None, note=said.append)
    assert figures["int8_peak_ratio"] == 2.5 and "ENOSPC" in said[-1] and str(disk.root / "peak") in said[-1]
    assert peak.machine_peak(disk.root / "peak", 1, 64, log=lambda s: None, note=said.append) == figures
    assert calls == [1]  # measured once per process, though not filed
    leftovers = [p for p in disk.root.rglob("*") if ".tmp" in p.name]
    assert leftovers == [] and not list((disk.root / "logits").glob("*.npy"))


# ---------------------------------------------------------------------- finding 11b: read-only cache
def test_read_only_cache_is_used_as_it_is_and_never_written(compose_cfg, digits, disk, monkeypatch, capsys):
    """A read-only cache failed every cell on its lock file although every entry was valid."""
    from tests.test_artifact_cache import _ctx, _Files

    cfg, ds = digits
    calls = []
    monkeypatch.setattr(peak, "measure_peak", _fake_peak(calls))
    backend = _Files()
    build = lambda ctx: lambda: backend.build_fp32(ctx, ctx.workdir / "fp32.tflite")  # noqa: E731
    fp32 = get_fp32_model(cfg, ds, str(disk.root))
    logits = pytorch_test_logits(fp32, ds, BATCH, str(disk.root))
    first = _ctx(compose_cfg, ["model=cnn"], disk.root.parent / "c0")
    artifact_cache.fp32_artifact(backend, first, build(first), str(disk.root))
    figures = peak.machine_peak(disk.root / "peak", 1, 64, log=lambda s: None)
    before = _snapshot(disk.root)
    disk.read_only()
    capsys.readouterr()

    monkeypatch.setattr("bsb_hydra.scoring._torch_logits", lambda *a: pytest.fail("the logits were computed again"))
    assert get_fp32_model(cfg, ds, str(disk.root)).source == "cache"
    assert np.array_equal(pytorch_test_logits(fp32, ds, BATCH, str(disk.root)), logits)
    second = _ctx(compose_cfg, ["model=cnn"], disk.root.parent / "c1")
    art, how, _ = artifact_cache.fp32_artifact(backend, second, build(second), str(disk.root))
    assert how == "hit" and backend.builds == 1 and art.path.read_bytes() == b"b1 model"
    assert peak.machine_peak(disk.root / "peak", 1, 64, log=lambda s: None) == figures and calls == [1]
    said = capsys.readouterr().out
    assert said.count("is read-only here") == 4 and "nothing is written to it" in said

    other = get_fp32_model(with_cache(cfg, disk.root, seed=1), ds, str(disk.root))  # not in the cache
    assert other.source == "trained" and other.weights_sha256
    assert f"the cache {disk.root / 'models'} is read-only: the trained model is used from memory, not cached" in \
        capsys.readouterr().out
    assert _snapshot(disk.root) == before  # never written


# ----------------------------------------------------------------- finding 11c: a corrupt peak cache
def test_corrupt_peak_cache_is_named_and_measured_again(tmp_path, monkeypatch):
    """A corrupt peak file disabled the peak metrics of every cell (tag peak_error) until deleted."""
    from bsb_hydra.steps import machine_limit

    calls = []
    monkeypatch.setattr(peak, "measure_peak", _fake_peak(calls))
    cell = NS(peak=NS(enabled=True, cache_dir=str(tmp_path), size=64, min_duration_s=0.02), device=NS(threads=1),
              backend=NS(name="pytorch"), paths=NS(cache_dir=str(tmp_path)))
    machine_limit(cell, Log())
    (path,) = [p for p in tmp_path.glob("peak_*.json") if not p.name.endswith(".meta.json")]
    good = json.loads(path.read_text())
    for damage in (path.read_text()[:40], json.dumps({**good, "int8_peak_ratio": 250.0})):  # torn, altered
        path.write_text(damage)
        log = Log()
        figures = machine_limit(cell, log)
        assert "peak_error" not in log.t and figures["int8_peak_ratio"] == 2.5
        note = log.t["peak_cache_note"]
        assert note.startswith(f"cached peak figures {path} are unusable (") and "measuring them again" in note
        assert json.loads(path.read_text())["int8_peak_ratio"] == 2.5  # filed again
    assert "sha256" in note and calls == [1, 1, 1]
    log = Log()
    machine_limit(cell, log)
    assert "peak_cache_note" not in log.t and calls == [1, 1, 1]  # a good entry is read, not measured
