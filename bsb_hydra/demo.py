"""Side by side: the fp32 model and a quantized variant classify one input.

    python -m bsb_hydra.demo model=lstm "a gorgeous, witty, seductive movie"
    python -m bsb_hydra.demo model=transformer backend=onnxruntime "a gorgeous, witty, seductive movie"
    python -m bsb_hydra.demo model=cnn backend=pytorch index=7        # a test image (default 0)
    python -m bsb_hydra.demo model=lstm quant=dynamic backend=tflite "flat, tedious and overlong"

Arguments with ``=`` are the grid's Hydra overrides (plus ``index=N``); the rest is the text. The
quantized variant is ``quant`` when it is given, else dynamic for text models and static for the
vision models. Uses the cached fp32 model (trained first if absent), builds both artifacts with
the backend's own tools, and runs them in this process: a demo, not a measurement (the grid's
numbers come from fresh worker processes)."""
from __future__ import annotations

import os
import sys
import tempfile
import time
from pathlib import Path

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


def main(argv) -> int:
    from bsb_hydra.backends import get_backend
    from bsb_hydra.backends.base import BuildContext, Unsupported
    from bsb_hydra.config import validate
    from bsb_hydra.data import calibration_indices, load_dataset
    from bsb_hydra.sysinfo import system_info, torch_engine
    from bsb_hydra.train import get_fp32_model

    overrides = [a for a in argv if "=" in a and not a.startswith("index=")]
    index = int(next((a.split("=", 1)[1] for a in argv if a.startswith("index=")), 0))
    text = " ".join(a for a in argv if "=" not in a)
    quant_given = any(a.startswith("quant=") for a in overrides)
    cfg = validate(compose(overrides))
    is_text = cfg.model.family != "vision"
    if not quant_given:
        cfg = validate(compose(overrides + [f"quant={'dynamic' if is_text else 'static'}"]))
    scheme = cfg.quant.scheme.value
    backend = get_backend(cfg.backend.name)
    reason = backend.unsupported_reason(cfg)
    if reason:
        raise Unsupported(reason)

    ds = load_dataset(cfg.data, cfg.seed)
    if is_text:
        if not text:
            raise SystemExit('give a text to classify, e.g. python -m bsb_hydra.demo model=lstm "a witty movie"')
        x = ds.vocab.encode(text, cfg.data.seq_len)[None, :]
        shown = f"text: {text!r} ({int((x != 0).sum())} tokens, seq_len {cfg.data.seq_len})"
    else:
        if not 0 <= index < len(ds.y_test):
            raise SystemExit(f"index={index} is out of range: the test split has {len(ds.y_test)} samples")
        x = ds.x_test[index:index + 1]
        shown = f"test image #{index} of {ds.name} (true label: {ds.class_names[ds.y_test[index]]})"
    fp32 = get_fp32_model(cfg, ds, cfg.paths.cache_dir)
    info = system_info()
    idx = calibration_indices(ds, cfg.quant.samples, cfg.seed) if scheme in ("static", "qat") else None
    work = Path(tempfile.mkdtemp(prefix="bsb_demo_"))
    ctx = BuildContext(fp32.module, ds.x_train[:1].copy(), ds.x_train[idx] if idx is not None else None, cfg,
                       torch_engine(cfg.device.torch_engine, info["arch"]), info["arch"], info["isa"], work,
                       data=ds, calibration_indices=idx)
    arts = {"fp32": backend.build("fp32", ctx, work / f"fp32{backend.suffix}")}
    if scheme != "fp32":
        arts[scheme] = backend.build(scheme, ctx, work / f"{scheme}{backend.suffix}")

    import importlib

    runner_cls = importlib.import_module(f"bsb_hydra.backends.{cfg.backend.name}").RUNNER
    print(f"\n{cfg.model.name} on {cfg.backend.name}, {shown}")
    print(f"{'variant':<10} {'label':<14} {'confidence':>10} {'p50 ms':>9} {'size KiB':>9}")
    for name, art in arts.items():
        runner = runner_cls(str(art.path), cfg.device.threads, art.input_dtype, backend.runner_settings(cfg, ctx.engine))
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
              f"{os.path.getsize(art.path) / 1024:>9.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
