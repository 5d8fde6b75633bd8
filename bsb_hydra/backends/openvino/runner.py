"""backend=openvino's Runner: what the benchmark worker (bsb_hydra/bench/worker.py) runs. Imports
numpy at module level and openvino when a Runner is made (the worker imports ``openvino`` itself
before its memory baseline)."""
from __future__ import annotations

from typing import Any, Dict, List

import numpy as np

from bsb_hydra.backends.base import Runner


class OpenvinoRunner(Runner):
    """Reads the IR and compiles it for the CPU plugin with INFERENCE_NUM_THREADS = device.threads,
    PERFORMANCE_HINT=LATENCY (one stream, one infer request) and INFERENCE_PRECISION_HINT=f32.

    backend.shapes=static (the default): the model is compiled for each input shape before the clock,
    in prepare() (batch 1 already at load, the first shape the worker runs); one compiled model is kept
    at a time, so memory is one compiled model's. dynamic: compiled once with the export's dynamic batch.

    prepare() wraps the inputs as ov.Tensors sharing the arrays' memory; run() is one synchronous
    ``infer`` on them, outputs shared with the request (outputs() copies them)."""

    runtime_module = "openvino"
    libraries = ("openvino", "nncf")

    def __init__(self, path, threads, input_dtype, settings) -> None:
        super().__init__(path, threads, input_dtype, settings)
        import openvino as ov

        self.core = ov.Core()
        self.model = self.core.read_model(path)
        self.names = [p.get_any_name() for p in self.model.inputs]
        self.dtypes = [np.dtype(p.get_element_type().to_dtype()) for p in self.model.inputs]
        self.static = settings.get("shapes", "static") == "static"
        self.shapes = None
        self.compiled = self.request = None
        if self.static:
            first = {}
            for p in self.model.inputs:
                dims = p.get_partial_shape()
                if dims.rank.is_dynamic or any(d.is_dynamic for d in list(dims)[1:]):  # only the batch may be
                    first = None
                    break
                first[p.get_any_name()] = (1, *(d.get_length() for d in list(dims)[1:]))
            if first:
                self._compile(first)
        if self.compiled is None:
            self._compile(None)

    def config(self) -> Dict[str, Any]:
        c: Dict[str, Any] = {"INFERENCE_NUM_THREADS": int(self.threads), "PERFORMANCE_HINT": "LATENCY",
                             "INFERENCE_PRECISION_HINT": self.settings.get("inference_precision", "f32")}
        if "dynamic_quantization_group_size" in self.settings:
            c["DYNAMIC_QUANTIZATION_GROUP_SIZE"] = int(self.settings["dynamic_quantization_group_size"])
        return c

    def _compile(self, shapes) -> None:
        """Compile for ``shapes`` ({input name: shape}; None = as the IR is, dynamic batch), releasing
        the previous compiled model first."""
        self.request = self.compiled = None
        if shapes is not None:
            self.model.reshape({n: list(s) for n, s in shapes.items()})
        self.compiled = self.core.compile_model(self.model, "CPU", self.config())
        self.request = self.compiled.create_infer_request()
        self.shapes = shapes

    def prepare(self, x) -> Any:
        """Each input by its name, in the dtype the IR declares, as an ov.Tensor over the array; with
        static shapes, the model compiled for these shapes if it is not already."""
        import openvino as ov

        from bsb_hydra.feeds import Feeds

        if isinstance(x, Feeds):
            arrays = {n: np.ascontiguousarray(x.arrays[n], dtype=d) for n, d in zip(self.names, self.dtypes)}
        else:
            arrays = {self.names[0]: np.ascontiguousarray(x, dtype=self.dtypes[0])}
        if self.static:
            shapes = {n: tuple(a.shape) for n, a in arrays.items()}
            if shapes != self.shapes:
                self._compile(shapes)
        # ov.Tensor shares only writeable memory (the worker's inputs may be read-only memory maps)
        return {n: ov.Tensor(a if a.flags.writeable else a.copy(), shared_memory=True) for n, a in arrays.items()}

    def run(self, prepared: Any) -> Any:
        return self.request.infer(prepared, share_inputs=True, share_outputs=True)

    def outputs(self, out: Any) -> List[np.ndarray]:
        # share_outputs: the arrays are the request's buffers, overwritten by the next call
        return [np.array(v, copy=True) for v in out.to_tuple()]

    def output_names(self) -> List[str]:
        return [o.get_any_name() for o in self.compiled.outputs]

    def profile(self, prepared: Any, runs: int) -> Dict[str, Any]:
        """``runs`` calls of a second compiled model of the same shapes and settings with the CPU
        plugin's performance counters on (PERF_COUNT), after one call for its allocations; each call's
        per-node times (real_time) summarized by bsb_hydra/backends/openvino/profile.py."""
        import openvino as ov

        from bsb_hydra.backends.openvino.profile import openvino_summary

        compiled = self.core.compile_model(self.model, "CPU", {**self.config(), "PERF_COUNT": True})
        request = compiled.create_infer_request()
        request.infer(prepared, share_inputs=True)
        executed = ov.ProfilingInfo.Status.EXECUTED
        rows = []
        for _ in range(runs):
            request.infer(prepared, share_inputs=True)
            rows += [(p.node_type, p.exec_type, p.real_time.total_seconds() * 1000.0)
                     for p in request.get_profiling_info() if p.status == executed]
        return openvino_summary(rows, runs, n_inputs=len(self.names))
