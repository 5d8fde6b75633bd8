"""The fp32 artifact cache (bsb_hydra/artifact_cache.py): what its key holds and leaves out, a hit
copying the files (companions included) and telling the backend, an entry that does not match its
recorded sha256 converted again. The sweeps that use it are checked in test_sweep.py and test_byo.py."""
from pathlib import Path

import numpy as np

from bsb_hydra import artifact_cache
from bsb_hydra.backends import get_backend
from bsb_hydra.backends.base import Artifact, Backend, BuildContext
from bsb_hydra.config import validate
from tests.test_config import _resolvable


def _ctx(compose_cfg, overrides, tmp: Path, sha="ab" * 32, shape=(1, 28, 28)):
    from types import SimpleNamespace

    cfg = validate(_resolvable(compose_cfg(list(overrides))))
    tmp.mkdir(parents=True, exist_ok=True)
    return BuildContext(None, np.zeros((1, *shape), np.float32), None, cfg, "x86", "x86_64", "avx2", tmp,
                        data=SimpleNamespace(num_classes=10), weights_sha256=sha)


def _key(compose_cfg, tmp, overrides=(), **kw):
    ctx = _ctx(compose_cfg, overrides, tmp, **kw)
    return artifact_cache.digest(artifact_cache.key_parts(get_backend(ctx.cfg.backend.name), ctx))


def test_key_holds_what_the_conversion_reads_and_nothing_the_runner_reads(compose_cfg, tmp_path):
    key = lambda *o, **kw: _key(compose_cfg, tmp_path, o, **kw)  # noqa: E731
    ort = key("model=cnn", "backend=onnxruntime")
    assert ort == key("model=cnn", "backend=onnxruntime", "backend.graph_optimization=basic")  # the session's
    assert ort == key("model=cnn", "backend=onnxruntime", "quant=static", "device.threads=2")  # every scheme's
    assert ort != key("model=cnn", "backend=onnxruntime", "backend.opset=17")
    assert ort != key("model=cnn", "backend=onnxruntime", sha="cd" * 32)  # other weights
    assert ort != key("model=cnn", "backend=onnxruntime", shape=(1, 32, 32))
    assert ort != key("model=cnn", "backend=onnxruntime", "model.fc=64")
    assert ort != key("model=cnn", "backend=pytorch")

    script = key("model=cnn", "backend=pytorch")
    assert script == key("model=cnn", "backend=pytorch", "device.threads=2")
    assert script != key("model=cnn", "backend=pytorch", "backend.channels_last=false")
    aoti = key("model=cnn", "backend=pytorch", "backend.export=aoti")
    assert aoti not in (script, key("model=cnn", "backend=pytorch", "backend.export=aoti", "device.threads=2"))

    twin = key("model=cnn", "backend=tflite")
    assert twin == key("model=cnn", "backend=tflite", "backend.xnnpack=false", "backend.int8_io=true",
                       "benchmark.batch_sizes=[1,4]")  # a twin's file takes every batch size
    litert = key("model=cnn", "backend=tflite", "backend.converter=litert_torch")
    assert litert != twin
    assert litert != key("model=cnn", "backend=tflite", "backend.converter=litert_torch", "benchmark.batch_sizes=[1,4]")


def test_key_changes_with_the_converting_code_and_packages(compose_cfg, tmp_path, monkeypatch):
    ctx = _ctx(compose_cfg, ["model=cnn", "backend=onnxruntime"], tmp_path)
    backend = get_backend("onnxruntime")
    parts = artifact_cache.key_parts(backend, ctx)
    assert set(parts["packages"]) == {"torch", "torchvision", "transformers", "onnx", "onnxscript", "onnxruntime"}
    assert parts["code"] == artifact_cache.code_digest() and len(parts["code"]) == 20
    monkeypatch.setattr(artifact_cache, "code_digest", lambda: "other code")
    assert artifact_cache.digest(artifact_cache.key_parts(backend, ctx)) != artifact_cache.digest(parts)


