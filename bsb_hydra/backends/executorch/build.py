"""backend=executorch's builds (the sweep process's side). The torch model is exported with
``torch.export`` (a dynamic batch dimension, 1..backend.max_batch), lowered with
``executorch.exir.to_edge_transform_and_lower`` and the XNNPACK partitioner, and serialized as a
``.pte`` program that ExecuTorch's runtime runs (XNNPACK takes the partitions it supports; the ops it
leaves out run on ExecuTorch's portable kernels). Each scheme:

fp32    the exported fp32 graph, lowered (XNNPACK folds conv + batch norm itself).
fp16    the model in half precision (``module.half()``, float inputs fp16; token ids stay int64), lowered:
        XNNPACK runs its F16 operators (the profile names them ``Convolution (NHWC, F16)``). A CPU without
        native fp16 arithmetic (x86 without AVX512-FP16, such as the AMD EPYC here) runs XNNPACK's F16C
        kernels, which convert to fp32 around each multiply-add: slower than fp32 there (docs/methodology.md).
        ExecuTorch's XNNPACK serializer writes convolution weights in fp32 (XNNPACK packs them to fp16 at
        load): a conv net's fp16 .pte is about its fp32 size; Linear weights are written in fp16.
dynamic ``XNNPACKQuantizer`` with ``get_symmetric_quantization_config(is_per_channel=True, is_dynamic=True)``
        (torchao's prepare_pt2e / convert_pt2e): int8 weights per output channel, activations quantized per
        call by XNNPACK's QD8 kernels (``Fully Connected (NC, QDU8, F32, QC8W)``). The quantizer's dynamic
        patterns are Linear and 2-D convolutions that are neither depthwise nor followed by a ReLU;
        quant.convolutions=false keeps every convolution fp32. quant.granularity=per_tensor (dynamic's
        default) is not applied: per channel is XNNPACK's dynamic weight layout (the tag says so).
static  ``XNNPACKQuantizer`` with the static symmetric config: int8 weights per channel or per tensor
        (quant.granularity), int8 activations whose ranges are calibrated on the cell's calibration
        samples (real training samples) with min/max (quant.method=minmax) or the config's histogram
        observer (quant.method=histogram); XNNPACK's QS8 / QC8 kernels.

The artifact's dynamic batch: the runner must take every batch size the benchmark times, and
ExecuTorch plans (and allocates at load) the memory of the tensors outside the delegate for the
upper bound; so the bound is the largest timed batch, and the evaluation's larger batches are fed in
chunks of it. torch 2.14's fake convolution narrows the batch symbol while the graph is lowered (a
guard ``batch < 16`` from its conv backend choice, which only decides a fake tensor's memory format):
the export's range is put back before the memory is planned (``_restore_batch_range``), and the
program is run at batch 1 and at the bound before it is timed.

Unsupported, with the reason in ``no_scheme_reasons`` / ``family_unsupported`` / ``unsupported_reason``: qat,
auto, int4_weight_only, fake_quant; dynamic and static of an LSTM (XNNPACKQuantizer quantizes only its
head); quant.method entropy / percentile; quant.reduce_range=true; model=onnx, keras, tflite (no torch
module: the base class says so); a TorchScript checkpoint; a model torch.export cannot export (the build
says why)."""
from __future__ import annotations

import copy
import importlib.util
import warnings
from collections import Counter
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Dict, Optional

from bsb_hydra.backends.base import FAKE_QUANT_ELSEWHERE, Artifact, Backend, BuildContext, Unsupported
from bsb_hydra.backends.executorch.runner import quiet_native_stderr

# import name -> pip name
REQUIRED = {"executorch": "executorch", "flatbuffers": "flatbuffers", "ruamel": "ruamel.yaml",
            "tabulate": "tabulate"}
INSTALL = ("`make setup` (executorch==1.5.1 is installed with --no-deps, its requirements pull packages nothing here "
           "imports; see the Makefile's EXECUTORCH lines)")
# Graph nodes that are bookkeeping, not arithmetic: a delegate's output tuple indexing, a symbolic size.
BOOKKEEPING = ("getitem", "sym_size")


