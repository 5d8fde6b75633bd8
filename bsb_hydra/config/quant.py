"""Schemas of the quant group (conf/quant/*.yaml): one dataclass per scheme."""
from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import ClassVar, Optional

from omegaconf import MISSING

from bsb_hydra.config.base import ConfigError, positive as _positive


class Scheme(Enum):
    fp32 = "fp32"
    fp16 = "fp16"
    dynamic = "dynamic"
    static = "static"
    qat = "qat"
    auto = "auto"
    int4_weight_only = "int4_weight_only"
    fake_quant = "fake_quant"


class Fallback(Enum):
    fp32 = "fp32"
    fp16 = "fp16"


class Granularity(Enum):
    per_channel = "per_channel"
    per_tensor = "per_tensor"


class CalibrationMethod(Enum):
    minmax = "minmax"
    entropy = "entropy"
    percentile = "percentile"
    histogram = "histogram"


CLASSIFIER_ONLY = "task=classification (it {what}); this cell's task is {task}"


@dataclass
class QuantConfig:
    """What a scheme is, for the steps that depend on it (instead of comparing scheme names): int8
    arithmetic (speedup_vs_peak applies), whether it reads real training samples (calibration), and
    what it needs of the data (labels) and of the task (a classifier's accuracy or loss)."""
    # The scheme (fixed by the option: quant=static is scheme static); the quant tag of each run.
    scheme: Scheme = MISSING
    int8: ClassVar[bool] = False

    def calibrates(self) -> bool:
        return False

    def label_reason(self) -> str:
        """Why this scheme cannot run on unlabelled inputs ('' = it can)."""
        return ""

    def task_reason(self, task: str) -> str:
        """Why this scheme cannot serve ``task`` ('' = it can): QAT fine-tunes with a classifier's
        loss, quant=auto and the sensitivity analysis rank layers by accuracy."""
        return ""


@dataclass
class Fp32Config(QuantConfig):
    scheme: Scheme = Scheme.fp32


@dataclass
class Fp16Config(QuantConfig):
    scheme: Scheme = Scheme.fp16


@dataclass
class DynamicQuantConfig(QuantConfig):
    """int8 weights; activations quantized at run time from their observed range."""
    scheme: Scheme = Scheme.dynamic
    int8: ClassVar[bool] = True
    # Weight scales: one per output channel (per_channel) or one per tensor (per_tensor).
    granularity: Granularity = Granularity.per_tensor
    # Quantize the convolutions' weights too. null = each backend's fast choice: off on onnxruntime
    # (its dynamic conv, DynamicQuantizeLinear + ConvInteger + Cast/Mul, runs an unblocked im2col and
    # GEMM per image and group with nothing fused: measured 4x to 12x slower than fp32, cnn to
    # mobilenet_v2, on AVX2 and AMX CPUs), off on
    # pytorch (torch.ao's quantize_dynamic has no conv), on on tflite's Keras twins (the converter's
    # dynamic-range mode quantizes every weight), and on tflite's litert-torch path every conv but the
    # depthwise ones (their hybrid kernel is off XNNPACK, and per-tensor int8 depthwise weights cost
    # mobilenet_v2 58 pp). true on onnxruntime measures ConvInteger (the size win, the speed loss);
    # true on pytorch and false on a Keras twin are unsupported, with the reason.
    convolutions: Optional[bool] = None


@dataclass
class StaticQuantConfig(QuantConfig):
    """int8 weights and activations; activation ranges calibrated on real TRAINING samples."""
    scheme: Scheme = Scheme.static
    # Weight scales: one per output channel (per_channel) or one per tensor (per_tensor).
    granularity: Granularity = Granularity.per_channel
    # How activation ranges are calibrated: minmax, entropy, percentile or histogram (each backend
    # refuses, with the reason, the ones its quantizer lacks).
    method: CalibrationMethod = CalibrationMethod.minmax
    # Real training samples the ranges are calibrated on (seeded; the indices are logged).
    samples: int = 256
    percentile: float = 99.999  # the range's percentile for method=percentile
    # 7-bit ranges against int8 kernel saturation: activations on pytorch (fbgemm), weights on
    # onnxruntime. null = on for x86 CPUs without VNNI, on both backends (docs/methodology.md).
    reduce_range: Optional[bool] = None
    # Per-layer sensitivity analysis logged with the cell (bsb_hydra/mixed.py; quant=auto always runs
    # it), evaluated on this many training samples disjoint from the calibration samples.
    analyze: bool = False
    eval_samples: int = 1000  # see analyze (and quant=auto's search)

    int8: ClassVar[bool] = True

    def __post_init__(self) -> None:
        _positive("quant.samples", self.samples)
        _positive("quant.eval_samples", self.eval_samples)
        if not 90.0 <= self.percentile <= 100.0:
            raise ConfigError(f"quant.percentile={self.percentile} is not allowed: use 90 <= p <= 100")

    def calibrates(self) -> bool:
        return True

    def label_reason(self) -> str:
        return "quant.analyze=true ranks layers by the accuracy they cost" if self.analyze else ""

    def task_reason(self, task: str) -> str:
        if self.analyze and task != "classification":
            return "quant.analyze=true needs " + CLASSIFIER_ONLY.format(what="ranks layers by accuracy", task=task)
        return ""


