"""``validate(cfg)``: the composed config turned into the schema dataclasses (each ``__post_init__``
range check runs), then the checks across groups. Before any data is loaded or any model trained."""
from __future__ import annotations

import copy

from omegaconf import DictConfig, OmegaConf, open_dict

from bsb_hydra.config.base import ConfigError, check_finite
from bsb_hydra.config.run import Config
from bsb_hydra.config.store import model_schema


def validate(cfg: DictConfig) -> Config:
    """Resolve and instantiate every dataclass (running each __post_init__), or raise ConfigError."""
    if "hydra" in cfg:  # compose(..., return_hydra_config=True) in tests
        cfg = copy.deepcopy(cfg)
        with open_dict(cfg):
            cfg.pop("hydra")
    _check_model_reads_data(cfg)  # before resolving: a text model interpolates data.vocab_size
    check_finite(OmegaConf.to_container(cfg, resolve=True))
    obj = OmegaConf.to_object(cfg)
    assert isinstance(obj, Config)
    _cross_check(obj)
    return obj


def _check_model_reads_data(cfg: DictConfig) -> None:
    schema = model_schema(cfg.model.get("name"))
    if schema is None or schema.source_kind in ("onnx", "torch"):  # a user's model: its shape is checked per cell
        return
    text_model = schema.family in ("recurrent", "transformer")
    text_data = "tokenizer" in cfg.data
    if text_model != text_data:
        kind = "text" if text_model else "image"
        raise ConfigError(f"model={cfg.model.name} reads {kind} data, data={cfg.data.name} is not {kind} data: use "
                          + ("rt_snippets, imdb or sst2" if text_model else "an image set (fashion_mnist, mnist, ...)"))


def _cross_check(c: Config) -> None:
    """Checks across groups, on the validated config: a model and the tokenizer it needs."""
    tokenizer = getattr(c.model, "tokenizer", None)  # model=onnx model.tokenizer=DIR: the export's own
    if tokenizer:
        if not hasattr(c.data, "tokenizer"):
            raise ConfigError(f"model.tokenizer={tokenizer!r} tokenizes texts, and data={c.data.name} is not text data: "
                              "use a text set (rt_snippets, imdb, sst2, text_csv) or leave model.tokenizer unset")
        c.data.tokenizer, c.data.tokenizer_path = "hf", tokenizer
    elif (type(c.model).source_kind in ("onnx", "torch") and getattr(c.data, "tokenizer", None) == "word"
          and not c.model.needs_training(True)):
        raise ConfigError(f"model={c.model.name} is a trained file, and data.tokenizer=word builds a vocabulary from "
                          "this data's training texts, whose ids mean nothing to it: give the tokenizer it was "
                          "trained with (model.tokenizer=DIR for a Hugging Face folder, or data.tokenizer=minilm)")
    needs = getattr(c.model, "needs_tokenizer", None)
    if needs and c.data.tokenizer != needs:
        raise ConfigError(f"model={c.model.name} needs data.tokenizer={needs} (its pretrained vocabulary), "
                          f"not data.tokenizer={c.data.tokenizer}")
    if needs == "hf" and not c.data.tokenizer_path:  # model=hf: the folder's own tokenizer
        c.data.tokenizer_path = c.model.path
