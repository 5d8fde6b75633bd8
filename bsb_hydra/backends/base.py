"""The backend interface, and the support matrix it implies."""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import numpy as np


# quant=fake_quant is simulated in PyTorch float: the rounding does not depend on a runtime.
FAKE_QUANT_ELSEWHERE = ("simulated N-bit rounding is evaluated in PyTorch float (no runtime has kernels for most "
                        "of these widths, and the rounding does not depend on one): run it with backend=pytorch")


class Unsupported(Exception):
    """This (model, scheme, backend, device) cell cannot be expressed; the message says why."""


@dataclass
class BuildContext:
    model: Any  # fp32 torch.nn.Module in eval mode
    example: np.ndarray  # one real input, batch 1
    calibration: Optional[np.ndarray]  # real training samples, for static and qat schemes
    cfg: Any  # the validated Config
    engine: str  # PyTorch quantized engine (x86 | qnnpack | ...)
    arch: str  # x86_64 | aarch64, of the machine building (and measuring) the artifact
    isa: str
    workdir: Path
    data: Any = None  # the Dataset (QAT fine-tunes on its training split)
    calibration_indices: Optional[np.ndarray] = None  # where ``calibration`` sits in x_train
    source_onnx: Optional[Path] = None  # model=onnx: the user's fp32 file (``model`` is None then)
    weights_sha256: str = ""  # of the fp32 weights (or the user's model file); "" = no fp32 artifact cache

    @property
    def input_dtype(self) -> str:
        """What the model takes: float32 images, or int64 token ids for the sequence models."""
        return str(self.example.dtype)


def copy_artifact(src: Path, dst: Path) -> None:
    """``src`` copied to ``dst`` with the files of its other batch sizes: an artifact with one file
    per batch size (``SRC.batches.json``: a PyTorch AOTInductor package per batch, a litert-torch
    .tflite per batch) keeps them under ``dst``'s name (``trial2.b8.pt2`` -> ``auto.b8.pt2``) and a
    manifest naming them; without them its runner would take the batch-1 file for every batch."""
    import json
    import shutil

    src, dst = Path(src), Path(dst)
    shutil.copyfile(src, dst)
    manifest = Path(str(src) + ".batches.json")
    if not manifest.is_file():
        return
    old, new = src.name.split(".")[0], dst.name.split(".")[0]
    names = {}
    for b, name in json.loads(manifest.read_text()).items():
        target = dst if name == src.name else dst.parent / (new + name[len(old):])
        if target != dst:
            shutil.copyfile(src.parent / name, target)
        names[b] = target.name
    Path(str(dst) + ".batches.json").write_text(json.dumps(names))


@dataclass
class Artifact:
    path: Path
    # How the runner must feed it: the worker converts inputs to this dtype before the clock starts.
    input_dtype: str = "float32"
    # Facts about the conversion, logged as tags/params (quantized layer counts, notes).
    info: Dict[str, str] = field(default_factory=dict)
    # Per-step curves of the conversion (QAT's fine-tuning loss), logged as MLflow metric history.
    curves: Dict[str, List[float]] = field(default_factory=dict)
    # Scalars of the conversion (quant=auto's trial counts), logged as metrics.
    metrics: Dict[str, float] = field(default_factory=dict)
    # Reports of the conversion (quant=auto's sensitivity table and plot), logged under analysis/.
    files: List[Path] = field(default_factory=list)
    # A simulated, non-deployable model (quant=fake_quant): (theoretical packed bytes, fp32 bytes).
    # Its latency and memory are not measured; its size is this, tagged size_kind=theoretical.
    theoretical_size: Optional[Tuple[int, int]] = None
    # Files the deployable artifact needs beside ``path`` (OpenVINO IR's .bin beside its .xml): counted
    # in its size, logged with it, kept with it by the fp32 artifact cache.
    companions: List[Path] = field(default_factory=list)

    @property
    def simulated(self) -> bool:
        return self.theoretical_size is not None

    @property
    def size_bytes(self) -> int:
        """The deployable artifact's bytes on disk: its file and its companions."""
        import os

        return sum(os.path.getsize(p) for p in (self.path, *self.companions))


