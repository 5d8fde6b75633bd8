"""backend=pytorch's Runner: what the benchmark worker runs (a TorchScript file or an AOTInductor
package). Imports numpy only at its top level."""
from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any, Dict, List

import numpy as np

from bsb_hydra.backends.base import Runner


def canonical_strides(t):
    """``t`` with the strides of a fresh contiguous tensor. numpy and torch call a (N, 1, H, W) array
    contiguous whatever its size-1 dimension's stride, and a training split stored NHWC comes out of
    torch.from_numpy as (HW, 1, W, 1); an AOTInductor package's conv reads such an input as NHWC while
    its compiled code expects NCHW (the cnn's package: outputs off by their own size). A copy (before
    the clock) only where the strides differ."""
    import torch

    if t.dim() < 2 or not t.is_contiguous():
        return t
    expected, step = [], 1
    for size in reversed(t.shape):
        expected.append(step)
        step *= size
    if tuple(reversed(expected)) == t.stride():
        return t
    return t.clone(memory_format=torch.contiguous_format)


class _Chunks(list):
    """Prepared inputs of fixed-batch packages for a batch none of them takes (evaluation): run()
    feeds them one by one and drops the last one's padding."""
    keep = 0


class PytorchRunner(Runner):
    runtime_module = "torch"
    libraries = ("torch", "torchao", "torchvision")

    def __init__(self, path, threads, input_dtype, settings) -> None:
        super().__init__(path, threads, input_dtype, settings)
        import torch

        torch.set_num_threads(threads)
        if settings.get("engine"):
            torch.backends.quantized.engine = settings["engine"]
        self.torch = torch
        self.files = None
        if str(path).endswith(".pt2"):  # a compiled AOTInductor package (PT2E int8, backend.export=aoti)
            manifest = Path(str(path) + ".batches.json")
            if manifest.is_file():  # one package per batch size (backend.aoti_batch=static)
                self.files = {int(b): str(Path(path).parent / name) for b, name in json.loads(manifest.read_text()).items()}
                self.batch = None
                self._use(1)
            else:
                self.model = torch._inductor.aoti_load_package(str(path))
        else:
            with warnings.catch_warnings():  # torch's deprecation notice for TorchScript, on every load
                warnings.filterwarnings("ignore", message=r".*torch\.jit\.load.*", category=FutureWarning)
                try:
                    self.model = torch.jit.load(path, map_location="cpu").eval()
                except RuntimeError as e:
                    if "torchvision::" not in str(e):
                        raise
                    # the model calls torchvision's operators (a detector's nms, roi_align): a deployment
                    # loads their library with it; only such a model's worker imports torchvision
                    import torchvision  # noqa: F401

                    self.model = torch.jit.load(path, map_location="cpu").eval()
        self.dtype = getattr(torch, input_dtype)

    _process_inference = False

    @classmethod
    def enter_process(cls) -> None:
        """The benchmark worker (a process that only runs models) enters inference mode once: a
        `with` around every call cost about 4 us of an 8.5 us empty call here
        (scripts/harness_overhead.py), which a user's loop inside one inference_mode block does not
        pay. Runners in the sweep's own process (quant=auto's search) keep the per-call block."""
        import torch

        cls._mode = torch.inference_mode()
        cls._mode.__enter__()
        cls._process_inference = True

    def _use(self, batch: int) -> None:
        """Load the package of ``batch`` (fixed-batch packages), dropping the one loaded before: one
        package in memory at a time, as a deployment at one batch size holds."""
        if batch != self.batch:
            self.model = None
            self.model = self.torch._inductor.aoti_load_package(self.files[batch])
            self.batch = batch

    def prepare(self, x) -> Any:
        """The forward's positional arguments: one tensor, or one per input of a Feeds, in order. With
        one package per batch size, the input's batch picks the package (before the clock); a batch
        with no package of its own (the evaluation's) runs in chunks of the largest, the last one
        zero-padded and its padding's outputs dropped."""
        from bsb_hydra.feeds import Feeds

        if isinstance(x, Feeds):
            return tuple(canonical_strides(self.torch.from_numpy(np.ascontiguousarray(v))) for v in x.values())
        t = self.torch.from_numpy(np.ascontiguousarray(x)).to(self.dtype)
        if self.files is None:
            return (canonical_strides(t),)
        n = len(t)
        if n in self.files:
            self._use(n)
            return (canonical_strides(t),)
        b = max(self.files)
        self._use(b)
        chunks = _Chunks()
        for i in range(0, n, b):
            part = t[i:i + b]
            if len(part) < b:
                part = self.torch.cat([part, part.new_zeros((b - len(part), *part.shape[1:]))])
            chunks.append((canonical_strides(part.contiguous()),))
        chunks.keep = n
        return chunks

    def run(self, prepared: Any) -> Any:
        if type(prepared) is _Chunks:
            from bsb_hydra.feeds import flatten_outputs

            runs = [flatten_outputs(self.run(part)) for part in prepared]
            return [self.torch.cat([r[k] for r in runs])[:prepared.keep] for k in range(len(runs[0]))]
        if self._process_inference:
            return self.model(*prepared)
        with self.torch.inference_mode():
            return self.model(*prepared)

    def outputs(self, out: Any) -> List[np.ndarray]:
        from bsb_hydra.feeds import flatten_outputs

        arrays = [t.float().numpy() if t.is_floating_point() else t.numpy() for t in flatten_outputs(out)]
        self._n_outputs = len(arrays)
        return arrays

    _n_outputs = 1

    def output_names(self) -> List[str]:
        """A TorchScript or AOTInductor file keeps no output names: output_0, output_1, ... in order
        (the ONNX export of the same module names them the same way)."""
        return [f"output_{i}" for i in range(self._n_outputs)]

    def profile(self, prepared: Any, runs: int) -> Dict[str, Any]:
        """torch.profiler's per-op self times. An AOTInductor package calls its oneDNN kernels directly,
        not through the dispatcher, so the profiler sees only the package's few aten calls (a PT2E
        mobilenet_v2: 0.21 of 4.5 ms per call); for a package, oneDNN's own verbose log (each
        primitive's execution time, kind, implementation and data types) supplies those kernels."""
        from torch.profiler import ProfilerActivity, profile

        from bsb_hydra.backends.pytorch.profile import onednn_rows, torch_summary

        self.run(prepared)
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for _ in range(runs):
                self.run(prepared)
        rows = [{"name": e.key, "self_cpu_us": e.self_cpu_time_total, "count": e.count} for e in prof.key_averages()]
        package = self.files is not None or str(self.path).endswith(".pt2")
        if package:
            rows += onednn_rows(self._onednn_log(prepared, runs))
        int8 = any(r["name"].startswith("quantized::") or (r["name"].startswith("onednn:")
                                                           and r["name"].split()[-1].startswith(("u8", "s8")))
                   for r in rows)
        return torch_summary(rows, runs, quantized=int8)

    def _onednn_log(self, prepared: Any, runs: int) -> str:
        """``runs`` calls with oneDNN's verbose mode on (torch.backends.mkldnn.verbose), its lines
        (written by the C library to file descriptor 1) caught in a temporary file."""
        import os
        import sys
        import tempfile

        torch = self.torch
        with tempfile.TemporaryFile(mode="w+") as log:
            sys.stdout.flush()
            saved = os.dup(1)
            os.dup2(log.fileno(), 1)
            try:
                with torch.backends.mkldnn.verbose(torch.backends.mkldnn.VERBOSE_ON):
                    for _ in range(runs):
                        self.run(prepared)
            finally:
                sys.stdout.flush()
                os.dup2(saved, 1)
                os.close(saved)
            log.seek(0)
            return log.read()
