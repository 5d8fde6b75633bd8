"""The cell's measured artifact as an MLflow 3 LoggedModel, and its data as MLflow datasets.

A cell's run gets one LoggedModel, created as soon as the artifact is built (status PENDING) and
recorded as the run's output: every metric the cell logs after that carries its ``model_id``, so the
experiment's Models tab lists each artifact with its size, quality and latency side by side. Its
files are stored with it at the end (the ``log`` stage) and it is finalized READY when the cell
ends ok, FAILED when it does not (a cell that fails while being measured keeps its PENDING model
FAILED, with what was measured until then).

What the model holds: ONNX artifacts in MLflow's onnx flavor (``mlflow.onnx.load_model`` and
pyfunc read them; the file is the one measured, re-serialized by ``onnx.save_model``: the tag
``same_bytes_as_measured`` says whether the bytes are identical); every other format (.tflite,
ExecuTorch .pte, OpenVINO IR .xml+.bin, the pytorch backend's AOTInductor .pt2 package or
TorchScript file) as the measured files themselves under ``files/`` with an MLmodel file naming
them (flavor ``bsb_hydra``: format, runtime, files). MLflow's pytorch flavor does not apply to what
is measured: it saves an eager ``nn.Module`` (pickled, or re-exported), not the compiled package the
pytorch cells time.

The test split and, for the schemes that calibrate, the calibration samples are logged as run inputs
(``mlflow.log_inputs``: name, digest, source, schema, rows) and the quality metrics name the test
split as their dataset."""
from __future__ import annotations

import hashlib
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any, Dict, List, Optional

FLAVOR = "bsb_hydra"  # the MLmodel flavor of the files a non-ONNX cell measured


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def artifact_format(art) -> str:
    """What the measured file is, from its name: onnx, tflite, pte, openvino_ir, pt2 (an
    AOTInductor package), torchscript (.pt)."""
    suffix = Path(art.path).suffix.lower()
    return {".onnx": "onnx", ".tflite": "tflite", ".pte": "pte", ".xml": "openvino_ir", ".pt2": "pt2",
            ".pt": "torchscript"}.get(suffix, suffix.lstrip(".") or "file")


# What MLflow refuses in a LoggedModel's name (a model file's name, a cell id, can hold a dot).
_NOT_IN_NAMES = re.compile(r"""[/:.%"']""")


def model_name(cell: str) -> str:
    """The cell id as a LoggedModel name: the characters MLflow refuses there become '_' (the tag
    ``cell`` keeps the id as it is)."""
    return _NOT_IN_NAMES.sub("_", cell)


def start(client, run_id: str, experiment_id: str, cell: str, cfg, art) -> str:
    """The cell's LoggedModel (PENDING), recorded as the run's output at step 0. Returns its id."""
    from mlflow.entities import LoggedModelOutput

    tags = {"cell": cell, "backend": cfg.backend.name, "quant": cfg.quant.scheme.value, "format": artifact_format(art),
            "size_bytes": str(art.size_bytes) if not art.simulated else "", "simulated": str(art.simulated).lower()}
    model = client.create_logged_model(experiment_id, name=model_name(cell), source_run_id=run_id, model_type=artifact_format(art),
                                       tags={k: v for k, v in tags.items() if v})
    client.log_outputs(run_id, [LoggedModelOutput(model.model_id, step=0)])
    return model.model_id


def _pins(*dists: str) -> List[str]:
    from importlib.metadata import PackageNotFoundError, version

    out = []
    for d in dists:
        try:
            out.append(f"{d}=={version(d)}")
        except PackageNotFoundError:
            pass
    return out


