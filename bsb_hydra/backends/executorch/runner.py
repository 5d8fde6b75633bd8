"""backend=executorch's Runner: what the benchmark worker (bsb_hydra/bench/worker.py) runs. Imports
numpy and the standard library at module level, ExecuTorch's runtime when a Runner is made (the
worker imports ``executorch.runtime`` itself before its memory baseline; that module imports torch,
whose tensors are its inputs and outputs, and ExecuTorch's compiler package, which its pybindings'
warning class lives in)."""
from __future__ import annotations

import os
import sys
import tempfile
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Dict, Iterator, List

import numpy as np

from bsb_hydra.backends.base import Runner

# What ExecuTorch's runtime logs on stderr by itself when its threadpool starts or is resized (cpuinfo's
# probing of ARM-only files, the thread count): not about the model, kept out of the logs and reasons.
NOISE = ("[cpuinfo_utils.cpp:", "[threadpool.cpp:")
# c10::ScalarType codes of MethodMeta's TensorInfo.dtype() -> numpy dtypes
SCALAR_TYPES = {0: np.uint8, 1: np.int8, 2: np.int16, 3: np.int32, 4: np.int64, 5: np.float16, 6: np.float32,
                7: np.float64, 11: np.bool_}


@contextmanager
def quiet_native_stderr() -> Iterator[List[str]]:
    """File descriptor 2 into a temporary file for the block (the runtime's C++ logging writes there,
    not through sys.stderr); afterwards every line but the runtime's start-up noise (NOISE) is written
    to stderr again, and handed back in the yielded list (the last one is the runtime's reason when a
    call failed)."""
    kept: List[str] = []
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as tmp:
        os.dup2(tmp.fileno(), 2)
        try:
            yield kept
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            text = tmp.read().decode(errors="replace")
            kept.extend(ln for ln in text.splitlines() if ln.strip() and not ln.startswith(NOISE))
            for ln in kept:
                print(ln, file=sys.stderr)


class _Chunks(list):
    """An evaluation batch larger than the program's bound, as prepared chunks of at most the bound."""


class ExecutorchRunner(Runner):
    """Loads the .pte with ``executorch.runtime.Runtime.get().load_program(path)`` and its method
    ``forward`` (ExecuTorch allocates the planned memory, sized for the program's largest batch, and
    the XNNPACK delegate builds its runtime, packing the weights, here: outside the clock). The
    process's threadpool, which the XNNPACK delegate runs on, is set to device.threads
    (``portable_lib._unsafe_reset_threadpool``; ExecuTorch has no per-program thread count).

    prepare() makes the inputs torch tensors of the dtypes the method declares; a batch above the
    program's bound (only the evaluation's) is split into chunks of the bound, run one after another.
    run() is ``Method.execute``: inputs copied into the planned memory, the call, outputs copied out."""

    # What the benchmark worker imports before its baseline. It imports torch (its tensors are the
    # runtime's inputs and outputs) and executorch.exir (its warning class), not only the C++ runtime:
    # a Python user of ExecuTorch's runtime loads the same (docs/methodology.md).
    runtime_module = "executorch.runtime"
    libraries = ("executorch",)

    def __init__(self, path, threads, input_dtype, settings) -> None:
        super().__init__(path, threads, input_dtype, settings)
        import executorch.extension.pybindings.portable_lib as portable_lib
        from executorch.runtime import Runtime

        with quiet_native_stderr():
            portable_lib._unsafe_reset_threadpool(int(threads))
            self.threadpool_threads = int(portable_lib._threadpool_get_thread_count())
            self.program = Runtime.get().load_program(str(path))
            self.method = self.program.load_method("forward")
        meta = self.method.metadata
        infos = [meta.input_tensor_meta(i) for i in range(meta.num_inputs())]
        self.dtypes = [SCALAR_TYPES.get(int(t.dtype()), np.float32) for t in infos]
        self.max_batch = int(infos[0].sizes()[0]) if infos and len(infos[0].sizes()) else 1
        self.n_outputs = meta.num_outputs()

    def _tensors(self, arrays) -> tuple:
        import torch

        return tuple(torch.from_numpy(np.ascontiguousarray(a, dtype=d)) for a, d in zip(arrays, self.dtypes))

    def prepare(self, x) -> Any:
        from bsb_hydra.feeds import Feeds

        arrays = list(x.values()) if isinstance(x, Feeds) else [x]
        if len(arrays) != len(self.dtypes):
            raise ValueError(f"the .pte takes {len(self.dtypes)} inputs, {len(arrays)} were given")
        n = len(arrays[0])
        if n > self.max_batch:  # the evaluation's batches (not timed): chunks of the program's bound
            return _Chunks(self._tensors([a[i:i + self.max_batch] for a in arrays])
                           for i in range(0, n, self.max_batch))
        return self._tensors(arrays)

    def run(self, prepared: Any) -> Any:
        if type(prepared) is _Chunks:
            import torch

            parts = [self.method.execute(p) for p in prepared]
            return [torch.cat([p[k] for p in parts]) for k in range(len(parts[0]))]
        return self.method.execute(prepared)

    def outputs(self, out: Any) -> List[np.ndarray]:
        return [t.float().numpy() if t.is_floating_point() else t.numpy() for t in out]

    def output_names(self) -> List[str]:
        """A .pte keeps no output names: output_0, output_1, ... in order (as the pytorch backend's files)."""
        return [f"output_{i}" for i in range(self.n_outputs)]

    def profile(self, prepared: Any, runs: int) -> Dict[str, Any]:
        """``runs`` calls of the same program loaded a second time with ETDump on (ExecuTorch's event
        tracer: the time of every instruction, and inside the XNNPACK delegate of every XNNPACK
        operator, which names its kernel's layout and precision), after one call that is dropped
        (XNNPACK's first reshape); read with executorch.devtools.Inspector and summarized by
        bsb_hydra/backends/executorch/profile.py. The portable ops' events are named from the .pte's
        instruction list."""
        from executorch.devtools import Inspector
        from executorch.runtime import Runtime

        from bsb_hydra.backends.executorch.profile import executorch_summary, instruction_names

        first = prepared[0] if type(prepared) is _Chunks else prepared
        with quiet_native_stderr():
            program = Runtime.get().load_program(str(self.path), enable_etdump=True, debug_buffer_size=0)
            method = program.load_method("forward")
            for _ in range(runs + 1):
                method.execute(first)
        with tempfile.TemporaryDirectory() as tmp:
            etdump = Path(tmp) / "profile.etdp"
            with quiet_native_stderr(), warnings.catch_warnings():
                warnings.simplefilter("ignore")  # "Output Buffer not found": no tensor was asked for
                program.write_etdump_result_to_file(str(etdump), str(Path(tmp) / "debug.bin"))
                inspector = Inspector(etdump_path=str(etdump))
            events = []
            for block in inspector.event_blocks:
                if block.name != "Execute":  # the "Default" block: Program::load_method, Method::init
                    continue
                for ev in block.events:
                    raw = list(ev.perf_data.raw) if ev.perf_data is not None else []
                    events.append((ev.name, ev._instruction_id, bool(ev.is_delegated_op), raw[1:]))
            names = instruction_names(Path(self.path).read_bytes())
        summary = executorch_summary(events, names, runs, n_inputs=len(self.dtypes), n_outputs=self.n_outputs)
        summary["threadpool_threads"] = self.threadpool_threads
        return summary
