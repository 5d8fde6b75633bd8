"""backend=tflite's builds (the sweep process's side): the TFLite (LiteRT) backend. The trained PyTorch weights are copied into a Keras twin of the model
(``keras_twins``), so every backend measures the same weights; TensorFlow's own converter makes
the ``.tflite`` artifact, and the worker runs it with ``ai_edge_litert`` only (XNNPACK, the
device's thread count).

fp32    TFLiteConverter, no optimisation;
fp16    float16 weights (Optimize.DEFAULT + supported_types float16), dequantized at load;
dynamic dynamic-range: int8 weights, activations quantized at run time by the hybrid kernels;
static  full-integer int8 with a representative dataset of real training samples, per-channel
        weights (per_tensor through the converter's per-channel switch); float or int8 model I/O;
qat     tensorflow-model-optimization QAT of the twin, fine-tuned on the training split, converted
        to full-integer int8.

TensorFlow is imported only in the converter's own process (``tflite_convert``), started with
TF_USE_LEGACY_KERAS=1 because tfmot needs tf_keras, once per sweep process and thread count
(``convert_server``); this module imports numpy only."""
from __future__ import annotations

import importlib.util
import json
import os
import platform
from pathlib import Path
from typing import Any, Dict, List, Optional

import numpy as np

from bsb_hydra.backends.base import FAKE_QUANT_ELSEWHERE, Artifact, Backend, BuildContext, Unsupported
from bsb_hydra.backends.tflite import peak

REQUIRED = {"tensorflow": "tensorflow", "tf_keras": "tf-keras", "tensorflow_model_optimization":
            "tensorflow-model-optimization", "ai_edge_litert": "ai-edge-litert"}
LITERT_REQUIRED = {"litert_torch": "litert-torch", "ai_edge_quantizer": "ai-edge-quantizer", "ai_edge_litert":
                   "ai-edge-litert"}
# What the litert-torch path (bsb_hydra/backends/tflite/litert_convert.py) builds, and why not the rest.
LITERT_SCHEMES = ("fp32", "fp16", "dynamic", "static")
LITERT_NO = {"qat": "QAT on TFLite runs through tensorflow-model-optimization on a Keras twin, and this model has "
                    "none (the litert-torch path converts trained torch models; run QAT on pytorch or onnxruntime)",
             "auto": "quant=auto on TFLite keeps layers float through TensorFlow's converter's deny list on a Keras "
                     "twin; the litert-torch path has no per-layer choice wired yet"}


def is_keras(cfg) -> bool:
    """model=keras: TensorFlow's converter on the user's Keras model (no twin, no litert-torch)."""
    return getattr(type(cfg.model), "source_kind", "") == "keras"


def is_tflite_file(cfg) -> bool:
    """model=tflite: a user's .tflite, measured as it is or quantized by ai-edge-quantizer."""
    return getattr(type(cfg.model), "source_kind", "") == "tflite"


def uses_litert(cfg) -> bool:
    """Whether this cell's .tflite comes from litert-torch (else from a Keras twin)."""
    from bsb_hydra.backends.tflite.keras_twins import TWINS

    choice = cfg.backend.converter
    return choice == "litert_torch" or (choice == "auto" and cfg.model.name not in TWINS)
CONVERT_TIMEOUT_S = 3600