@dataclass
class QatQuantConfig(QuantConfig):
    """Quantization-aware training: start from the cached fp32 model, fine-tune with fake
    quantization on the training split, then convert to a real int8 model for the backend."""
    scheme: Scheme = Scheme.qat
    # Weight scales: one per output channel (per_channel) or one per tensor (per_tensor).
    granularity: Granularity = Granularity.per_channel
    # The fine-tuning: epochs over the training split (or limit_samples of it), learning rate, batch.
    epochs: int = 1
    lr: float = 1e-4  # see epochs
    batch_size: int = 128  # see epochs
    # Fine-tune on a seeded subset of this many training samples (smoke runs); null = all of them.
    limit_samples: Optional[int] = None
    # Real training samples for what the converter still calibrates (TFLite's input scale).
    samples: int = 256
    # As for static: 7-bit ranges where int8 kernels can saturate (x86 without VNNI). null = auto.
    reduce_range: Optional[bool] = None

    int8: ClassVar[bool] = True

    def __post_init__(self) -> None:
        _positive("quant.epochs", self.epochs)
        _positive("quant.lr", self.lr)
        _positive("quant.batch_size", self.batch_size)
        _positive("quant.limit_samples", self.limit_samples, allow_none=True)
        _positive("quant.samples", self.samples)

    def calibrates(self) -> bool:
        return True

    def label_reason(self) -> str:
        return "quant=qat fine-tunes on labelled training samples"

    def task_reason(self, task: str) -> str:
        if task != "classification":
            return "quant=qat needs " + CLASSIFIER_ONLY.format(what="fine-tunes with a classifier's cross-entropy loss",
                                                               task=task)
        return ""


@dataclass
class Int4WeightOnlyQuantConfig(QuantConfig):
    """Weights of the MatMul/Gemm layers (and, on onnxruntime, embedding tables) to `bits` bits in
    blocks of `block_size` along the input dimension, each block with its own scale (and zero point
    unless symmetric); activations stay float. A deployable model run by real low-bit kernels
    (ORT's MatMulNBits / GatherBlockQuantized), measured like every cell."""
    scheme: Scheme = Scheme.int4_weight_only
    bits: int = 4  # 2, 4 or 8 (each backend refuses the widths its kernels lack)
    block_size: int = 32  # weights per block along the input dimension, each block with its own scale
    symmetric: bool = False  # true: no zero points
    # ORT's MatMulNBits accuracy_level: 0 = unset (the kernel's default, fp32 compute), 1 fp32,
    # 2 fp16, 3 bf16, 4 int8 (activations quantized per block at run time).
    accuracy_level: int = 0

    BITS: ClassVar[tuple] = (2, 4, 8)

    def __post_init__(self) -> None:
        if self.bits not in self.BITS:
            raise ConfigError(f"quant.bits={self.bits} is not allowed for int4_weight_only: valid values are "
                              f"{', '.join(map(str, self.BITS))} (the widths of ORT's block-wise kernels)")
        if self.block_size < 16 or self.block_size & (self.block_size - 1):
            raise ConfigError(f"quant.block_size={self.block_size} is not allowed: use a power of two >= 16 "
                              "(e.g. 32, 64, 128)")
        if self.accuracy_level not in (0, 1, 2, 3, 4):
            raise ConfigError(f"quant.accuracy_level={self.accuracy_level} is not allowed: valid values are "
                              "0 (unset), 1 (fp32), 2 (fp16), 3 (bf16), 4 (int8)")


