"""backend=tflite's peak kernels (bsb_hydra/bench/peak.py): a Dense layer through TensorFlow's converter,
fp32 and full-integer int8. ``python -m bsb_hydra.backends.tflite.peak OUT SIZE FEATURES`` is the
converter's own process."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Dict

import numpy as np

KERNELS = "fp32 FULLY_CONNECTED | int8 FULLY_CONNECTED (full-integer), XNNPACK"
ARTIFACT_KERNELS = {"int8": "FULLY_CONNECTED int8"}


def peak_artifacts(out: Path, size: int, features: int) -> Dict[str, Path]:
    """TensorFlow's converter in its own process (TensorFlow never enters this one): a Dense layer as
    fp32 and as full-integer int8 (float I/O) FULLY_CONNECTED."""
    env = dict(os.environ, TF_USE_LEGACY_KERAS="1", TF_CPP_MIN_LOG_LEVEL="2")
    proc = subprocess.run([sys.executable, "-m", "bsb_hydra.backends.tflite.peak", str(out), str(size), str(features)],
                          env=env, capture_output=True, text=True, timeout=900)
    if proc.returncode != 0:
        lines = (proc.stderr or proc.stdout).strip().splitlines() or ["no output"]
        raise RuntimeError(f"TFLite conversion exited {proc.returncode}: {lines[-1][:300]}")
    return {name: out / f"{name}.tflite" for name in ("fp32", "int8", "floor")}


def convert(out: Path, size: int, features: int) -> None:
    import tensorflow as tf

    def dense(k: int, n: int, bias: bool):
        model = tf.keras.Sequential([tf.keras.layers.Dense(n, use_bias=bias, input_shape=(k,))])
        return model

    rng = np.random.default_rng(0)
    for name, k, bias, int8 in (("fp32", size, False, False), ("int8", size, False, True),
                                ("floor", features, True, False)):
        conv = tf.lite.TFLiteConverter.from_keras_model(dense(k, k, bias))
        if int8:
            conv.optimizations = [tf.lite.Optimize.DEFAULT]
            conv.representative_dataset = lambda: ([rng.standard_normal((1, k)).astype(np.float32)] for _ in range(8))
            conv.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
        (out / f"{name}.tflite").write_bytes(conv.convert())


if __name__ == "__main__":
    from bsb_hydra.local_state import exit_now

    convert(Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]))
    exit_now(0)  # the parent waits for this exit: TensorFlow's teardown skipped
