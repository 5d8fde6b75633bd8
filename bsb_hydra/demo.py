"""Side by side: the fp32 model and a quantized variant classify one input.

    python -m bsb_hydra.demo model=lstm "a gorgeous, witty, seductive movie"
    python -m bsb_hydra.demo model=transformer backend=onnxruntime "a gorgeous, witty, seductive movie"
    python -m bsb_hydra.demo model=cnn backend=pytorch index=7        # a test image (default 0)
    python -m bsb_hydra.demo model=lstm quant=dynamic backend=tflite "flat, tedious and overlong"

Arguments of the form ``key=value`` whose key is a key of the grid's config (``model``,
``quant.method``, ``+experiment``, ...) are the grid's Hydra overrides, plus ``index=N``; the rest
is the text (which may hold "="). The
quantized variant is ``quant`` when it is given, else dynamic for text models and static for the
vision models. Uses the cached fp32 model (trained first if absent), builds both artifacts with
the backend's own tools, and runs them in this process: a demo, not a measurement (the grid's
numbers come from fresh worker processes). It prepares the cell as the grid does (bsb_hydra/steps.py:
``prepare``): every model kind and data option of the grid works here, and a model whose outputs
are not a classifier's is refused in one line."""
from __future__ import annotations

import os
import re
import sys
import tempfile
import time
from pathlib import Path
from typing import List, Optional, Tuple

import numpy as np

CONF = Path(__file__).resolve().parents[1] / "conf"


def compose(overrides):
    from hydra import compose as hydra_compose, initialize_config_dir
    from omegaconf import open_dict

    from bsb_hydra.config import register_configs

    register_configs()
    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        cfg = hydra_compose("config", overrides=list(overrides))
    with open_dict(cfg):
        cfg.paths.root = os.getcwd()
    return cfg


def softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max())
    return e / e.sum()


# The variants the demo builds: one artifact from the fp32 model and calibration samples. auto
# searches layers over a selection subset and fake_quant is simulated (no deployable artifact):
# both belong to the grid.
SCHEMES = ("fp32", "fp16", "dynamic", "static", "qat", "int4_weight_only")
_KEY = re.compile(r"[+~]{0,2}([A-Za-z_]\w*)(\.[A-Za-z_]\w*)*")


class DemoError(ValueError):
    """Bad demo input: the message names the value and what is allowed."""


def split_args(argv) -> Tuple[List[str], Optional[str], str]:
    """(the grid's overrides, index=N's value or None, the text). An argument is an override when
    its key (before "=") is a key of the grid's config or hydra; otherwise it is part of the text."""
    import dataclasses

    from bsb_hydra.config import Config

    top = {f.name for f in dataclasses.fields(Config)} | {"hydra", "experiment"}
    overrides, index, words = [], None, []
    for a in argv:
        key, eq, value = a.partition("=")
        m = _KEY.fullmatch(key) if eq else None
        if m and key == "index":
            index = value
        elif m and m.group(1) in top:
            overrides.append(a)
        else:
            words.append(a)
    return overrides, index, " ".join(words)


def main(argv) -> int:
    """The demo, or one line naming what is wrong with its input (exit 2)."""
    from hydra.errors import HydraException

    from bsb_hydra.backends.base import Unsupported
    from bsb_hydra.config import ConfigError, InputError
    from bsb_hydra.data import DataNotFoundError

    try:
        return run(argv)
    except (DemoError, ConfigError, InputError, Unsupported, DataNotFoundError, HydraException) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