@dataclass
class FakeQuantConfig(QuantConfig):
    """SIMULATED N-bit quantization (bsb_hydra/fake_quant.py), evaluated in float: weights of the
    Conv, Linear and Embedding layers (and, with activations=true, their inputs) rounded to `bits`
    bits. Not deployable: no latency is measured, the size is the theoretical packed size (tag
    size_kind=theoretical), and the report keeps these cells off every frontier. qat=true fine-tunes
    at N bits first (epochs, lr, batch_size, limit_samples as for quant=qat)."""
    scheme: Scheme = Scheme.fake_quant
    bits: int = 4  # 2 to 8
    # Weights: one scale per output channel (per embedding row) or one per tensor; symmetric.
    granularity: Granularity = Granularity.per_channel
    activations: bool = False  # also round the layers' inputs to `bits` bits
    # Real training samples that calibrate the activation ranges (activations=true).
    samples: int = 256
    qat: bool = False  # fine-tune at `bits` bits first (epochs, lr, batch_size, limit_samples)
    epochs: int = 1  # as for quant=qat (qat=true)
    lr: float = 1e-4  # as for quant=qat
    batch_size: int = 128  # as for quant=qat
    limit_samples: Optional[int] = None  # as for quant=qat

    BITS: ClassVar[tuple] = (2, 3, 4, 5, 6, 7, 8)

    def calibrates(self) -> bool:
        return self.activations

    def label_reason(self) -> str:
        return "quant=fake_quant quant.qat=true fine-tunes on labelled training samples" if self.qat else ""

    def task_reason(self, task: str) -> str:
        if self.qat and task != "classification":
            return "quant=fake_quant quant.qat=true needs " + CLASSIFIER_ONLY.format(
                what="fine-tunes with a classifier's cross-entropy loss", task=task)
        return ""

    def __post_init__(self) -> None:
        if self.bits not in self.BITS:
            raise ConfigError(f"quant.bits={self.bits} is not allowed for fake_quant: valid values are 2..8")
        _positive("quant.samples", self.samples)
        _positive("quant.epochs", self.epochs)
        _positive("quant.lr", self.lr)
        _positive("quant.batch_size", self.batch_size)
        _positive("quant.limit_samples", self.limit_samples, allow_none=True)


@dataclass
class AutoQuantConfig(StaticQuantConfig):
    """Accuracy-aware mixed precision: per-channel static int8, with the layers the sensitivity
    analysis ranks most harmful kept in float until the accuracy drop is within the budget
    (bsb_hydra/mixed.py). The search evaluates on a selection subset of the TRAINING split (never
    the test split it is reported on)."""
    scheme: Scheme = Scheme.auto
    # The accuracy drop allowed, in percentage points (absolute) or, when budget_rel is set, as a
    # fraction of the fp32 accuracy (0.01 = 1% of it); budget_rel takes precedence.
    budget_pp: Optional[float] = 1.0
    budget_rel: Optional[float] = None
    # The precision of the layers kept out of int8: fp32, or fp16 where the backend has fp16 kernels.
    fallback: Fallback = Fallback.fp32
    # Most candidate models built and scored in the search (bsb_hydra/mixed.py).
    max_trials: int = 8

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.budget_pp is None and self.budget_rel is None:
            raise ConfigError("quant.budget_pp and quant.budget_rel are both null: set one (e.g. quant.budget_pp=1.0)")
        if self.budget_pp is not None and self.budget_pp < 0:
            raise ConfigError(f"quant.budget_pp={self.budget_pp} is negative: use a drop >= 0 pp, e.g. 1.0")
        if self.budget_rel is not None and not 0.0 <= self.budget_rel < 1.0:
            raise ConfigError(f"quant.budget_rel={self.budget_rel} is not allowed: use a fraction 0 <= r < 1, e.g. 0.01")
        _positive("quant.max_trials", self.max_trials)

    def label_reason(self) -> str:
        return "quant=auto ranks layers by the accuracy they cost"

    def task_reason(self, task: str) -> str:
        if task != "classification":
            return "quant=auto needs " + CLASSIFIER_ONLY.format(what="keeps layers float until an accuracy budget holds",
                                                                task=task)
        return ""

    def budget_for(self, fp32_accuracy: float) -> float:
        """The allowed drop as a fraction (0.01 = 1 pp)."""
        if self.budget_rel is not None:
            return self.budget_rel * fp32_accuracy
        return self.budget_pp / 100.0

