"""A user's Keras model (``model=keras model.path=FILE.keras|FILE.h5|SAVEDMODEL_DIR``), measured with
the weights it holds (nothing is trained).

TensorFlow never enters the sweep process: one converter process (bsb_hydra/backends/tflite/keras_convert.py,
Keras 3, run by the convert server) loads the file and writes what each backend needs:
- on onnxruntime, an ONNX export by tf2onnx (cached under ``$BSB_CACHE_DIR/keras/``, else
  ``./.cache/bsb_hydra/keras/``: paths.cache_dir's default, which the model's config cannot read, by
  the file's SHA-256). Its image input is NCHW (tf2onnx's ``inputs_as_nchw``: the transpose is inside the
  graph), like every other model's, and so are its 4-D outputs (``outputs_as_nchw``: segmentation
  scores, images), as the tflite runner reads them; so the data, the fp32 probe, the task and ONNX
  Runtime's schemes (fp32, fp16, dynamic, static) are model=onnx's. That export is the model's fp32
  reference here.
- on tflite, TensorFlow's own TFLiteConverter from the Keras model: fp32, fp16, dynamic range, and
  full integer with a representative dataset of real training samples (``backend.int8_io``); QAT
  with tensorflow-model-optimization on a tf_keras rebuild of the model, in a TF_USE_LEGACY_KERAS=1
  process of its own (bsb_hydra/backends/tflite/keras_qat.py).
- on pytorch: unsupported, there is no torch module.

Loading is in Keras' safe mode: a Lambda layer's Python code (a .keras or .h5 file) is refused
unless ``model.allow_unsafe=true``; a SavedModel folder holds a TensorFlow graph, not Python code.
A file that is not a zip (.keras) or HDF5 (.h5), or that names a custom class whose code Keras would
need, is refused in one line before any work (``check_file``)."""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar, List, Optional

from omegaconf import MISSING

from bsb_hydra.config.base import ConfigError, InputError, positive
from bsb_hydra.config.model import ModelConfig
from bsb_hydra.models import MODELS

KERAS_SUFFIXES = (".keras", ".h5", ".hdf5")
CONVERT_MODULE = "bsb_hydra.backends.tflite.keras_convert"
EXPORT_TIMEOUT_S = 900
# The ONNX export's layout, in its cache file's name: 2 = 4-D outputs NCHW (1 left them NHWC).
EXPORT_VERSION = 2


@dataclass
class KerasModelConfig(ModelConfig):
    name: str = "keras"
    path: str = MISSING  # a .keras or .h5 file, or a SavedModel folder
    # Per-sample input shape (without the batch, as the Keras model takes it: [224, 224, 3]) fixing
    # dims the model leaves dynamic; null = the model's own.
    input_shape: Optional[List[int]] = None
    # Keras' safe mode off: a Lambda layer's Python code in the file runs when it loads.
    allow_unsafe: bool = False
    family: ClassVar[str] = "keras_file"
    task: ClassVar[Optional[str]] = None  # what the outputs mean is inferred (task=auto) or given
    source_kind: ClassVar[str] = "keras"
    torch_module: ClassVar[bool] = False

    def __post_init__(self) -> None:
        if self.checkpoint:
            raise ConfigError(f"model.checkpoint={self.checkpoint!r} does not apply to model=keras: the file at "
                              "model.path holds the weights")
        for i, d in enumerate(self.input_shape or []):
            positive(f"model.input_shape[{i}]", d)

    @classmethod
    def label_of(cls, cfg) -> str:
        p = Path(str(cfg.path).rstrip("/"))
        return p.stem if p.suffix in KERAS_SUFFIXES else p.name

    def needs_training(self, labelled: bool) -> bool:
        return False

    def onnx_export(self) -> Path:
        return onnx_export(self)

    def fixed_input_shape(self):
        from bsb_hydra.models.onnx import signature

        sig = signature(str(self.onnx_export()), None)
        return sig.shape if len(sig.inputs) == 1 else None

    def input_specs(self):
        from bsb_hydra.models.onnx import signature

        return signature(str(self.onnx_export()), None).inputs

    def source_ref(self) -> str:
        kind, digest = keras_source(self.path)
        return f"{self.path} ({kind}) sha256 {digest}"