def _quiet_imports() -> None:
    """Import torchao's pt2e and ExecuTorch's compiler once with torch's pytree logger quiet: torchao
    registers an Enum as a pytree constant, which torch 2.14 answers with a deprecation warning line on
    every sweep's output (not about the model or this backend)."""
    import logging

    logger = logging.getLogger("torch.utils._pytree")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        import executorch.exir  # noqa: F401
        import torchao.quantization.pt2e.quantize_pt2e  # noqa: F401
    finally:
        logger.setLevel(level)


@contextmanager
def _root_logger_quiet():
    """ExecuTorch's lowering passes log each step on the ROOT logger at INFO ("Copying constant nodes
    ...", once per copy: 62 lines for the 32-step LSTM), which Hydra's root handler prints: warnings
    only while lowering."""
    import logging

    root = logging.getLogger()
    level = root.level
    root.setLevel(max(level, logging.WARNING))
    try:
        yield
    finally:
        root.setLevel(level)


def _args(example) -> tuple:
    """The forward's positional arguments: one tensor, or one per input of a Feeds, in order."""
    import torch

    from bsb_hydra.feeds import to_torch_args

    if isinstance(example, tuple) and all(isinstance(a, torch.Tensor) for a in example):
        return example
    return to_torch_args(example)


def max_batch(cfg) -> int:
    """The .pte's largest batch: backend.max_batch, or the largest batch size the benchmark times."""
    return int(cfg.backend.max_batch or max(cfg.benchmark.batch_sizes))


def export_program(module, args: tuple, batch_max: int):
    """torch.export with the batch dimension of every input dynamic (1..batch_max; one shared symbol),
    traced at batch 2 (batch 1 would specialise the dimension to 1); batch_max 1 exports batch 1 as it is.
    Each input is cloned into the standard contiguous layout first: an example whose size-1 dimension
    has stride 0 (a one-channel image from the data pipeline, strides (784, 0, 28, 1)) exported at batch 1
    kept that stride, and ExecuTorch's lowering refused it ("0 in strides is not supported"; found with
    benchmark.batch_sizes=[1]; the batch-2 trace's torch.cat had made a copy)."""
    import torch

    one = tuple(a[:1].clone(memory_format=torch.contiguous_format) for a in args)
    if batch_max <= 1:
        return torch.export.export(module, one)
    two = tuple(torch.cat([a, a]) for a in one)
    batch = torch.export.Dim("batch", min=1, max=batch_max)
    return torch.export.export(module, two, dynamic_shapes=tuple({0: batch} for _ in two))


def _restore_batch_range(edge) -> str:
    """Put the export's range of every input's symbolic dimension back into the shape environment
    before memory planning, where lowering narrowed it; returns what was restored ('' = nothing).

    torch 2.14's fake convolution (torch/_subclasses/fake_impls.py, ``conv``) asks the conv backend
    selection for the output's memory format, and that selection compares the batch with 16: on an
    export traced at batch 2 this records the guard ``batch < 16`` in the shared shape environment while
    ExecuTorch's passes re-run the graph, and the memory planner then sizes every tensor for batch 15
    (a batch of 16 fails with "Attempted to resize a bounded tensor"). The guard only chose a fake tensor's
    memory format; the delegate and the portable kernels take any batch in the export's range (checked
    by running the program at batch 1 and at the bound, ``_check_runs``)."""
    import torch

    program = edge.exported_program()
    restored = []
    for node in program.graph.nodes:
        if node.op != "placeholder" or not isinstance(node.meta.get("val"), torch.Tensor):
            continue
        for dim in node.meta["val"].shape:
            if not isinstance(dim, torch.SymInt):
                continue
            env = dim.node.shape_env
            for sym in dim.node.expr.free_symbols:
                promised = program.range_constraints.get(sym)
                if promised is not None and env.var_to_range.get(sym) != promised:
                    restored.append(f"{sym} {env.var_to_range.get(sym)} -> {promised}")
                    env.var_to_range[sym] = promised
    return ", ".join(sorted(set(restored)))


def delegation_facts(edge) -> Dict[str, str]:
    """The share of the lowered graph's nodes XNNPACK took, and the ops it left to the portable
    kernels (executorch.devtools.backend_debug.get_delegation_info; its bookkeeping nodes, a delegate's
    getitem and a symbolic size, are not counted)."""
    from executorch.devtools.backend_debug import get_delegation_info

    info = get_delegation_info(edge.exported_program().graph_module)
    ops = {k: v for k, v in info.delegation_by_operator.items() if k not in BOOKKEEPING}
    delegated = sum(v.delegated for v in ops.values())
    left = {k: v.non_delegated for k, v in ops.items() if v.non_delegated}
    total = delegated + sum(left.values())
    return {"delegated_nodes": f"{delegated} of {total}",
            "delegated_share": f"{delegated / total:.3f}" if total else "0",
            "delegated_subgraphs": str(info.num_delegated_subgraphs),
            "not_delegated_ops": ",".join(f"{k}:{v}" for k, v in sorted(left.items())) or "none"}


