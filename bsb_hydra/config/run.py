"""Schemas of the train group, the plain keys (benchmark, mlflow, paths, debug) and the root Config."""
from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Any, List, Optional

from omegaconf import MISSING

from bsb_hydra.config.base import ConfigError, positive as _positive


class FaultStage(Enum):
    none = "none"
    train = "train"
    quantize = "quantize"
    benchmark = "benchmark"
    worker_crash = "worker_crash"
    worker_oom = "worker_oom"
    worker_hang = "worker_hang"



@dataclass
class TrainConfig:
    name: str = "default"  # the preset's name (conf/train/)
    # Training of the fp32 model when it is not in the cache (nor given as a checkpoint): epochs over
    # the training split (or limit_samples of it), batch size, AdamW's learning rate (the peak of its
    # one-cycle schedule).
    epochs: int = 3
    batch_size: int = 128
    lr: float = 1e-3  # see epochs
    weight_decay: float = 0.0  # AdamW's weight decay
    # Train on a seeded subset of this many samples (smoke runs); null = the whole training split.
    limit_samples: Optional[int] = None
    # After training, recompute every batch-norm's running statistics over this many training samples
    # (torch.optim.swa_utils.update_bn: an exact average for the final weights). 0 = keep the running
    # averages of training, which after one short epoch can be far off (mobilenet_v2: 15% test accuracy).
    bn_recalibration: int = 0

    def __post_init__(self) -> None:
        _positive("train.epochs", self.epochs)
        _positive("train.batch_size", self.batch_size)
        _positive("train.lr", self.lr)
        _positive("train.limit_samples", self.limit_samples, allow_none=True)
        if self.weight_decay < 0:
            raise ConfigError(f"train.weight_decay={self.weight_decay} is not allowed: it must be >= 0")
        if self.bn_recalibration < 0:
            raise ConfigError(f"train.bn_recalibration={self.bn_recalibration} is not allowed: give a sample count >= 0")


# ------------------------------------------------------------------------------------ benchmark
PROFILE_MODES = ("slow", "below_peak", "always", "never")


@dataclass
class BenchmarkConfig:
    # The batch sizes timed; each gets its latency_*_ms_b{N}, throughput and speedup metrics.
    batch_sizes: List[int] = field(default_factory=lambda: [1, 8, 32])
    # Untimed calls per worker process and batch size before its timed calls.
    warmup_runs: int = 20
    # Timed runs continue until BOTH min_runs and min_duration_s are reached (or max_duration_s).
    # All three are totals over the `repeats` processes: each process times its share.
    min_runs: int = 100
    min_duration_s: float = 1.0  # see min_runs
    max_duration_s: float = 30.0  # see min_runs: the timing stops here whatever the count
    # Measure the fp32 artifact of the same backend in the same job, right before the quantized
    # one, so speedup_b{N} is a ratio of two timings taken seconds apart.
    paired_baseline: bool = True
    # Fresh worker processes per artifact. The first also evaluates accuracy; with a paired baseline
    # they alternate (fp32, cell, fp32, cell, ...). Samples are pooled and the p50 interval comes
    # from a cluster bootstrap over the processes: a single process's p50 can sit far from the next
    # one's (seen here: the same ORT artifact at 0.11 and 0.18 ms in two processes).
    repeats: int = 3
    # Samples per call when the artifact scores the test split (and the largest calibration chunk).
    eval_batch_size: int = 256
    # Resamples of the cluster bootstrap behind each latency interval (latency_p50_ci_*).
    bootstrap_resamples: int = 1000
    # A worker is stopped when it makes NO progress for this long (it reports after loading, each batch
    # size timed and each evaluation batch), not when it runs this long: slow models are not "hung".
    timeout_s: float = 900.0
    # Why a cell is slow, from the runtime's profiler (bsb_hydra/bench/profile.py), in one more fresh
    # process after the timing: "slow" profiles a quantized cell slower than its fp32 reference at the
    # smallest batch size (and that reference), "below_peak" also an int8 cell whose speedup there is
    # below peak_target x the machine's int8_peak_ratio (speedup_vs_peak < peak_target), "always"
    # every cell, "never" none.
    profile: str = "slow"
    profile_runs: int = 20  # calls the profiler records per artifact
    peak_target: float = 0.6  # see profile ("below_peak")

    def __post_init__(self) -> None:
        if self.profile not in PROFILE_MODES:
            raise ConfigError(f"benchmark.profile={self.profile!r} is not one of {', '.join(PROFILE_MODES)}")
        _positive("benchmark.profile_runs", self.profile_runs)
        if not 0 < self.peak_target <= 10:
            raise ConfigError(f"benchmark.peak_target={self.peak_target} is not allowed: give a fraction of the "
                              "machine's int8_peak_ratio, 0 < peak_target <= 10")
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
    # The MLflow store: $MLFLOW_TRACKING_URI, else sqlite:///<paths.root>/mlflow.db (conf/config.yaml);
    # an http(s):// tracking server works the same.
    tracking_uri: str = MISSING
    # The experiment the runs go to (created, tagged as model development, when missing).
    experiment: str = "bsb-hydra"
    # Where a new experiment's artifacts go when the store is local (sqlite/file).
    artifact_root: str = MISSING
    # An open run's heartbeat tag is renewed every heartbeat_s; a RUNNING run whose heartbeat is older
    # than stale_after_s, and whose process cannot be checked from here (another host, another PID
    # namespace), is taken as dead: closed KILLED, its cell claimable again (bsb_hydra/tracking.py).
    heartbeat_s: float = 30.0
    stale_after_s: float = 600.0  # see heartbeat_s

    def __post_init__(self) -> None:
        _positive("mlflow.heartbeat_s", self.heartbeat_s)
        _positive("mlflow.stale_after_s", self.stale_after_s)
        if self.stale_after_s < 3 * self.heartbeat_s:
            raise ConfigError(f"mlflow.stale_after_s={self.stale_after_s} must be at least 3 x mlflow.heartbeat_s="
                              f"{self.heartbeat_s}: a live run would otherwise be taken for dead between two beats")


