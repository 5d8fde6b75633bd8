"""backend=onnxruntime's Runner: what the benchmark worker runs (an InferenceSession on the CPU
execution provider). Imports numpy only at its top level."""
from __future__ import annotations

from typing import Any, Dict, List

import numpy as np

from bsb_hydra.backends.base import Runner

# onnxruntime's type strings of the input dtypes a model may declare
ORT_TYPES = {"tensor(float)": "float32", "tensor(float16)": "float16", "tensor(double)": "float64",
             "tensor(int64)": "int64", "tensor(int32)": "int32", "tensor(uint8)": "uint8", "tensor(int8)": "int8",
             "tensor(bool)": "bool"}


class OnnxruntimeRunner(Runner):
    runtime_module = "onnxruntime"
    libraries = ("onnxruntime", "onnx")

    def __init__(self, path, threads, input_dtype, settings) -> None:
        super().__init__(path, threads, input_dtype, settings)
        import onnxruntime as ort

        self.session = ort.InferenceSession(path, self._options(), providers=["CPUExecutionProvider"])
        self.inputs = [(i.name, np.dtype(ORT_TYPES.get(i.type, input_dtype))) for i in self.session.get_inputs()]
        self.input_name = self.inputs[0][0]
        self.dtype = np.dtype(input_dtype)

    def _options(self):
        import onnxruntime as ort

        threads, settings = self.threads, self.settings
        so = ort.SessionOptions()
        so.intra_op_num_threads = threads
        so.inter_op_num_threads = 1
        so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        level = settings.get("graph_optimization", "all")
        so.graph_optimization_level = {
            "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
            "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
            "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
            "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
        }[level]
        return so

    def prepare(self, x) -> Any:
        """Each input by its name, in the dtype the graph declares (int64 ids, float32 images)."""
        from bsb_hydra.feeds import Feeds

        if isinstance(x, Feeds):
            return {name: np.ascontiguousarray(x.arrays[name], dtype=dtype) for name, dtype in self.inputs}
        return {self.input_name: np.ascontiguousarray(x, dtype=self.dtype)}

    def run(self, prepared: Any) -> Any:
        return self.session.run(None, prepared)

    def outputs(self, out: Any) -> List[np.ndarray]:
        return [np.asarray(o) for o in out]

    def output_names(self) -> List[str]:
        return [o.name for o in self.session.get_outputs()]

    def profile(self, prepared: Any, runs: int) -> Dict[str, Any]:
        """A second session of the same file and options with ORT's profiler on (after one call
        for its allocations, which stays out of the summary's per-run figures only approximately:
        the profile holds every call of the session)."""
        import json
        import os
        import tempfile

        import onnxruntime as ort

        from bsb_hydra.backends.onnxruntime.profile import ort_summary

        so = self._options()
        so.enable_profiling = True
        so.profile_file_prefix = os.path.join(tempfile.mkdtemp(prefix="bsb_ort_profile_"), "ort")
        session = ort.InferenceSession(self.path, so, providers=["CPUExecutionProvider"])
        for _ in range(runs):
            session.run(None, prepared)
        path = session.end_profiling()
        with open(path) as f:
            events = json.load(f)
        os.remove(path)
        return ort_summary(events, runs)