def _int8_weights(gm) -> Counter:
    """Weights convert_pt2e left int8 (a dequantize whose input is a constant), by the op that reads
    them (``conv2d``, ``linear``)."""
    counts: Counter = Counter()
    for node in gm.graph.nodes:
        if node.op != "call_function" or "dequantize" not in str(node.target):
            continue
        src = node.args[0] if node.args else None
        if getattr(src, "op", None) != "get_attr":
            continue
        for user in node.users:
            counts[str(getattr(user.target, "__name__", user.target)).split(".")[0]] += 1
    return counts


def xnnpack_quantizer():
    """XNNPACKQuantizer whose scalar-to-tensor step keeps integer arithmetic integer. Before annotating,
    XNNPACKQuantizer turns the scalar operand of every add / mul into a float32 tensor attribute
    (``_convert_scalars_to_attrs``), also where the op adds integers: BertModel's position ids
    (``arange(seq) + offset``) became float32 and the attention mask's index op failed with "tensors used
    as indices must be long, int, byte or bool tensors". Such a constant is given back the dtype of the
    op's output, which export recorded (an integer op's output is an integer tensor)."""
    import torch
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import XNNPACKQuantizer

    arithmetic = (torch.ops.aten.add.Tensor, torch.ops.aten.mul.Tensor)

    class IntegerSafeXNNPACKQuantizer(XNNPACKQuantizer):
        def transform_for_annotation(self, model):
            model = super().transform_for_annotation(model)
            for node in model.graph.nodes:
                if node.op != "get_attr" or not str(node.target).startswith("_tensor_constant_"):
                    continue
                users = [u for u in node.users if u.op == "call_function" and u.target in arithmetic]
                out = users[0].meta.get("val") if users else None
                value = getattr(model, node.target)
                if isinstance(out, torch.Tensor) and not out.dtype.is_floating_point and value.is_floating_point():
                    value = value.to(out.dtype)
                    setattr(model, node.target, value)
                    node.meta["val"] = out.fake_mode.from_tensor(value, static_shapes=True)
            return model

    return IntegerSafeXNNPACKQuantizer()


def _first_line(e: Exception) -> str:
    lines = [ln.strip() for ln in str(e).strip().splitlines() if ln.strip()]
    return f"{type(e).__name__}: {lines[0][:300]}" if lines else type(e).__name__


def _check_runs(path: Path, args: tuple, batch_max: int, scheme: str, model: str) -> None:
    """The program once at batch 1 and once at its largest batch, in this process, before any timing:
    a program the runtime refuses (a shape it cannot take, an op without a kernel) ends here with the
    runtime's reason, not inside the benchmark worker."""
    import torch

    from executorch.runtime import Runtime

    with quiet_native_stderr() as lines:
        try:
            method = Runtime.get().load_program(str(path)).load_method("forward")
            for b in sorted({1, batch_max}):
                method.execute([torch.cat([a[:1]] * b) for a in args])
        except Exception as e:
            raise Unsupported(f"quant={scheme} on executorch: the ExecuTorch runtime cannot run the .pte of "
                              f"model={model} ({_first_line(e)}{'; ' + lines[-1] if lines else ''})") from None