@dataclass
class PathsConfig:
    # The folder python -m bsb_hydra was started from (conf/config.yaml); the default store's home.
    root: str = MISSING
    # Trained fp32 models, converted fp32 artifacts, reference logits, converted Keras models and the
    # machine's peak: $BSB_CACHE_DIR, else <root>/.cache/bsb_hydra.
    cache_dir: str = MISSING
    # Converted fp32 artifacts are filed under <cache_dir>/artifacts and reused by every cell that
    # converts the same weights the same way (bsb_hydra/artifact_cache.py); false = each cell converts.
    reuse_fp32_artifacts: bool = True


@dataclass
class PeakConfig:
    """The machine's limit (bsb_hydra/bench/peak.py), measured once per host and thread count and
    cached in cache_dir; every run carries it and its ratios to it. Not part of a cell's config_hash."""
    enabled: bool = True  # false: no peak measured, no speedup_vs_peak logged
    size: int = 1024  # the GEMM is size x size x size
    min_duration_s: float = 1.0  # timed calls per artifact
    # "" = $BSB_PEAK_DIR, else <paths.cache_dir>/peak
    cache_dir: str = ""

    def __post_init__(self) -> None:
        _positive("peak.size", self.size)
        _positive("peak.min_duration_s", self.min_duration_s)


@dataclass
class DebugConfig:
    """Fault injection, for tests of the sweep's failure handling."""
    # The stage at which the chosen cells fail on purpose (none: no fault).
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
    task: Any = MISSING
    benchmark: BenchmarkConfig = field(default_factory=BenchmarkConfig)
    mlflow: MlflowConfig = field(default_factory=MlflowConfig)
    paths: PathsConfig = field(default_factory=PathsConfig)
    debug: DebugConfig = field(default_factory=DebugConfig)
    peak: PeakConfig = field(default_factory=PeakConfig)
    # Seeds training, the test split of sets without one, the calibration and selection samples and
    # the bootstrap resamples.
    seed: int = 0
    # Resume: a cell whose config_hash already has an `ok` run in the experiment (same arch, cpu and
    # emulation) is skipped. force=true measures it again (the newer run supersedes the older).
    force: bool = False

