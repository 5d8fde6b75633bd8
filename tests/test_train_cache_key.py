"""The model-cache key names the torch that trains the weights: an emulated aarch64 guest, whose torch
differs from the host's, finds weights trained natively (scripts/arm64_emulated.sh)."""
from types import SimpleNamespace

from bsb_hydra.train import TRAIN_TORCH_ENV, cache_key, key_torch_version, local_torch_version

MODEL = SimpleNamespace(name="mlp", hidden=128, checkpoint=None)
DATA = SimpleNamespace(name="fashion_mnist", root=None, limit_test=500)
TRAIN = SimpleNamespace(name="smoke", epochs=1, batch_size=64, lr=0.002, limit_samples=512)


def _key():
    return cache_key(vars(MODEL), vars(DATA), vars(TRAIN), 0, (1, 28, 28), 10)


def test_key_uses_the_trainers_torch_version(monkeypatch):
    monkeypatch.delenv(TRAIN_TORCH_ENV, raising=False)
    local = _key()
    assert key_torch_version() == local_torch_version()
    monkeypatch.setenv(TRAIN_TORCH_ENV, local_torch_version())
    assert _key() == local  # naming this process's own version changes nothing
    monkeypatch.setenv(TRAIN_TORCH_ENV, "0.0.1")
    assert key_torch_version() == "0.0.1" and _key() != local
    monkeypatch.setenv(TRAIN_TORCH_ENV, "  ")
    assert _key() == local  # blank: ignored


def test_two_processes_train_the_same_weights_under_one_key(tmp_path):
    """The key promises that (model, data, train settings, seed) determine the weights: the initial
    weights are seeded too (torch's default generator starts from another seed in each process), so two fresh
    processes train bit-identical weights; another seed trains others."""
    import hashlib

    from tests.conftest import SMOKE, run_bsb

    args = ["model=mlp", "quant=fp32", "backend=onnxruntime", "data=digits", *SMOKE, "benchmark.batch_sizes=[1]"]
    digests = {}
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        run_bsb([*args, f"seed={seed}"], tmp_path / name)
        (weights,) = (tmp_path / name / "cache" / "models").glob("mlp-*.pt")
        digests[name] = (weights.name, hashlib.sha256(weights.read_bytes()).hexdigest())
    assert digests["a"] == digests["b"]
    assert digests["c"][0] != digests["a"][0] and digests["c"][1] != digests["a"][1]
