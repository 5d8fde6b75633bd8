"""backend=pytorch's config schema (conf/backend/pytorch.yaml names it: ``/schema/backend/pytorch``),
registered with the backend in the package's __init__."""
from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from bsb_hydra.config.base import ConfigError
from bsb_hydra.config.runtime import BackendConfig


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
    # each compiled to an AOTInductor package (bsb_hydra/backends/pytorch/pt2e.py). fx: torch.ao's FX graph
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
    # An AOTInductor package's batch (PT2E and torchao int8, backend.export=aoti). static: one package
    # per batch size (batch 1 and each of benchmark.batch_sizes, each exported at that batch; the
    # batch-1 file is the size logged; evaluation runs in chunks of the largest). dynamic: one package
    # for batches 1..4096. With a symbolic batch Inductor prepacks the oneDNN weights without the
    # input's shape: torchvision mobilenet_v2 PT2E int8 ran 12.5 ms at b1 against 4.5 ms static
    # (1 thread, AVX-512 VNNI); resnet18 about equal.
    aoti_batch: str = "static"

    EXPORTS: ClassVar[tuple] = ("torchscript", "aoti")
    FLOWS: ClassVar[tuple] = ("pt2e", "fx")
    AOTI_BATCHES: ClassVar[tuple] = ("static", "dynamic")

    def __post_init__(self) -> None:
        if self.export not in self.EXPORTS:
            raise ConfigError(f"backend.export={self.export!r} is not allowed: use one of {', '.join(self.EXPORTS)}")
        if self.flow not in self.FLOWS:
            raise ConfigError(f"backend.flow={self.flow!r} is not allowed: use one of {', '.join(self.FLOWS)}")
        if self.aoti_batch not in self.AOTI_BATCHES:
            raise ConfigError(f"backend.aoti_batch={self.aoti_batch!r} is not allowed: use one of "
                              f"{', '.join(self.AOTI_BATCHES)}")