def keras_source(path: str):
    """(kind, SHA-256) of a Keras file or a SavedModel folder (its saved_model.pb and variables);
    a one-line InputError for anything else."""
    from bsb_hydra.train import sha256_file

    p = Path(str(path)).expanduser()
    if p.is_dir():
        if not (p / "saved_model.pb").is_file():
            raise InputError(f"model.path={str(path)!r} is a folder without saved_model.pb: not a SavedModel "
                             f"(give a SavedModel folder, or a {', '.join(KERAS_SUFFIXES)} file)")
        import hashlib

        h = hashlib.sha256()
        for f in sorted(q for q in p.rglob("*") if q.is_file()):
            h.update(str(f.relative_to(p)).encode() + b"\0" + sha256_file(f).encode())
        return "saved_model", h.hexdigest()
    if not p.is_file():
        raise InputError(f"model.path={str(path)!r}: no such file or folder")
    if p.suffix.lower() not in KERAS_SUFFIXES:
        raise InputError(f"model.path={str(path)!r} is not a Keras file: give a .keras or .h5 file or a SavedModel "
                         "folder (a .tflite file is model=tflite's, an .onnx file model=onnx's)")
    kind = "keras" if p.suffix.lower() == ".keras" else "h5"
    check_file(p, kind, str(path))
    return kind, sha256_file(p)


HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"


def check_file(p: Path, kind: str, given: str) -> None:
    """Before any work, without TensorFlow: a .keras file is a zip archive with the model's
    config.json, an .h5 file is HDF5 (its signature at 0 or a user-block offset), and neither names a
    custom class (a layer subclass registered with keras.saving.register_keras_serializable, say)
    whose code Keras would need to rebuild the model. A one-line InputError otherwise."""
    import zipfile

    config = None
    if kind == "keras":
        try:
            with zipfile.ZipFile(p) as z:
                config = json.loads(z.read("config.json"))
        except (zipfile.BadZipFile, KeyError, ValueError, OSError) as e:
            what = "not a zip archive" if isinstance(e, zipfile.BadZipFile) else f"no readable config.json ({e})"
            raise InputError(f"model.path={given!r} is not a Keras file: a .keras file is a zip archive holding the "
                             f"model's config.json and weights, and this one is {what}") from None
    else:
        with open(p, "rb") as f:
            head = f.read(1 << 16)
        if not any(head[o:o + 8] == HDF5_SIGNATURE for o in (0, 512, 1024, 2048, 4096, 8192, 16384, 32768)):
            raise InputError(f"model.path={given!r} is not an HDF5 file (no HDF5 signature): an .h5 Keras model is "
                             "what model.save('FILE.h5') writes")
        try:
            import h5py
        except ImportError:  # Keras says what it can do
            return
        try:
            with h5py.File(p, "r") as h:
                raw = h.attrs.get("model_config")
        except Exception as e:  # noqa: BLE001 - a damaged file: h5py's reason
            raise InputError(f"model.path={given!r}: the HDF5 file cannot be read ({type(e).__name__}: "
                             f"{' '.join(str(e).split())[:200]})") from None
        try:
            config = json.loads(raw) if raw is not None else None  # None: weights only, Keras says so
        except ValueError:
            config = None
    name = _custom_class(config, kind) if config is not None else None
    if name:
        from bsb_hydra.backends.tflite.keras_convert import custom_class_reason

        raise InputError(f"model.path={given!r}: {custom_class_reason(name)}")


def _importable(module) -> bool:
    """Keras' own module, or one of an installed package (KerasHub's layers, say)."""
    import importlib.util

    if not module or module == "__main__":
        return False
    if module == "keras" or module.startswith("keras."):
        return True
    try:
        return importlib.util.find_spec(module.split(".")[0]) is not None
    except (ImportError, ValueError):
        return False