class ExecutorchBackend(Backend):
    name = "executorch"
    suffix = ".pte"
    no_keras_reason = "lowers PyTorch models (torch.export), and a TensorFlow model has no torch module"
    no_onnx_reason = "lowers a PyTorch model with torch.export (nothing here converts ONNX back to torch)"
    no_auto_reason = ("quant=auto needs a per-layer float fallback; XNNPACKQuantizer can leave chosen modules float "
                      "(set_module_name), but the search is not wired for executorch yet")
    no_scheme_reasons = {
        "qat": ("QAT on ExecuTorch is torchao's prepare_qat_pt2e with XNNPACKQuantizer's QAT config, fine-tuned: "
                "not wired here; QAT runs on pytorch, onnxruntime and tflite"),
        "int4_weight_only": ("ExecuTorch's 4-bit path is torchao's 8da4w (int4 group-wise Linear weights with "
                             "dynamic int8 activations, XNNPACK's QB4W kernels), which is not wired here; "
                             "int4 weight-only runs on pytorch, onnxruntime and openvino"),
        "fake_quant": FAKE_QUANT_ELSEWHERE,
    }
    _LSTM = ("torch.export turns nn.LSTM into per-time-step ops that XNNPACKQuantizer has no pattern for: only the "
             "classifier head's Linear was quantized (model=lstm: size 1.00x of fp32, measured 2026-12-06), so the "
             "cell would be fp32 under an int8 name; LSTM int8 runs on pytorch, onnxruntime and tflite")
    family_unsupported = {"recurrent": {"dynamic": _LSTM, "static": _LSTM}}
    fp32_packages = ("executorch", "torchao")
    # bsb_hydra/bench/peak.py's machine limit: one size x size Linear without bias, and its int8 version
    peak_kernels = ("fp32 XNNPACK Fully Connected (NC, F32) GEMM | int8 XNNPACK Fully Connected (NC, QS8) GEMM "
                    "(XNNPACKQuantizer static per-tensor, int8 activations and weights), .pte run by ExecuTorch's "
                    "runtime")

    def unsupported_reason(self, cfg) -> Optional[str]:
        reason = super().unsupported_reason(cfg)
        if reason:
            return reason
        missing = [pip for mod, pip in REQUIRED.items() if importlib.util.find_spec(mod) is None]
        if missing:
            return f"backend=executorch needs {', '.join(missing)}: install them with {INSTALL}"
        q = cfg.quant
        scheme = q.scheme.value
        largest = max(cfg.benchmark.batch_sizes)
        if cfg.backend.max_batch is not None and cfg.backend.max_batch < largest:
            return (f"backend.max_batch={cfg.backend.max_batch} is below benchmark.batch_sizes' largest, {largest}: "
                    "the .pte runs batches up to its bound (use null, the largest timed batch, or at least "
                    f"{largest})")
        kind = getattr(cfg.model, "file_kind", lambda: None)()
        if kind == "torchscript":
            return (f"model.checkpoint of model={cfg.model.name} is a TorchScript file: torch.export cannot export "
                    "a ScriptModule (give the module's code as model.target with a state_dict, or an "
                    "ExportedProgram file)")
        if scheme == "static":
            if q.method.value not in ("minmax", "histogram"):
                return (f"quant.method={q.method.value} on executorch: XNNPACKQuantizer's activation observers here "
                        "are min/max (quant.method=minmax) and its histogram observer (quant.method=histogram)")
            if q.reduce_range:
                return ("quant.reduce_range=true on executorch: XNNPACK's int8 kernels accumulate in int32 without the "
                        "u8 x s8 16-bit saturation 7-bit ranges work around (fbgemm / oneDNN without VNNI); leave "
                        "quant.reduce_range=null")
        return None

    def fp32_cache_parts(self, cfg) -> Dict[str, Any]:
        parts = super().fp32_cache_parts(cfg)
        parts["max_batch"] = max_batch(cfg)  # the exported bound (null = the largest timed batch)
        return parts

    # ------------------------------------------------------------------------------ helpers
    def _export(self, module, args: tuple, ctx: BuildContext, scheme: str):
        _quiet_imports()
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                return export_program(module, args, max_batch(ctx.cfg))
        except Exception as e:  # data-dependent control flow (a detector's NMS), untraceable code
            raise Unsupported(f"quant={scheme} on executorch: torch.export cannot export model={ctx.cfg.model.name} "
                              f"with a dynamic batch of 1..{max_batch(ctx.cfg)} ({_first_line(e)}); run it on "
                              "onnxruntime or pytorch") from None

    def _lower(self, program, ctx: BuildContext, out: Path, scheme: str, args: tuple, info: Dict[str, str],
               input_dtype: str) -> Artifact:
        """XNNPACK partitioner -> .pte at ``out``, the delegation facts in the Artifact's info."""
        from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
        from executorch.exir import to_edge_transform_and_lower

        try:
            with warnings.catch_warnings(), _root_logger_quiet():
                warnings.simplefilter("ignore")
                edge = to_edge_transform_and_lower(program, partitioner=[XnnpackPartitioner()])
                facts = delegation_facts(edge)
                restored = _restore_batch_range(edge)
                buffer = edge.to_executorch().buffer
        except Exception as e:
            raise Unsupported(f"quant={scheme} on executorch: lowering model={ctx.cfg.model.name} to XNNPACK failed "
                              f"({_first_line(e)})") from None
        if facts["delegated_nodes"].startswith("0 of"):
            raise Unsupported(f"quant={scheme} on executorch: XNNPACK took no op of model={ctx.cfg.model.name} (ops "
                              f"left to the portable kernels: {facts['not_delegated_ops']})")
        out.write_bytes(buffer)
        batch_max = max_batch(ctx.cfg)
        _check_runs(out, args, batch_max, scheme, ctx.cfg.model.name)
        info = {**facts, **info, "executorch_version": _version("executorch"),
                "batch": f"dynamic 1..{batch_max}" if batch_max > 1 else "static 1",
                "threadpool": ("ExecuTorch's pthreadpool (XNNPACK's), set to device.threads with "
                               "portable_lib._unsafe_reset_threadpool")}
        if restored:
            info["batch_range_restored"] = (f"{restored} (torch's fake convolution guarded the batch while lowering; "
                                            "the export's range is put back before memory planning)")
        return Artifact(out, input_dtype, info)

    def _quantized(self, ctx: BuildContext, out: Path, scheme: str, quantizer, calibrate: bool,
                   info: Dict[str, str]) -> Artifact:
        """export -> prepare_pt2e -> (calibration) -> convert_pt2e -> export -> lower."""
        import torch
        from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

        args = _args(ctx.example)
        program = self._export(ctx.model, args, ctx, scheme)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            prepared = prepare_pt2e(program.module(), quantizer)
            if not calibrate:  # the weight observers see the weights on a call: dynamic's one, on the example
                with torch.no_grad():
                    prepared(*args)
            else:
                from bsb_hydra.backends.onnxruntime.build import calibration_batch
                from bsb_hydra.feeds import materialize

                samples = ctx.calibration
                step = min(calibration_batch(samples), max_batch(ctx.cfg))
                with torch.no_grad():
                    for i in range(0, len(samples), step):
                        prepared(*_args(materialize(samples[i:i + step])))
                info["calibration_samples"] = str(len(samples))
            converted = convert_pt2e(prepared)
        weights = _int8_weights(converted)
        if not weights:
            raise Unsupported(f"quant={scheme} on executorch: XNNPACKQuantizer quantized no weight of "
                              f"model={ctx.cfg.model.name} (its {scheme} patterns: Linear and convolutions)")
        info["int8_weights"] = ",".join(f"{k}:{v}" for k, v in sorted(weights.items()))
        return self._lower(self._export(converted, args, ctx, scheme), ctx, out, scheme, args, info, ctx.input_dtype)

    # ---------------------------------------------------------------------------------- schemes
    def build_fp32(self, ctx: BuildContext, out: Path) -> Artifact:
        args = _args(ctx.example)
        program = self._export(ctx.model, args, ctx, "fp32")
        return self._lower(program, ctx, out, "fp32", args, {"exported_with": "torch.export"}, ctx.input_dtype)

    def build_fp16(self, ctx: BuildContext, out: Path) -> Artifact:
        import torch

        args = _args(ctx.example)
        floating = [a.is_floating_point() for a in args]
        half_args = tuple(a.half() if f else a for a, f in zip(args, floating))  # token ids stay int64
        module = copy.deepcopy(ctx.model).eval().half()
        program = self._export(module, half_args, ctx, "fp16")
        note = "fp16 weights and activations, XNNPACK's F16 operators"
        if ctx.arch == "x86_64" and "avx512_fp16" not in ctx.isa:
            note += ("; this CPU has no AVX512-FP16: XNNPACK's x86 F16 kernels convert to fp32 around the "
                     "arithmetic (F16C), so fp16 is no speed gain here")
        info = {"note": note}
        if any(isinstance(m, (torch.nn.Conv1d, torch.nn.Conv2d)) for m in module.modules()):
            info["conv_weights_in_file"] = ("fp32: ExecuTorch's XNNPACK serializer stores convolution weights in fp32 "
                                            "(op_conv2d, force_fp32) and XNNPACK packs them to fp16 at load, so only "
                                            "Linear weights halve the file")
        return self._lower(program, ctx, out, "fp16", half_args, info, "float16" if floating[0] else ctx.input_dtype)

    def build_dynamic(self, ctx: BuildContext, out: Path) -> Artifact:
        _quiet_imports()
        import torch
        from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import get_symmetric_quantization_config

        config = get_symmetric_quantization_config(is_per_channel=True, is_dynamic=True)
        convolutions = ctx.cfg.quant.convolutions is not False
        quantizer = xnnpack_quantizer()
        if convolutions:
            quantizer.set_global(config)
        else:
            quantizer.set_operator_type(torch.ops.aten.linear.default, config)
        granularity = ctx.cfg.quant.granularity.value
        info = {"method": "XNNPACKQuantizer get_symmetric_quantization_config(is_per_channel=True, is_dynamic=True)",
                "weight_granularity": "per_channel" + ("" if granularity == "per_channel" else
                                                       " (quant.granularity=per_tensor, dynamic's default, is not "
                                                       "applied: XNNPACK's dynamic kernels take per-channel weights)"),
                "convolutions": ("the quantizer's dynamic conv pattern (2-D, not depthwise, not followed by a ReLU)"
                                 if convolutions else "fp32 (quant.convolutions=false)")}
        return self._quantized(ctx, out, "dynamic", quantizer, calibrate=False, info=info)

    def build_static(self, ctx: BuildContext, out: Path) -> Artifact:
        _quiet_imports()
        import dataclasses

        from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import get_symmetric_quantization_config
        from torchao.quantization.pt2e import MinMaxObserver

        q = ctx.cfg.quant
        per_channel = q.granularity.value == "per_channel"
        config = get_symmetric_quantization_config(is_per_channel=per_channel)
        if q.method.value == "minmax":  # the config's own activation observer is the histogram one
            def minmax(spec):
                return dataclasses.replace(spec, observer_or_fake_quant_ctr=MinMaxObserver.with_args(eps=2 ** -12))

            config = dataclasses.replace(config, input_activation=minmax(config.input_activation),
                                         output_activation=minmax(config.output_activation))
        info = {"method": f"XNNPACKQuantizer get_symmetric_quantization_config(is_per_channel={per_channel})",
                "weight_granularity": q.granularity.value, "activation_ranges": q.method.value}
        return self._quantized(ctx, out, "static", xnnpack_quantizer().set_global(config), calibrate=True, info=info)

    # ------------------------------------------------------------------------- machine limit
    def peak_artifacts(self, out: Path, size: int, features: int, threads: int = 1) -> Dict[str, Path]:
        """bsb_hydra/bench/peak.py's kernels as .pte programs: "fp32" a size x size Linear without bias
        (a dynamic batch up to size), "int8" the same layer through XNNPACKQuantizer's static per-tensor config
        (calibrated on normal samples), "floor" a features -> features Linear at batch 1 (the empty call)."""
        _quiet_imports()
        import torch
        from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
        from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (XNNPACKQuantizer,
                                                                             get_symmetric_quantization_config)
        from executorch.exir import to_edge_transform_and_lower
        from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

        torch.manual_seed(0)
        gemm = torch.nn.Sequential(torch.nn.Linear(size, size, bias=False)).eval()
        floor = torch.nn.Sequential(torch.nn.Linear(features, features)).eval()
        x = torch.randn(size, size)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            # a dynamic batch (1..size), as every cell's program has: the worker may call it at any batch
            dyn = ({0: torch.export.Dim("batch", min=1, max=size)},)
            prepared = prepare_pt2e(torch.export.export(gemm, (x,), dynamic_shapes=dyn).module(),
                                    XNNPACKQuantizer().set_global(get_symmetric_quantization_config()))
            with torch.no_grad():
                prepared(x)
            int8 = convert_pt2e(prepared)
            out.mkdir(parents=True, exist_ok=True)
            paths = {}
            for name, module, example in (("fp32", gemm, x), ("int8", int8, x),
                                          ("floor", floor, torch.randn(1, features))):
                edge = to_edge_transform_and_lower(torch.export.export(module, (example,),
                                                                       dynamic_shapes=dyn if name != "floor" else None),
                                                   partitioner=[XnnpackPartitioner()])
                paths[name] = out / f"{name}.pte"
                paths[name].write_bytes(edge.to_executorch().buffer)
        return paths


def _version(name: str) -> str:
    from importlib import metadata

    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return ""
