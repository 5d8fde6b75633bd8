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