class Backend:
    name: str = ""
    suffix: str = ""

    # Schemes this backend cannot apply to a model family (ModelConfig.family), with the reason.
    family_unsupported: Dict[str, Dict[str, str]] = {}
    # Schemes this backend has no build for, with the reason (the generic one otherwise).
    no_scheme_reasons: Dict[str, str] = {"fake_quant": FAKE_QUANT_ELSEWHERE}
    # Why quant=auto is not available, for a backend without the mixed-precision hooks (and why
    # quant.analyze is not, for one whose quant=auto is its own build_auto).
    no_auto_reason: str = "this backend cannot keep chosen layers in float"
    # quant.fallback values a backend with the quant=auto hooks can keep sensitive layers in, and
    # why the others are not offered.
    mixed_fallbacks: Tuple[str, ...] = ("fp32",)
    no_fp16_fallback_reason: str = "it keeps sensitive layers in fp32 only"
    # Whether this backend measures a user's ONNX file (model=onnx) as it is; the others need a torch module.
    takes_onnx_file: bool = False
    no_onnx_reason: str = "it needs a PyTorch model to run or convert (nothing here converts ONNX back to torch)"
    # model=keras and model=tflite (bsb_hydra/models/keras.py, tflite.py): onnxruntime measures their
    # tf2onnx conversion, tflite converts the Keras model or measures the .tflite file
    takes_keras_file: bool = False
    no_keras_reason: str = "runs PyTorch models, and a TensorFlow model has no torch module"

    # The fp32 artifact cache (bsb_hydra/artifact_cache.py): backend config keys the fp32 artifact
    # does not depend on (only the runner, or only other schemes, read them), and the packages
    # whose versions it does.
    fp32_independent: Tuple[str, ...] = ()
    fp32_packages: Tuple[str, ...] = ()  # beyond torch, torchvision and transformers

    def fp32_cache_parts(self, cfg) -> Dict[str, Any]:
        """The part of the fp32 artifact's cache key that comes from this backend."""
        from bsb_hydra.train import plain_dict

        return {k: v for k, v in plain_dict(cfg.backend).items() if k not in self.fp32_independent}

    def fp32_cached(self, ctx: BuildContext, art: Artifact) -> None:
        """The cell's fp32 artifact came from the cache (``art``, in ctx.workdir): a backend whose
        other builds start from its fp32 conversion takes it from there."""

    def unsupported_reason(self, cfg) -> Optional[str]:
        """Why this backend cannot run cfg's scheme (None = it can). Checked before any work."""
        scheme = cfg.quant.scheme.value
        kind = getattr(type(cfg.model), "source_kind", "")
        keras = kind in ("keras", "tflite")
        if keras and not self.takes_keras_file:
            return (f"model={cfg.model.name} is a {'Keras model' if kind == 'keras' else '.tflite file'}: "
                    f"backend={self.name} {self.no_keras_reason}; run it on backend=onnxruntime or backend=tflite")
        if not keras and not getattr(cfg.model, "torch_module", True) and not self.takes_onnx_file:
            return (f"model={cfg.model.name} is an ONNX file: backend={self.name} {self.no_onnx_reason}; run it on "
                    "backend=onnxruntime")
        given = cfg.model.scheme_reason(self.name, scheme)
        if given:
            return given
        if scheme != "auto" and not hasattr(self, f"build_{scheme}"):
            return f"quant={scheme} on {self.name}: {self.no_scheme_reasons.get(scheme, 'no such scheme here')}"
        reasons = self.family_unsupported.get(cfg.model.family, {})
        if scheme == "static" and getattr(cfg.quant, "analyze", False):  # the analysis needs auto's hooks
            if type(self).mixed_layers is Backend.mixed_layers:
                return f"quant.analyze=true on {self.name}: {self.no_auto_reason}"
            if "auto" in reasons:
                return f"quant.analyze=true, model={cfg.model.name} on {self.name}: {reasons['auto']}"
        if scheme == "auto" and not self.has_auto():
            return f"quant=auto on {self.name}: {self.no_auto_reason}"
        if scheme == "auto" and cfg.quant.fallback.value not in self.mixed_fallbacks:
            return (f"quant.fallback={cfg.quant.fallback.value} on {self.name}: {self.no_fp16_fallback_reason} "
                    f"(valid here: {', '.join(self.mixed_fallbacks)})")
        if scheme in reasons:
            return f"model={cfg.model.name}, quant={scheme} on {self.name}: {reasons[scheme]}"
        return None

    def task_reason(self, cfg, task) -> Optional[str]:
        """Why this backend cannot measure the model for its task (None = it can). Checked after the
        fp32 probe, before any build: the task and the model's outputs are known then."""
        return None

    def runner_settings(self, cfg, engine: str) -> Dict[str, Any]:
        """What the worker's Runner needs beyond the artifact (engine, optimisation level)."""
        return {}

    def build(self, scheme: str, ctx: BuildContext, out: Path) -> Artifact:
        """The scheme's build, or the model's own file where it already is this cell's artifact
        (ModelConfig.given_artifact: a quantized .tflite measured as it is), copied to ``out``."""
        given = ctx.cfg.model.given_artifact(self.name, scheme)
        if given is not None:
            import shutil

            path, info = given
            shutil.copyfile(path, out)
            return Artifact(Path(out), self.given_input_dtype(Path(out)), dict(info))
        return getattr(self, f"build_{scheme}")(ctx, out)

    def given_input_dtype(self, path: Path) -> str:
        """What a given file takes (int8 model I/O for some .tflite files): float32 unless the backend says."""
        return "float32"

    # quant=auto is build_auto (steps.build_artifact calls it). By default it is bsb_hydra/mixed.py's
    # search, for a backend that can keep chosen layers in float while the rest is static int8: it
    # defines mixed_layers(ctx) -> {name: (float weight, output-channel axis)} and
    # build_mixed(ctx, out, float_layers) -> Artifact. A backend whose toolkit has its own
    # accuracy-aware quantization (openvino: NNCF's quantize_with_accuracy_control) overrides
    # build_auto instead, with the same budget (quant.budget_pp / budget_rel) on the same selection
    # subset (mixed.selection_indices).
    def build_auto(self, ctx: BuildContext, out: Path) -> Artifact:
        """quant=auto's artifact at ``out``: static int8 with the layers that cost accuracy kept float."""
        from bsb_hydra.mixed import build_auto

        return build_auto(self, ctx, out)

    def mixed_layers(self, ctx: BuildContext):
        raise Unsupported(f"backend {self.name} cannot keep chosen layers in float (no mixed-precision hook)")

    def build_mixed(self, ctx: BuildContext, out: Path, float_layers) -> Artifact:
        """The static int8 model with ``float_layers`` (names from mixed_layers) kept in float."""
        raise Unsupported(f"backend {self.name} cannot keep chosen layers in float (no mixed-precision hook)")

    def mixed_logits(self, ctx: BuildContext, float_layers, x: np.ndarray, batch: int) -> Optional[np.ndarray]:
        """The sensitivity analysis's scoring of one variant (the static int8 model with ``float_layers``
        kept float) on ``x``, computed in this process without building the deployable artifact, where the
        backend has a faithful reference of its int8 arithmetic (pytorch: the converted PT2E module run
        eagerly, its quantize/dequantize pairs the rounding the compiled package applies). Default: None,
        and the analysis builds each variant with build_mixed and runs it through the Runner."""
        return None

    def prebuild_mixed(self, ctx: BuildContext, float_sets: List[List[str]]) -> None:
        """Build these mixed models ahead, in one batch (tflite: one TensorFlow start-up for the whole
        sensitivity analysis); build_mixed then finds them. Default: nothing ahead, each built when asked."""

    def layer_activation_sqnr(self, ctx: BuildContext, int8_path: Path, x: np.ndarray) -> Dict[str, Dict[str, float]]:
        """Per layer of the all-int8 model: its output against fp32, and its activation through its own
        int8 grid alone (quant.analyze's table), where the runtime can expose a layer's output. Default:
        none ({}), and the table has weight columns only."""
        return {}

    # The machine's limit (bsb_hydra/bench/peak.py) through this backend's own kernels: one N x N x N
    # matrix product as an fp32 and an int8 artifact built by the backend's own quantizer, and a
    # trivial model for the empty-call floor. A backend without them is left out of the peak.
    peak_kernels: str = ""  # what the artifacts run, for the peak table ("fp32 MatMul | int8 QLinearMatMul")
    # the int8 artifacts' kernels by artifact name (peak_artifacts' keys other than fp32 and floor)
    peak_artifact_kernels: Dict[str, str] = {}

    def peak_artifacts(self, out: Path, size: int, features: int, threads: int = 1) -> Dict[str, Path]:
        """{"fp32": size x size GEMM without bias, "int8..." (one or more int8 builds of it), "floor":
        a features -> features layer}, files in ``out``, each runnable by this backend's Runner.
        ``threads``: the thread count they will run with (a compiled artifact may bake it in)."""
        raise Unsupported(f"backend {self.name} has no peak kernels")

    def peak_settings(self, arch: str) -> Dict[str, Any]:
        """The Runner settings a cell gets by default, for the peak's artifacts."""
        return {}

    def has_auto(self) -> bool:
        """Whether quant=auto runs here: a build_auto of the backend's own, or mixed.py's over its hooks."""
        return type(self).build_auto is not Backend.build_auto or type(self).mixed_layers is not Backend.mixed_layers