class _Files(Backend):
    """Writes a litert-like fp32 artifact (b1 file, b8 file, manifest) plus a build-only file."""
    name, suffix = "fake", ".tflite"

    def __init__(self):
        self.builds, self.told = 0, []

    def build_fp32(self, ctx, out):
        self.builds += 1
        out.write_bytes(b"b1 model")
        out.with_name("fp32.b8.tflite").write_bytes(b"b8 model")
        Path(str(out) + ".batches.json").write_text('{"1": "fp32.tflite", "8": "fp32.b8.tflite"}')
        (out.parent / "fp32_export.onnx").write_bytes(b"not the artifact")
        return Artifact(out, "float32", {"ops": "CONV_2D:1"})

    def fp32_cached(self, ctx, art):
        self.told.append(art.path)


def test_hit_copies_the_artifact_and_its_companions_and_a_bad_entry_is_converted_again(compose_cfg, tmp_path):
    cache = tmp_path / "cache"
    first, second, third = (_ctx(compose_cfg, ["model=cnn"], tmp_path / d) for d in ("c0", "c1", "c2"))
    backend = _Files()
    build = lambda ctx: lambda: backend.build_fp32(ctx, ctx.workdir / "fp32.tflite")  # noqa: E731
    art, how, key = artifact_cache.fp32_artifact(backend, first, build(first), str(cache))
    assert (how, backend.builds, backend.told) == ("stored", 1, [])
    entry = cache / "artifacts" / key
    assert sorted(p.name for p in entry.iterdir()) == ["fp32.b8.tflite", "fp32.tflite", "fp32.tflite.batches.json",
                                                        "meta.json"]

    art, how, key2 = artifact_cache.fp32_artifact(backend, second, build(second), str(cache))
    assert (how, key2, backend.builds) == ("hit", key, 1)
    assert art.path == second.workdir / "fp32.tflite" and art.info == {"ops": "CONV_2D:1"}
    assert backend.told == [art.path]
    assert (second.workdir / "fp32.b8.tflite").read_bytes() == b"b8 model"
    assert not (second.workdir / "fp32_export.onnx").exists()

    (entry / "fp32.b8.tflite").write_bytes(b"torn")
    said = []
    art, how, _ = artifact_cache.fp32_artifact(backend, third, build(third), str(cache),
                                               log=lambda msg, **kw: said.append(msg))
    assert (how, backend.builds) == ("stored", 2)
    assert "fp32.b8.tflite has sha256" in said[0] and "converting again" in said[0]
    assert (entry / "fp32.b8.tflite").read_bytes() == b"b8 model"  # the entry was filed again


def test_switched_off_or_without_weights_every_cell_converts(compose_cfg, tmp_path):
    from bsb_hydra.steps import fp32_artifact

    class Log:
        def __init__(self):
            self.t = {}

        def tags(self, d):
            self.t.update(d)

    backend = _Files()
    for i, (overrides, sha) in enumerate([(["paths.reuse_fp32_artifacts=false"], "ab" * 32), ([], "")]):
        ctx = _ctx(compose_cfg, ["model=cnn", f"paths.cache_dir={tmp_path}/cache", *overrides], tmp_path / f"c{i}",
                   sha=sha)
        log = Log()
        fp32_artifact(ctx.cfg, backend, ctx, ctx.workdir / "fp32.tflite", log)
        assert log.t == {"fp32_artifact_cache": "off"}
    assert backend.builds == 2 and not (tmp_path / "cache").exists()
    ctx = _ctx(compose_cfg, ["model=cnn", f"paths.cache_dir={tmp_path}/cache"], tmp_path / "on")
    log = Log()
    fp32_artifact(ctx.cfg, backend, ctx, ctx.workdir / "fp32.tflite", log)
    assert log.t["fp32_artifact_cache"] == "stored" and len(log.t["fp32_artifact_key"]) == 24
