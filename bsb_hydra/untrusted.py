"""A user's PyTorch file is read without running anything from it, unless the user says they trust it.

Three kinds of PyTorch file carry code, and ``model.allow_pickle=true`` (model=torch) is the one
switch that loads any of them; without it each is refused before the loader that would run the code
opens it, in one line naming the file, what it would run and the switch:

- a pickle that names callables outside torch's weights-only allowlist (``torch.save(model)``, or a
  checkpoint holding other objects): unpickling calls them. Without the switch a checkpoint is read
  by ``torch.load(weights_only=True)`` only. Its refusal names the callables, found by disassembling
  the pickle (``torch.serialization.get_unsafe_globals_in_checkpoint``, which runs nothing): torch's
  own message leads with advice to retry with ``weights_only=False``, which is the unsafe load itself.
- an ExportedProgram (``torch.export.save``). torch 2.14's ``torch.export.load`` unpickles the
  archive's sample inputs (``weights_only=True``, then ``weights_only=False`` when that fails),
  tensor-subclass weights and constants (``weights_only=False``) and opaque constants
  (``pickle.loads``), loads any AOTInductor model the archive holds (a compiled shared library), and
  ``.module()`` compiles the program's ``guards_code`` strings into Python that runs on every call.
  The guards are plain JSON strings, so refusing the pickled parts would not make an archive safe,
  and torch has no weights-only load for it.
- a TorchScript file (``torch.jit.save``). TorchScript's own unpickler builds TorchScript types only,
  never a Python callable, but ``torch.jit.load`` compiles the file's code and runs its
  ``__setstate__`` while loading, and that code can open any file the user can write through
  ``torch.from_file(path, shared=True)`` and overwrite it, which is as good as running code
  (tests/test_reliability.py plants such a file).
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Optional

# The switch, as every refusal names it.
OPT_IN = "set model.allow_pickle=true if you trust the file"

# Why loading each kind of whole-model file runs code from it (model=torch's file kinds).
RUNS_CODE = {
    "torchscript": "is a TorchScript file, and torch.jit.load compiles and runs the file's own code while "
                   "loading it (code that can overwrite files)",
    "exported_program": "is an ExportedProgram (torch.export.save), and torch.export.load unpickles parts of it "
                        "and its module runs the Python in its guards",
}


def pickle_refusal(path: Path, error: BaseException) -> Optional[str]:
    """Why ``torch.load(weights_only=True)`` refused ``path`` when the reason is that reading it
    means unpickling code: the callables its pickle names, else torch's reason. None when the file
    is simply not a checkpoint (corrupt, truncated, another format)."""
    import torch

    try:
        # torch's own classes last: the others (posix.system, the user's module class) say most
        names = sorted(torch.serialization.get_unsafe_globals_in_checkpoint(str(path)),
                       key=lambda n: (n.startswith("torch."), n))
    except Exception:  # a legacy (non-zip) file, a pickle protocol the disassembler does not take, not a zip
        names = []
    if names:
        shown = ", ".join(names[:4]) + (f" and {len(names) - 4} more" if len(names) > 4 else "")
        return f"its pickle names {shown}, which unpickling would call"
    reason = torch_reason(error)
    if re.search(r"\bGLOBAL\b|Unsupported operand", reason):  # named by the unpickler itself
        return f"weights-only loading refuses its pickle ({reason.rstrip('.')})"
    return None


def torch_reason(error: BaseException) -> str:
    """torch.load's message without its advice: to retry with ``weights_only=False`` (the load that
    runs the file's code), to allowlist the globals, to file an issue, to read the docs."""
    import torch

    advice = getattr(torch.serialization, "UNSAFE_MESSAGE", "") or "\0"  # the retry advice, as torch words it
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(error)).replace(advice, "")
    text = text.split("Check the documentation of torch.load")[0]
    text = text.split("Please use `torch.serialization.add_safe_globals")[0]
    text = re.sub(r"Weights only load failed\.|This file can still be loaded.*?following error message\.|"
                  r"\(\d\)|Please file an issue .*?use case:|WeightsUnpickler error:", " ", text, flags=re.S)
    text = " ".join(text.split())
    return text[:300] or type(error).__name__