class Runner:
    """Loads an artifact and runs it. prepare() happens before the clock; run() is what is timed.

    The benchmark worker imports a backend's package and finds its Runner through the registry
    (BACKENDS.runner(name)): the runner's module imports numpy only at its top level."""

    # What the worker imports before its memory baseline (the runtime itself, no model), e.g. "onnxruntime".
    runtime_module: str = ""
    # The distributions whose versions every run is stamped with (bsb_hydra/sysinfo.py), e.g.
    # ("onnxruntime",): the runtime and what builds for it.
    libraries: Tuple[str, ...] = ()

    def __init__(self, path: str, threads: int, input_dtype: str, settings: Dict[str, Any]) -> None:
        self.path, self.threads, self.input_dtype, self.settings = path, threads, input_dtype, settings

    @classmethod
    def enter_process(cls) -> None:
        """Called once by the benchmark worker after importing the runtime, before any artifact."""

    def prepare(self, x) -> Any:
        """``x``: one array, or a bsb_hydra.feeds.Feeds of named inputs (a model with several)."""
        raise NotImplementedError

    def run(self, prepared: Any) -> Any:
        raise NotImplementedError

    def outputs(self, out: Any) -> List[np.ndarray]:
        """Every output tensor of one call, in the model's output order, as numpy arrays (batch first)."""
        raise NotImplementedError

    def output_names(self) -> List[str]:
        """The outputs' names, in the order of outputs(): the artifact's own where it names them."""
        raise NotImplementedError

    def to_numpy(self, out: Any) -> np.ndarray:
        """The first output as float32: a classifier's logits (quant=auto's search, the demo)."""
        return np.asarray(self.outputs(out)[0], dtype=np.float32)

    def profile(self, prepared: Any, runs: int) -> Dict[str, Any]:
        """``runs`` calls under the runtime's own profiler, summarized by bsb_hydra/bench/profile.py."""
        raise NotImplementedError(f"no profiler for {type(self).__name__}")
