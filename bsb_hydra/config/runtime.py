"""Schemas of the backend and device groups (conf/backend, conf/device)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, List, Optional

from omegaconf import MISSING

from bsb_hydra.config.base import ConfigError, positive as _positive


@dataclass
class BackendConfig:
    name: str = MISSING


@dataclass
class PytorchBackendConfig(BackendConfig):
    name: str = "pytorch"
    # Float artifacts (fp32, fp16, dynamic) of models with 2-D convolutions run in channels_last
    # (NHWC) memory: weights stored so, and the NCHW input reordered inside the artifact, so the
    # reorder is timed as every runtime's is. oneDNN's NCHW fp32 conv path was 1.25x-1.37x (resnet18)
    # and 2.5x (mobilenet_v2) slower on an AMX Xeon at 2 threads, b1 and b8. Int8 (torch.ao) kernels
    # reorder themselves: not affected.
    channels_last: bool = True
    # The fp32 / fp16 artifact's form: torchscript (traced and frozen) or aoti (torch.export ->
    # AOTInductor package, a compiled .pt2 with a dynamic batch, frozen weights; loaded with
    # torch._inductor.aoti_load_package, no model code needed). Int8 follows backend.flow.
    export: str = "torchscript"
    # How static, qat, dynamic and auto are built. pt2e: torchao's PyTorch 2 Export flow (static/qat:
    # torch.export -> prepare_pt2e / prepare_qat_pt2e with the X86 (ARM on aarch64) Inductor
    # quantizer -> convert_pt2e; dynamic: torchao's Int8DynamicActivationInt8WeightConfig on Linear),
    # each compiled to an AOTInductor package (bsb_hydra/backends/pt2e.py). fx: torch.ao's FX graph
    # mode and eager mode into TorchScript (deprecated in torch 2.14, the only flow before
    # 2026-12-06): the LSTM's and the transformer's static and QAT, the LSTM's dynamic int8 LSTM and
    # the embeddings' int8 tables need it; under pt2e those cells end unsupported with the reason.
    flow: str = "pt2e"
    # Static int8 (and quant=auto): the output range of an op that only a ReLU6 (or hardtanh) reads is
    # the clip's, [0, 6], as ORT and TFLite quantize it; torch.ao's x86 config observed the unclipped
    # conv output; the folded clip, the identity on its int8 input then, leaves the graph.
    # torchvision mobilenet_v2 at 224 px (2000 test images, AMX Xeon, 2 threads): -2.55 -> -0.25 pp,
    # top-1 agreement with fp32 82.6% -> 94.4%, b1 p50 3.03 -> 2.45 ms. false = torch.ao's own ranges
    # (before 2026-12-04). FX only: PT2E's X86 recipe quantizes a conv's output after its fused
    # ReLU6, so the clip's range is what it observes.
    fold_relu6: bool = True

    EXPORTS: ClassVar[tuple] = ("torchscript", "aoti")
    FLOWS: ClassVar[tuple] = ("pt2e", "fx")

    def __post_init__(self) -> None:
        if self.export not in self.EXPORTS:
            raise ConfigError(f"backend.export={self.export!r} is not allowed: use one of {', '.join(self.EXPORTS)}")
        if self.flow not in self.FLOWS:
            raise ConfigError(f"backend.flow={self.flow!r} is not allowed: use one of {', '.join(self.FLOWS)}")


@dataclass
class OnnxruntimeBackendConfig(BackendConfig):
    name: str = "onnxruntime"
    opset: int = 18
    # ORT graph optimisation level for the measured session: disable | basic | extended | all
    graph_optimization: str = "all"
    # quant=dynamic on a transformer (BERT encoder): quantize the graph of ORT's transformer optimizer
    # (fused Attention -> QAttention, EmbedLayerNormalization -> QEmbedLayerNormalization), ORT's own
    # recipe. MiniLM-L6, seq 128, AMX Xeon, 2 threads: b1 10-12% faster than unfused (8.0-8.3 vs
    # 9.0-9.4 ms), b8 a tie, 47 MB less RSS, the same accuracy. false = the unfused graph (the only
    # one before 2026-12-04). No effect on other cells.
    transformer_optimizer: bool = True

    def __post_init__(self) -> None:
        allowed = ("disable", "basic", "extended", "all")
        if self.graph_optimization not in allowed:
            raise ConfigError(
                f"backend.graph_optimization={self.graph_optimization!r} is not allowed: use one of {allowed}"
            )
        if not 13 <= self.opset <= 21:
            raise ConfigError(f"backend.opset={self.opset} is not allowed: use 13..21")


@dataclass
class TfliteBackendConfig(BackendConfig):
    name: str = "tflite"
    # Full-integer schemes (static, qat): int8 model input and output instead of float ones. The
    # worker quantizes inputs with the model's own scale before the clock starts.
    int8_io: bool = False
    # Run through LiteRT's XNNPACK delegate (the default CPU path); false = the builtin kernels.
    xnnpack: bool = True
    # LiteRT's experimental_default_delegate_latest_features: the default XNNPACK delegate may enable
    # every flag-protected feature (e.g. its dynamically quantized kernels for dynamic-range models).
    xnnpack_latest_features: bool = False
    # How the .tflite is made: keras_twin (the built-in models' Keras twins + TensorFlow's converter),
    # litert_torch (litert-torch converts the torch model, ai-edge-quantizer quantizes it), or auto:
    # the twin where one exists (mlp, cnn, mobilenet, lstm), litert_torch for every other model.
    converter: str = "auto"

    CONVERTERS: ClassVar[tuple] = ("auto", "keras_twin", "litert_torch")

    def __post_init__(self) -> None:
        if self.xnnpack_latest_features and not self.xnnpack:
            raise ConfigError("backend.xnnpack_latest_features=true is not allowed with backend.xnnpack=false: "
                              "the features are XNNPACK's (valid: xnnpack=true, or latest_features=false)")
        if self.converter not in self.CONVERTERS:
            raise ConfigError(f"backend.converter={self.converter!r} is not allowed: use one of "
                              f"{', '.join(self.CONVERTERS)}")


# --------------------------------------------------------------------------------------- device
# The normalized ISA feature names of bsb_hydra.sysinfo (the `isa` tag).
ISA_FEATURES = frozenset({"avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx", "amx_int8", "avx512_bf16",
                          "avx512_fp16", "neon", "dotprod", "i8mm", "sve", "sve2", "bf16", "fp16"})


@dataclass
class DeviceConfig:
    name: str = "local"
    # The architecture this device expects (x86_64 | aarch64); null = whatever this machine is.
    expected_arch: Optional[str] = None
    # Threads for every runtime (torch intra-op, ORT intra-op): recorded on every run.
    threads: int = 1
    # PyTorch quantized engine: auto = x86 on x86_64, qnnpack on aarch64.
    torch_engine: str = "auto"
    # ISA features the named device has (names as in the `isa` tag: neon, dotprod, i8mm, sve, bf16,
    # avx2, avx512_vnni, amx ...). A machine lacking one is not that device: the job ends unsupported.
    expected_isa: List[str] = field(default_factory=list)
    # CPUs the benchmark worker is pinned to (os.sched_setaffinity), e.g. [2] to keep it off the core
    # that serves interrupts; null = not pinned. Stamped as the tag `cpus_pinned`.
    core_pinning: Optional[List[int]] = None

    def __post_init__(self) -> None:
        _positive("device.threads", self.threads)
        if self.expected_arch not in (None, "x86_64", "aarch64"):
            raise ConfigError(f"device.expected_arch={self.expected_arch!r} is not allowed: use x86_64, aarch64 or null")
        allowed = ("auto", "x86", "fbgemm", "qnnpack", "onednn")
        if self.torch_engine not in allowed:
            raise ConfigError(f"device.torch_engine={self.torch_engine!r} is not allowed: use one of {allowed}")
        known = ISA_FEATURES
        for f in self.expected_isa:
            if f not in known:
                raise ConfigError(f"device.expected_isa contains {f!r}: use feature names from {sorted(known)}")
        if self.core_pinning is not None:
            if not self.core_pinning:
                raise ConfigError("device.core_pinning=[] is not allowed: give CPU numbers or null")
            for i, c in enumerate(self.core_pinning):
                if c < 0:
                    raise ConfigError(f"device.core_pinning[{i}]={c} is not allowed: CPU numbers are >= 0")
            if len(self.core_pinning) < self.threads:
                raise ConfigError(f"device.core_pinning={list(self.core_pinning)} has fewer CPUs than "
                                  f"device.threads={self.threads}")

