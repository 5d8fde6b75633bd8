#!/usr/bin/env python
"""The control for QAT curves: does the fine-tuning itself, without any rounding, change accuracy?

QAT (quant=qat, quant=fake_quant quant.qat=true) fine-tunes the cached fp32 model for quant.epochs
at quant.lr. Part of any gain it shows over the fp32 model is that extra training. This script
fine-tunes the same fp32 model (batch-norm folded, as the simulated cells are) with the same loop
and settings, no rounding, and prints both test accuracies.

    python scripts/qat_control.py                     # mlp and cnn, the quant=fake_quant defaults
    python scripts/qat_control.py model=cnn quant.epochs=2
"""
from __future__ import annotations

import copy
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def main(overrides) -> None:
    import torch
    from hydra import compose, initialize_config_dir

    from bsb_hydra.backends.pytorch.build import _bn_folded
    from bsb_hydra.config import CONF_DIR, register_configs, validate
    from bsb_hydra.data import load_dataset
    from bsb_hydra.train import get_fp32_model, train_model

    register_configs()
    models = [o.split("=", 1)[1] for o in overrides if o.startswith("model=")] or ["mlp", "cnn"]
    rest = [o for o in overrides if not o.startswith("model=")]
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        for model in models:
            raw = compose("config", [f"model={model}", "quant=fake_quant", "quant.qat=true", *rest])
            raw.paths.root = str(ROOT)  # what ${hydra:runtime.cwd} is in a run from the project
            cfg = validate(raw)
            ds = load_dataset(cfg.data, cfg.seed)
            base = _bn_folded(get_fp32_model(cfg, ds, cfg.paths.cache_dir).module)

            def accuracy(m) -> float:
                with torch.inference_mode():
                    pred = np.concatenate([m(torch.from_numpy(ds.x_test[i:i + 512])).argmax(1).numpy()
                                           for i in range(0, len(ds.x_test), 512)])
                return float((pred == ds.y_test).mean())

            tuned = copy.deepcopy(base)
            train_model(tuned, ds, cfg.quant, cfg.seed, label="control (no rounding)")
            print(f"{model} on {cfg.data.name}: fp32 {100 * accuracy(base):.2f}%; fine-tuned {cfg.quant.epochs} "
                  f"epoch(s) at lr {cfg.quant.lr:g} without rounding: {100 * accuracy(tuned):.2f}%", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