def run(argv) -> int:
    from bsb_hydra.backends import BACKENDS, get_backend
    from bsb_hydra.backends.base import Unsupported
    from bsb_hydra.config import validate
    from bsb_hydra.config.data import TextDataConfig
    from bsb_hydra.feeds import materialize
    from bsb_hydra.steps import build_artifact, prepare

    overrides, index_text, text = split_args(argv)
    try:
        index = int(index_text if index_text is not None else 0)
    except ValueError:
        raise DemoError(f"index={index_text!r} is not allowed: give the number of a test image (0, 1, ...)") from None
    quant_given = any(a.startswith("quant=") for a in overrides)
    cfg = validate(compose(overrides))
    is_text = isinstance(cfg.data, TextDataConfig)  # a text to classify; else a test sample (index=N)
    if not quant_given:
        cfg = validate(compose(overrides + [f"quant={'dynamic' if is_text else 'static'}"]))
    scheme = cfg.quant.scheme.value
    if scheme not in SCHEMES:
        raise DemoError(f"quant={scheme} is not shown by the demo: use one of {', '.join(SCHEMES)} (auto and "
                        f"fake_quant run in the grid: python -m bsb_hydra quant={scheme} ...)")
    if is_text and not text.strip():
        raise DemoError('give a text to classify, e.g. python -m bsb_hydra.demo model=lstm "a witty movie"')
    if not is_text and index < 0:
        raise DemoError(f"index={index} is not allowed: give the number of a test image (0, 1, ...)")
    reason = get_backend(cfg.backend.name).unsupported_reason(cfg)
    if reason:
        raise Unsupported(reason)

    # the grid's own preparation (bsb_hydra/steps.py): the data fitted to the model (data.resize,
    # data.mean, data.std), the fp32 model from its cache, checkpoint or file, the task from a probe
    work = Path(tempfile.mkdtemp(prefix="bsb_demo_"))
    cell = prepare(cfg, work)
    ds, backend, ctx = cell.ds, cell.backend, cell.ctx
    if cell.task.name != "classification":
        raise DemoError(f"model={cfg.model.name}'s outputs are task={cell.task.name} ({cell.task.describe()}): the demo "
                        "shows a classifier's label and confidence; measure this model in the grid (python -m bsb_hydra ...)")
    if is_text:
        x = ds.vocab.encode(text, cfg.data.seq_len)[None, :]
        shown = f"text: {text!r} ({int((x != 0).sum())} tokens, seq_len {cfg.data.seq_len})"
        specs = cfg.model.input_specs()
        if specs and len(specs) > 1:  # every input the tokenizer gives (model=hf model.feed=tokenizer)
            import dataclasses

            from bsb_hydra.data.text import as_model_inputs

            x = as_model_inputs(dataclasses.replace(ds, x_train=x, x_test=x), specs).x_test
    else:
        n = len(ds.x_test)
        if not 0 <= index < n:
            raise DemoError(f"index={index} is out of range: the test split of {ds.name} has {n} samples "
                            f"(0 to {n - 1})")
        x = materialize(ds.x_test[index:index + 1])
        truth = ds.class_names[int(ds.y_test[index])] if ds.labelled and ds.class_names else "none"
        shown = f"test image #{index} of {ds.name} (true label: {truth})"
    arts = {"fp32": build_artifact(backend, "fp32", ctx, work / f"fp32{backend.suffix}")}
    if scheme != "fp32":
        arts[scheme] = build_artifact(backend, scheme, ctx, work / f"{scheme}{backend.suffix}")

    runner_cls = BACKENDS.runner(cfg.backend.name)
    print(f"\n{cfg.model.name} on {cfg.backend.name}, {shown}")
    print(f"{'variant':<10} {'label':<14} {'confidence':>10} {'p50 ms':>9} {'size KiB':>9}")
    for name, art in arts.items():
        runner = runner_cls(str(art.path), cfg.device.threads, art.input_dtype,
                            backend.runner_settings(cfg, cell.engine))
        prepared = runner.prepare(x)
        for _ in range(10):
            out = runner.run(prepared)
        times = []
        for _ in range(50):
            t0 = time.perf_counter()
            out = runner.run(prepared)
            times.append((time.perf_counter() - t0) * 1000)
        p = softmax(runner.to_numpy(out)[0])
        label = ds.class_names[int(p.argmax())] if ds.class_names else str(int(p.argmax()))
        print(f"{name:<10} {label:<14} {p.max():>10.3f} {np.median(times):>9.3f} "
              f"{art.size_bytes / 1024:>9.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