class TfliteBackend(Backend):
    name = "tflite"
    suffix = ".tflite"
    no_fp16_fallback_reason = ("the converter's deny list keeps the chosen ops in fp32; fp16 weights are a "
                               "whole-model converter option, not a per-op one")
    no_onnx_reason = ("converts torch models (Keras twins, litert-torch); ONNX -> TFLite needs onnx2tf, whose releases "
                      "pin tensorflow 2.19, numpy 1.26 and onnx 1.19 (1.29.x) or need Python 3.12 (2.x), so it does "
                      "not install beside this lock")
    _NO_BERT_TWIN = ("there is no Keras twin of transformers' BertModel, and the litert-torch path is not wired for "
                     "it yet (an honest full-integer BERT also needs int8-safe attention masking); run the "
                     "transformer on pytorch or onnxruntime")
    no_scheme_reasons = {"int4_weight_only": (
        "the TFLite converter's options used here (tensorflow 2.21) write int8, fp16 or float weights; LiteRT's "
        "block-wise int4 weights come from the separate AI Edge Quantizer (now litert-quantizer), which is not "
        "in the lock; run int4 on onnxruntime or pytorch"), "fake_quant": FAKE_QUANT_ELSEWHERE}
    family_unsupported = {
        "transformer": dict.fromkeys(("fp32", "fp16", "dynamic", "static", "qat", "auto"), _NO_BERT_TWIN),
        "recurrent": {"auto": "the LSTM's twin is unrolled over seq_len steps, so each of its weights is a separate "
                              "op per step: there is no per-layer deny list to choose from; quant=auto runs the "
                              "vision models here"},
    }

    takes_keras_file = True  # TensorFlow's own converter, from the Keras model (bsb_hydra/backends/tflite/keras_convert.py)
    KERAS_SCHEMES = ("fp32", "fp16", "dynamic", "static", "qat")

    def unsupported_reason(self, cfg) -> Optional[str]:
        reason = super().unsupported_reason(cfg)
        if reason:
            return reason
        if is_keras(cfg):
            return self._keras_reason(cfg)
        if is_tflite_file(cfg):
            return self._file_reason(cfg)
        litert = uses_litert(cfg)
        needed = LITERT_REQUIRED if litert else REQUIRED
        missing = [pip for mod, pip in needed.items() if importlib.util.find_spec(mod) is None]
        if litert and "litert-torch" in missing and platform.machine() in ("aarch64", "arm64"):
            return (f"model={cfg.model.name} has no Keras twin, and its TFLite path (litert-torch) is x86_64-only here: "
                    "litert-converter 0.5.0, which litert-torch needs, has no aarch64 wheel on PyPI")
        if missing:
            return (f"backend=tflite needs {', '.join(missing)}: install the extra with "
                    "`pip install -c requirements/lock.txt -e '.[tflite]'` (make setup does)")
        from bsb_hydra.backends.tflite.keras_twins import TWINS

        q = cfg.quant
        specs = cfg.model.input_specs()
        if specs and len(specs) > 1:
            return (f"model={cfg.model.name} takes {len(specs)} inputs ({', '.join(s.name for s in specs)}); the TFLite "
                    "path here (litert-torch, one example tensor per batch size) converts one-input models: run it "
                    "on onnxruntime or pytorch")
        if litert and getattr(cfg.model, "file_kind", lambda: None)() == "torchscript":
            return ("model.checkpoint is a TorchScript file: litert-torch converts through torch.export, which takes "
                    "a Python nn.Module, not TorchScript's compiled code; run it on onnxruntime or pytorch, or give "
                    "the module's code as model.target with a state_dict")
        if not litert and cfg.model.name not in TWINS:
            return (f"backend.converter=keras_twin: model={cfg.model.name} has no Keras twin "
                    f"(twins exist for {', '.join(sorted(TWINS))}); backend.converter=auto uses litert-torch")
        if q.scheme.value == "dynamic" and q.convolutions is False and not litert:
            return ("quant.convolutions=false on tflite (keras_twin): the converter's dynamic-range mode quantizes "
                    "every weight tensor, convolutions included; valid here: null or true (the litert-torch path, "
                    "backend.converter=litert_torch, takes false)")
        if litert and q.scheme.value in LITERT_NO:
            return f"quant={q.scheme.value} on tflite (litert-torch): {LITERT_NO[q.scheme.value]}"
        if q.scheme.value in ("static", "auto") and q.method.value != "minmax":
            return (f"quant.method={q.method.value}: the TFLite converter calibrates with min/max over the "
                    "representative dataset only; use quant.method=minmax on tflite")
        if cfg.model.family == "recurrent" and q.scheme.value == "qat":
            return ("model=lstm, quant=qat on tflite: tensorflow-model-optimization's QAT has no LSTM "
                    "support (quantize_model rejects the layer)")
        if cfg.backend.int8_io and q.scheme.value not in ("static", "qat"):
            return (f"backend.int8_io=true needs a full-integer scheme (static or qat), not "
                    f"quant={q.scheme.value}")
        return None

    def _keras_reason(self, cfg) -> Optional[str]:
        q = cfg.quant
        missing = [pip for mod, pip in REQUIRED.items() if importlib.util.find_spec(mod) is None]
        if missing:
            return (f"backend=tflite needs {', '.join(missing)}: install the extra with "
                    "`pip install -c requirements/lock.txt -e '.[tflite]'` (make setup does)")
        if q.scheme.value not in self.KERAS_SCHEMES:
            return (f"quant={q.scheme.value} on tflite for model=keras: its TFLiteConverter path here converts "
                    f"{', '.join(self.KERAS_SCHEMES)} (quant=auto is not wired for a user's Keras file yet)")
        if q.scheme.value == "qat" and Path(str(cfg.model.path)).expanduser().is_dir():
            return ("quant=qat on tflite for a SavedModel folder: it holds a TensorFlow graph, not Keras layers, and "
                    "tensorflow-model-optimization's QAT rebuilds a model from its layers; give the .keras or .h5 file")
        specs = cfg.model.input_specs()
        if specs and len(specs) > 1:
            return (f"model={cfg.model.name} takes {len(specs)} inputs; the TFLite conversion here feeds one: run it on "
                    "onnxruntime")
        if q.scheme.value == "static" and q.method.value != "minmax":
            return (f"quant.method={q.method.value}: the TFLite converter calibrates with min/max over the "
                    "representative dataset only; use quant.method=minmax on tflite")
        if cfg.backend.int8_io and q.scheme.value not in ("static", "qat"):
            return f"backend.int8_io=true needs a full-integer scheme (static or qat), not quant={q.scheme.value}"
        return None

    FILE_SCHEMES = ("fp32", "fp16", "dynamic", "static")

    def _file_reason(self, cfg) -> Optional[str]:
        """model=tflite: what ai-edge-quantizer makes of a float file (a quantized one: the model's scheme_reason)."""
        q = cfg.quant
        missing = [pip for mod, pip in {"ai_edge_quantizer": "ai-edge-quantizer", "ai_edge_litert": "ai-edge-litert"}.items()
                   if importlib.util.find_spec(mod) is None]
        if missing:
            return (f"backend=tflite needs {', '.join(missing)}: install the extra with "
                    "`pip install -c requirements/lock.txt -e '.[tflite]'` (make setup does)")
        if q.scheme.value not in self.FILE_SCHEMES:
            return (f"quant={q.scheme.value} on tflite for model=tflite: a .tflite file is measured as it is (fp32) or "
                    f"quantized by ai-edge-quantizer ({', '.join(self.FILE_SCHEMES[1:])}); QAT needs the model's "
                    "training graph (model=keras), and quant=auto is not wired for a .tflite")
        if cfg.model.facts().precision != "float":
            if cfg.backend.int8_io:
                return ("backend.int8_io=true: model.path is quantized already and measured with the model I/O it has "
                        "(int8 I/O or not is the file's)")
            return None
        n = len(cfg.model.facts().inputs)
        if q.scheme.value == "static" and n > 1:
            return (f"model.path takes {n} inputs; ai-edge-quantizer's calibration here feeds one: run static on "
                    "onnxruntime (its calibration feeds every input)")
        if q.scheme.value == "static" and q.method.value != "minmax":
            return (f"quant.method={q.method.value}: ai-edge-quantizer calibrates with min/max here; use "
                    "quant.method=minmax on tflite")
        if cfg.backend.int8_io and q.scheme.value != "static":
            return f"backend.int8_io=true needs a full-integer scheme (static), not quant={q.scheme.value}"
        return None

    def _quantize_file(self, ctx: BuildContext, scheme: str, out: Path) -> Artifact:
        """ai-edge-quantizer on the user's float .tflite, in the litert converter process."""
        from bsb_hydra.models.tflite import nhwc

        cfg = ctx.cfg
        work = ctx.workdir / "litert_convert"
        work.mkdir(parents=True, exist_ok=True)
        facts = cfg.model.facts()
        job = {"scheme": scheme, "out": str(out), "info_out": str(work / f"{scheme}_info.json")}
        req: Dict[str, Any] = {"given": cfg.model.float_file(), "input_shape": list(facts.inputs[0][1]),
                               "input_dtype": facts.inputs[0][2], "workdir": str(work),
                               "quant": {"granularity": getattr(cfg.quant, "granularity", None) and
                                         cfg.quant.granularity.value,
                                         "convolutions": getattr(cfg.quant, "convolutions", None)},
                               "int8_io": bool(cfg.backend.int8_io), "threads": cfg.device.threads, "outputs": [job]}
        if ctx.calibration is not None:
            x = ctx.calibration
            if x.ndim == 4 and nhwc(facts.inputs[0][1]):  # the data is NCHW, the file takes NHWC
                x = x.transpose(0, 2, 3, 1)
            np.save(work / "calibration.npy", np.ascontiguousarray(x, dtype=np.float32))
            req["calibration"] = str(work / "calibration.npy")
        req_path = work / "request.json"
        req_path.write_text(json.dumps(req))
        self._run_converter("bsb_hydra.backends.tflite.litert_convert", req_path, work, [job], dict(os.environ))
        return self._artifact_of(ctx, out, json.loads(Path(job["info_out"]).read_text()))

    def given_input_dtype(self, path: Path) -> str:
        from bsb_hydra.models.tflite import file_facts

        dtype = file_facts(str(path), "the artifact").inputs[0][2]
        return "int8" if dtype in ("int8", "uint8") else "float32"

    def _keras(self, ctx: BuildContext, scheme: str, out: Path) -> Artifact:
        """TensorFlow's TFLiteConverter on the user's Keras model, in the Keras converter process."""
        from bsb_hydra.models.keras import keras_source, run_converter

        cfg = ctx.cfg
        work = ctx.workdir / "keras_convert"
        work.mkdir(parents=True, exist_ok=True)
        kind, _ = keras_source(cfg.model.path)
        req: Dict[str, Any] = {"op": "tflite", "scheme": scheme, "path": str(Path(str(cfg.model.path)).expanduser()),
                               "kind": kind, "allow_unsafe": bool(cfg.model.allow_unsafe), "out": str(out),
                               "input_shape": list(cfg.model.input_shape or []) or None,
                               "int8_io": bool(cfg.backend.int8_io), "threads": cfg.device.threads}
        if scheme in ("static", "qat"):
            np.save(work / "calibration.npy", ctx.calibration)
            req["calibration"] = str(work / "calibration.npy")
        if scheme != "qat":
            result = run_converter(req, work, f"TFLite conversion ({scheme})")
        else:  # tfmot on a tf_keras rebuild, in a TF_USE_LEGACY_KERAS=1 process (bsb_hydra/backends/tflite/keras_qat.py)
            from bsb_hydra.train import plain_dict, training_subset

            x, y = training_subset(ctx.data, cfg.quant.limit_samples, cfg.seed)
            np.save(work / "train_x.npy", x)
            np.save(work / "train_y.npy", y)
            req.update(op="qat", quant=plain_dict(cfg.quant), seed=cfg.seed, train_x=str(work / "train_x.npy"),
                       train_y=str(work / "train_y.npy"))
            result = run_converter(req, work, "QAT (tensorflow-model-optimization)",
                                   module="bsb_hydra.backends.tflite.keras_qat", legacy=True)
            for i, loss in enumerate(result.get("curves", {}).get("qat_loss", [])):
                print(f"  qat (tfmot) epoch {i + 1}: loss {loss:.4f}", flush=True)
        return self._artifact_of(ctx, out, result)

    def runner_settings(self, cfg, engine: str) -> Dict[str, Any]:
        return {"xnnpack": cfg.backend.xnnpack, "xnnpack_latest_features": cfg.backend.xnnpack_latest_features}

    peak_kernels = peak.KERNELS
    peak_artifact_kernels = peak.ARTIFACT_KERNELS

    def peak_artifacts(self, out: Path, size: int, features: int, threads: int = 1) -> Dict[str, Path]:
        return peak.peak_artifacts(out, size, features)

    def peak_settings(self, arch: str) -> Dict[str, Any]:
        return {"xnnpack": True}  # backend.xnnpack's default

    fp32_independent = ("int8_io", "xnnpack", "xnnpack_latest_features")  # full-integer schemes' and the runner's
    fp32_packages = ("tensorflow", "tf-keras", "ai-edge-litert", "litert-torch", "ai-edge-quantizer")

    def fp32_cache_parts(self, cfg) -> Dict[str, Any]:
        parts = super().fp32_cache_parts(cfg)
        if is_keras(cfg):
            parts["converter"] = "keras"
        elif is_tflite_file(cfg):
            parts["converter"] = "tflite_file"
        elif uses_litert(cfg):  # one file per batch size
            parts.update(converter="litert_torch", batches=sorted({1, *cfg.benchmark.batch_sizes}))
        else:
            parts["converter"] = "keras_twin"
        return parts

    def fp32_cached(self, ctx: BuildContext, art: Artifact) -> None:
        self._built["fp32"] = art  # the scheme converts alone; on litert-torch, from these float files

    def __init__(self) -> None:
        self._built: Dict[str, Artifact] = {}
        self._mixed: Dict[frozenset, Artifact] = {}  # quant=auto's builds, by their set of float nodes
        self._layers = None

    def _convert(self, ctx: BuildContext, jobs: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
        """Run ``tflite_convert`` in its own process (TensorFlow and tf_keras never enter this one)
        for one or more jobs on the same twin ({"scheme", "out"}, plus "deny_nodes" for the
        scheme "mixed"); returns each job's info.json content."""
        import torch

        from bsb_hydra.train import plain_dict

        cfg = ctx.cfg
        work = ctx.workdir / "tflite_convert"
        work.mkdir(parents=True, exist_ok=True)
        weights = work / "torch_weights.npz"
        np.savez(weights, **{k: v.detach().cpu().numpy() for k, v in ctx.model.state_dict().items()})
        jobs = [{**j, "out": str(j["out"]), "info_out": str(work / f"{j['scheme']}{i}_info.json")}
                for i, j in enumerate(jobs)]
        req: Dict[str, Any] = {
            "model": cfg.model.name, "model_cfg": plain_dict(cfg.model), "input_shape": list(ctx.example.shape[1:]),
            "num_classes": int(ctx.data.num_classes), "weights": str(weights), "quant": plain_dict(cfg.quant),
            "int8_io": bool(cfg.backend.int8_io), "seed": cfg.seed, "threads": torch.get_num_threads(),
            "outputs": jobs,
        }
        if ctx.calibration is not None:
            np.save(work / "calibration.npy", ctx.calibration)
            req["calibration"] = str(work / "calibration.npy")
        if any(j["scheme"] == "qat" for j in jobs):
            from bsb_hydra.train import training_subset

            x, y = training_subset(ctx.data, cfg.quant.limit_samples, cfg.seed)
            np.save(work / "train_x.npy", x)
            np.save(work / "train_y.npy", y)
            req.update({"train_x": str(work / "train_x.npy"), "train_y": str(work / "train_y.npy")})
        req_path = work / "request.json"
        req_path.write_text(json.dumps(req))
        env = dict(os.environ, TF_USE_LEGACY_KERAS="1", CUDA_VISIBLE_DEVICES="-1",  # CPU only, no CUDA probing
                   TF_CPP_MIN_LOG_LEVEL=os.environ.get("TF_CPP_MIN_LOG_LEVEL", "2"))
        self._run_converter("bsb_hydra.backends.tflite.tflite_convert", req_path, work, jobs, env)
        return [json.loads(Path(j["info_out"]).read_text()) for j in jobs]

    @staticmethod
    def _run_converter(module: str, req_path: Path, work: Path, jobs, env) -> None:
        """The conversion, by the sweep process's long-lived converter process for this module and
        thread count (bsb_hydra/backends/tflite/convert_server.py); its failure raises with the converter's
        own last lines as the reason, or with the signal that killed it. Its output is in
        ``work/convert.log``."""
        from bsb_hydra.backends.tflite import convert_server

        env = {**env, "CUDA_VISIBLE_DEVICES": "-1", "TF_CPP_MIN_LOG_LEVEL": os.environ.get("TF_CPP_MIN_LOG_LEVEL", "2")}
        threads = int(json.loads(Path(req_path).read_text()).get("threads", 1))
        try:
            code, _ = convert_server.run_request(module, req_path, env, threads, CONVERT_TIMEOUT_S)
        except TimeoutError as e:
            raise RuntimeError(f"TFLite conversion ({', '.join(j['scheme'] for j in jobs)}): {e}") from None
        text = (work / "convert.log").read_text(errors="replace") if (work / "convert.log").is_file() else ""
        lines = [line for line in text.splitlines() if line.startswith(("  qat", "  litert"))]  # its progress lines
        if lines:
            print("\n".join(lines), flush=True)
        if code < 0:  # a signal (the OOM killer's SIGKILL): the log's last line is only what ran before it
            tail = text.strip().splitlines()[-15:]
            raise RuntimeError(f"TFLite conversion ({', '.join(j['scheme'] for j in jobs)}): the converter was "
                               f"{convert_server.exit_description(code)}; log: {work / 'convert.log'}\n"
                               + "\n".join(tail))
        if code != 0 or not all(Path(j["out"]).is_file() for j in jobs):
            tail = text.strip().splitlines()[-15:]
            last = next((line for line in reversed(tail) if line.strip() and not line.startswith(" ")), "") or \
                next((line for line in reversed(tail) if line.strip()), "")
            raise RuntimeError(f"TFLite conversion ({', '.join(j['scheme'] for j in jobs)}) exited "
                               f"{code}: {last.strip()[:300]}\n" + "\n".join(tail))

    def _artifact_of(self, ctx: BuildContext, out: Path, result: Dict[str, Any]) -> Artifact:
        # int8 model I/O, else what the data is: float32 images or int64 token ids (fed as int32)
        return Artifact(out, "int8" if result["input_dtype"] == "int8" else ctx.input_dtype,
                        result.get("info", {}), curves=result.get("curves", {}))

    def _artifact(self, ctx: BuildContext, scheme: str, out: Path) -> Artifact:
        if is_keras(ctx.cfg):
            return self._keras(ctx, scheme, out)
        if is_tflite_file(ctx.cfg):  # fp32 and a quantized file's own scheme are given (Backend.build)
            return self._quantize_file(ctx, scheme, out)
        if scheme not in self._built:
            wanted = ctx.cfg.quant.scheme.value
            schemes = [scheme]
            if scheme == "fp32" and wanted not in ("fp32", "auto"):  # the pipeline asks for its scheme next
                schemes.append(wanted)
            paths = [out] + [out.with_name(f"{s}{self.suffix}") for s in schemes[1:]]
            jobs = [{"scheme": s, "out": o} for s, o in zip(schemes, paths)]
            results = self._litert(ctx, jobs) if uses_litert(ctx.cfg) else self._convert(ctx, jobs)
            for s, o, r in zip(schemes, paths, results):
                self._built[s] = self._artifact_of(ctx, o, r)
        return _copied(self._built[scheme], out)

    def _litert(self, ctx: BuildContext, jobs: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
        """litert-torch + ai-edge-quantizer in their own process (litert_convert): the torch model goes
        there as one ExportedProgram per batch size (litert-torch converts at a fixed batch)."""
        import torch

        cfg = ctx.cfg
        work = ctx.workdir / "litert_convert"
        work.mkdir(parents=True, exist_ok=True)
        exported, floats = {}, self._float_files()
        if floats is None:  # litert-torch converts the exported programs to float files first
            with torch.inference_mode():
                model = ctx.model.eval()
            for b in sorted({1, *cfg.benchmark.batch_sizes}):
                x = torch.from_numpy(np.ascontiguousarray(np.repeat(ctx.example[:1], b, axis=0)))
                path = work / f"exported_b{b}.pt2"
                try:
                    program = torch.export.export(model, (x,))
                except Exception as e:  # data-dependent control flow (a detector's NMS), untraceable code
                    first = str(e).strip().splitlines()[0][:300] if str(e).strip() else ""
                    raise Unsupported(f"quant={cfg.quant.scheme.value} on tflite: litert-torch converts through "
                                      f"torch.export, which cannot export model={cfg.model.name} at batch {b} "
                                      f"({type(e).__name__}: {first}); run it on onnxruntime") from None
                torch.export.save(program, str(path))
                exported[str(b)] = str(path)
        jobs = [{**j, "out": str(j["out"]), "info_out": str(work / f"{j['scheme']}{i}_info.json")}
                for i, j in enumerate(jobs)]
        req: Dict[str, Any] = {"exported": exported, "floats": floats, "input_shape": list(ctx.example.shape[1:]),
                               "input_dtype": str(ctx.example.dtype), "workdir": str(work),
                               "quant": {"granularity": getattr(cfg.quant, "granularity", None) and
                                         cfg.quant.granularity.value,
                                         "convolutions": getattr(cfg.quant, "convolutions", None)},
                               "int8_io": bool(cfg.backend.int8_io), "threads": cfg.device.threads, "outputs": jobs}
        if ctx.calibration is not None:
            np.save(work / "calibration.npy", ctx.calibration)
            req["calibration"] = str(work / "calibration.npy")
        req_path = work / "request.json"
        req_path.write_text(json.dumps(req))
        self._run_converter("bsb_hydra.backends.tflite.litert_convert", req_path, work, jobs, dict(os.environ))
        return [json.loads(Path(j["info_out"]).read_text()) for j in jobs]

    def _float_files(self) -> Optional[Dict[str, str]]:
        """{batch: file} of the fp32 artifact when it came from the cache (bsb_hydra/artifact_cache.py):
        the quantizer starts from them, and litert-torch does not convert the model again."""
        fp32 = self._built.get("fp32")
        manifest = Path(str(fp32.path) + ".batches.json") if fp32 is not None else None
        if manifest is None or not manifest.is_file():
            return None
        return {b: str(Path(fp32.path).parent / name) for b, name in json.loads(manifest.read_text()).items()}

    def build_fp32(self, ctx: BuildContext, out: Path) -> Artifact:
        return self._artifact(ctx, "fp32", out)

    def build_fp16(self, ctx: BuildContext, out: Path) -> Artifact:
        return self._artifact(ctx, "fp16", out)

    def build_dynamic(self, ctx: BuildContext, out: Path) -> Artifact:
        return self._artifact(ctx, "dynamic", out)

    def build_static(self, ctx: BuildContext, out: Path) -> Artifact:
        return self._artifact(ctx, "static", out)

    def build_qat(self, ctx: BuildContext, out: Path) -> Artifact:
        return self._artifact(ctx, "qat", out)

    # quant=auto (bsb_hydra/mixed.py): the converter's weight ops (CONV_2D, DEPTHWISE_CONV_2D,
    # FULLY_CONNECTED) by node name; the chosen ones stay float through the QuantizationDebugger's
    # deny list. TensorFlow starts once for the layer list and once for every build the analysis
    # needs (prebuild_mixed), then once per search trial it has not built.
    def mixed_layers(self, ctx: BuildContext):
        if self._layers is None:
            work = ctx.workdir / "tflite_convert"
            (result,) = self._convert(ctx, [{"scheme": "layers", "out": work / "layers.npz"}])
            w = np.load(work / "layers.npz")
            self._layers = {d["name"]: (w[d["key"]], d["axis"]) for d in result["layers"]}
        return self._layers

    def prebuild_mixed(self, ctx: BuildContext, float_sets: List[List[str]]) -> None:
        """Every build of ``float_sets`` not built yet, in one converter process."""
        workdir = ctx.workdir / "tflite_mixed"
        todo = [sorted(f) for f in {frozenset(f) for f in float_sets} if frozenset(f) not in self._mixed]
        if not todo:
            return
        workdir.mkdir(parents=True, exist_ok=True)
        jobs = [{"scheme": "mixed", "out": workdir / f"mixed{len(self._mixed) + i}{self.suffix}", "deny_nodes": f}
                for i, f in enumerate(todo)]
        for job, r in zip(jobs, self._convert(ctx, jobs)):
            self._mixed[frozenset(job["deny_nodes"])] = self._artifact_of(ctx, job["out"], r)

    def build_mixed(self, ctx: BuildContext, out: Path, float_layers) -> Artifact:
        self.prebuild_mixed(ctx, [list(float_layers)])
        return _copied(self._mixed[frozenset(float_layers)], out)


def _copied(art: Artifact, out: Path) -> Artifact:
    """``art`` at ``out`` (a copy of the file when it was built elsewhere)."""
    import dataclasses
    import shutil

    if Path(art.path) == Path(out):
        return art
    shutil.copyfile(art.path, out)
    return dataclasses.replace(art, path=Path(out), info=dict(art.info))