def _custom_class(config, kind: str) -> Optional[str]:
    """The first class in a saved model's config that is not Keras' own: in a .keras file, an object
    whose module is not keras' (a registered one's module is null); in an .h5 file, a registered
    name ``package>Class``."""
    stack = [config]
    while stack:
        o = stack.pop()
        if isinstance(o, dict):
            if isinstance(o.get("class_name"), str):
                module = o.get("module", "keras")
                if kind == "keras" and "module" in o and not _importable(module):
                    return o.get("registered_name") or o["class_name"]
                if ">" in o["class_name"]:
                    return o["class_name"]
            stack.extend(reversed(list(o.values())))
        elif isinstance(o, list):
            stack.extend(reversed(o))
    return None


def converter_env(legacy: bool = False) -> dict:
    """The converter process's environment: Keras 3 (no TF_USE_LEGACY_KERAS), CPU only; ``legacy``:
    TF_USE_LEGACY_KERAS=1 (tf.keras is tf_keras, which tensorflow-model-optimization's QAT needs)."""
    env = {k: v for k, v in os.environ.items() if k != "TF_USE_LEGACY_KERAS"}
    if legacy:
        env["TF_USE_LEGACY_KERAS"] = "1"
    env.update(CUDA_VISIBLE_DEVICES="-1", TF_CPP_MIN_LOG_LEVEL=os.environ.get("TF_CPP_MIN_LOG_LEVEL", "2"))
    return env


def run_converter(req: dict, work: Path, what: str, module: str = CONVERT_MODULE, legacy: bool = False) -> dict:
    """One request to the Keras converter process (``module``: keras_convert, or keras_qat with
    ``legacy`` tf_keras); its info (JSON) back, or a one-line error: the converter's own reason (a
    Lambda refused in safe mode, a file Keras cannot read). A model the converter cannot take this
    way (``{"unsupported": reason}``) raises Unsupported: the cell ends unsupported with that reason."""
    from bsb_hydra.backends.tflite import convert_server
    from bsb_hydra.backends.base import Unsupported

    work.mkdir(parents=True, exist_ok=True)
    info = work / f"{what}_info.json"
    info.unlink(missing_ok=True)
    req_path = work / f"{what}_request.json"
    req_path.write_text(json.dumps({**req, "info_out": str(info)}))
    code, _ = convert_server.run_request(module, req_path, converter_env(legacy), int(req.get("threads", 1)),
                                         EXPORT_TIMEOUT_S)
    result = json.loads(info.read_text()) if info.is_file() else {}
    if code == 0 and "unsupported" in result:
        raise Unsupported(f"model.path={req['path']!r}: {what}: {result['unsupported']}")
    if code != 0 or "error" in result or not result:
        log = work / "convert.log"
        reason = result.get("error") or (f"the Keras converter {convert_server.exit_description(code)}; log: {log}"
                                         if code < 0 else f"the Keras converter exited {code}; log: {log}")
        raise InputError(f"model.path={req['path']!r}: {what}: {reason}")
    return result


def onnx_export(cfg) -> Path:
    """The model as ONNX (tf2onnx, NCHW image input), written once per file content under the cache."""
    from bsb_hydra.locks import file_lock

    kind, digest = keras_source(cfg.path)
    cache = Path(os.environ.get("BSB_CACHE_DIR") or Path.cwd() / ".cache" / "bsb_hydra") / "keras"
    out = cache / f"{digest[:24]}{'-unsafe' if cfg.allow_unsafe else ''}-v{EXPORT_VERSION}.onnx"
    if out.is_file():
        return out
    with file_lock(cache / f"{out.name}.lock"):
        if out.is_file():
            return out
        work = cache / f"{out.stem}.work"
        run_converter({"op": "onnx", "path": str(Path(str(cfg.path)).expanduser()), "kind": kind,
                       "allow_unsafe": bool(cfg.allow_unsafe), "input_shape": list(cfg.input_shape or []) or None,
                       "out": str(out)}, work, "ONNX export")
    return out


@MODELS.register("keras", schema=KerasModelConfig)
def build(cfg, input_shape, num_classes):
    """Not a torch module: the ONNX export is the fp32 model of the sweep process (probe, task, ORT);
    the tflite backend converts the Keras file itself."""
    from bsb_hydra.train import Fp32Model

    kind, digest = keras_source(cfg.path)
    path = onnx_export(cfg)
    return Fp32Model(None, "file", f"keras-{digest[:20]}", str(path), digest, onnx_path=str(path))