def store_files(client, model_id: str, run_id: str, art, runtime: str) -> Dict[str, str]:
    """The measured files into the LoggedModel (its artifact folder). Returns tags for it."""
    from mlflow.models import Model

    fmt = artifact_format(art)
    model = client.get_logged_model(model_id)
    meta = Model(artifact_path=model.artifact_location, model_uuid=model_id, run_id=run_id, model_id=model_id)
    tags = {"artifact_sha256": _sha256(Path(art.path))}
    with tempfile.TemporaryDirectory(prefix="bsb_model_") as tmp:
        local = Path(tmp) / "model"
        if fmt == "onnx":
            import mlflow.onnx
            import onnx

            mlflow.onnx.save_model(onnx.load(str(art.path)), str(local), mlflow_model=meta,
                                   pip_requirements=_pins("onnx", "onnxruntime"),
                                   save_as_external_data=Path(art.path).stat().st_size >= (1 << 31))
            saved = local / "model.onnx"
            tags["same_bytes_as_measured"] = str(saved.is_file() and _sha256(saved) == tags["artifact_sha256"]).lower()
        else:
            (local / "files").mkdir(parents=True)
            names = []
            for p in (Path(art.path), *map(Path, art.companions)):
                shutil.copyfile(p, local / "files" / p.name)
                names.append(f"files/{p.name}")
            meta.add_flavor(FLAVOR, format=fmt, runtime=runtime, files=names, input_dtype=art.input_dtype,
                            simulated=art.simulated)
            meta.save(str(local / "MLmodel"))
            tags["same_bytes_as_measured"] = "true"
        client.log_model_artifacts(model_id, str(local))
    client.set_logged_model_tags(model_id, tags)
    return tags


def finish(client, model_id: str, ok: bool) -> None:
    from mlflow.entities import LoggedModelStatus

    client.finalize_logged_model(model_id, LoggedModelStatus.READY if ok else LoggedModelStatus.FAILED)


# ----------------------------------------------------------------------------------- datasets
def _dataset(name: str, digest: str, arrays: Dict[str, Any], rows: int, source: Dict[str, str]):
    """An MLflow dataset of metadata only (the data stays where bsb_hydra read it): name, digest,
    where it came from, the schema of its inputs and its number of rows."""
    import numpy as np
    from mlflow.data.code_dataset_source import CodeDatasetSource
    from mlflow.data.meta_dataset import MetaDataset
    from mlflow.types.schema import Schema, TensorSpec

    class Rows(MetaDataset):  # MetaDataset with a profile: its number of rows, shown by the UI
        @property
        def profile(self) -> Optional[Any]:
            return {"num_rows": rows}

        def to_dict(self) -> Dict[str, str]:
            import json

            return {**super().to_dict(), "profile": json.dumps(self.profile)}

    schema = Schema([TensorSpec(np.dtype(a.dtype), (-1, *a.shape[1:]), k) for k, a in arrays.items()
                     if hasattr(a, "dtype") and hasattr(a, "shape")])  # boxes of a detection split: no tensor
    return Rows(CodeDatasetSource(source), name=name, digest=digest, schema=schema)


def _arrays(x) -> Dict[str, Any]:
    from bsb_hydra.feeds import Feeds

    return dict(x.arrays) if isinstance(x, Feeds) else {"input": x}


def test_dataset(ds, digest: str):
    """The test split the cell was scored on (digest: scoring.test_set_digest, the tag test_set_digest)."""
    arrays = _arrays(ds.x_test)
    rows = len(next(iter(arrays.values())))
    if ds.labelled:
        arrays["labels"] = ds.y_test
    return _dataset(f"{ds.name}-test", digest, arrays, rows,
                    {"loader": f"bsb_hydra data={ds.name}", "source": ds.source, "split": ds.test_split,
                     "transform": ds.transform or "", "labelled": str(ds.labelled).lower()})


def calibration_dataset(ds, indices):
    """The calibration samples: rows ``indices`` of the training split (calibration_indices.json)."""
    import numpy as np

    h = hashlib.sha256(np.asarray(indices, dtype=np.int64).tobytes())
    h.update(ds.source.encode())
    return _dataset(f"{ds.name}-calibration", h.hexdigest()[:16], _arrays(ds.x_train), len(indices),
                    {"loader": f"bsb_hydra data={ds.name}", "source": ds.source,
                     "split": f"{len(indices)} training samples, seeded (calibration_indices.json)",
                     "transform": ds.transform or ""})
