"""docs/config.md: every config key a user can set, written from the schemas (the dataclasses Hydra
composes; their comments are the documentation) by ``make config-docs``, i.e.
``python -m bsb_hydra.config.reference [--check]``. tests/test_config.py checks the file is current."""
from __future__ import annotations

import argparse
import dataclasses
import enum
import inspect
import io
import sys
import tokenize
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "config.md"
GROUPS = ("model", "data", "task", "quant", "backend", "train", "device")  # the config groups, in this order


def _comments(cls) -> Dict[str, str]:
    """{field: its comment} of the fields ``cls`` itself declares: the comment lines right above the
    field (a blank line or code in between ends them) and the one after it on its line. A field right
    below a commented one, with no comment of its own, shares it when the comment names it ("see
    `first`": "Output names of the boxes, scores, classes and count" above boxes, scores, ...)."""
    try:
        src = inspect.getsource(cls)
    except (OSError, TypeError):
        return {}
    out: Dict[str, str] = {}
    pending: List[str] = []
    last_field = None
    head = None  # the commented field whose block this line continues
    lines = src.splitlines()
    body_indent = None
    for tok in tokenize.generate_tokens(io.StringIO(src).readline):
        if tok.type == tokenize.COMMENT:
            line = lines[tok.start[0] - 1]
            if line.strip().startswith("#"):
                if body_indent is None or tok.start[1] == body_indent:
                    pending.append(tok.string.lstrip("#").strip())
            elif last_field is not None and tok.start[0] == last_field[0]:
                above = out.get(last_field[1], "")
                inline = tok.string.lstrip("#").strip()  # its own words win over a shared "see `first`"
                out[last_field[1]] = inline if above.startswith("see `") else " ".join(filter(None, [above, inline]))
        elif tok.type == tokenize.NL:
            if not lines[tok.start[0] - 1].strip():
                pending, head = [], None
        elif tok.type == tokenize.NAME and tok.start[0] > 1:
            line = lines[tok.start[0] - 1]
            indent = len(line) - len(line.lstrip())
            if body_indent is None and indent > 0:
                body_indent = indent
            if indent == body_indent and tok.start[1] == indent:
                rest = line.strip()[len(tok.string):].lstrip()
                if rest.startswith(":") and not rest.startswith(":="):  # an annotated field
                    if pending:
                        out[tok.string], head = " ".join(pending), tok.string
                    elif head is not None and _mentions(out[head], tok.string):
                        out[tok.string] = f"see `{head}`"
                    else:
                        out[tok.string] = ""
                    last_field = (tok.start[0], tok.string)
                else:
                    last_field, head = None, None
                pending = []
    return out


def _mentions(text: str, name: str) -> bool:
    """Does a comment name the field (``batch_size`` as itself or as "batch size")?"""
    import re

    return any(re.search(rf"(?<![\w.]){re.escape(n)}(?!\w)", text) for n in {name, name.replace("_", " ")})


def _doc(cls, name: str) -> str:
    """The comment of field ``name``: the one of the nearest class in ``cls``'s MRO that declares it
    with a comment (an option re-declaring ``name`` with its own default keeps the base's text)."""
    for c in cls.__mro__:
        if name in c.__dict__.get("__annotations__", {}):
            text = _comments(c).get(name, "")
            if text:
                return text
    return ""


def _default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        return f.default_factory()  # type: ignore[misc]
    return "(required)"


def _show(v: Any) -> str:
    if isinstance(v, enum.Enum):
        v = v.value
    if v == "???":
        return "(required)"
    if dataclasses.is_dataclass(v):
        return "(section)"
    if v is None:
        return "null"
    if isinstance(v, bool):
        return str(v).lower()
    text = repr(v) if isinstance(v, str) and v == "" else str(v)
    return text.replace("|", "\\|")


def _type(f: dataclasses.Field) -> str:
    t = f.type if isinstance(f.type, str) else (f.type.__name__ if isinstance(f.type, type) else str(f.type))
    return t.replace("typing.", "").replace("|", "\\|")


def _summary(cls) -> str:
    """The first paragraph of the class's docstring (none for dataclass's generated signature)."""
    doc = cls.__dict__.get("__doc__") or ""
    if not doc or doc.startswith(cls.__name__ + "("):
        return ""
    return " ".join(inspect.cleandoc(doc).split("\n\n")[0].split())


def _rows(cls, names: List[str]) -> List[str]:
    fields = {f.name: f for f in dataclasses.fields(cls)}
    return [f"| `{n}` | {_show(_default(fields[n]))} | {_type(fields[n])} | {_doc(cls, n).replace('|', chr(92) + '|')} |"
            for n in names]


def _common_base(classes: List[type]) -> Optional[type]:
    """The most derived dataclass every option of a group inherits from."""
    if not classes:
        return None
    for c in classes[0].__mro__:
        if dataclasses.is_dataclass(c) and all(issubclass(k, c) for k in classes):
            return c
    return None


def conf_options(group: str) -> Dict[str, List[str]]:
    """{schema name: the options of conf/<group>/ built on it}: each YAML names its schema in its
    defaults list (``- /schema/<group>/<name>@_here_``) or another option of the group it extends."""
    import yaml

    folder = ROOT / "conf" / group
    parents: Dict[str, str] = {}
    for f in sorted(folder.glob("*.yaml")):
        defaults = (yaml.safe_load(f.read_text()) or {}).get("defaults") or []
        for d in defaults:
            if isinstance(d, str) and d.startswith(f"/schema/{group}/"):
                parents[f.stem] = "schema:" + d.split("/")[3].split("@")[0]
                break
            if isinstance(d, str) and (folder / f"{d}.yaml").exists():
                parents[f.stem] = d
                break
    out: Dict[str, List[str]] = {}
    for option in parents:
        seen, p = set(), parents[option]
        while not p.startswith("schema:") and p in parents and p not in seen:
            seen.add(p)
            p = parents[p]
        if p.startswith("schema:"):
            out.setdefault(p[len("schema:"):], []).append(option)
    return out


def _group(group: str, options: Dict[str, type]) -> List[str]:
    head = ["| key | default | type | what it is |", "|---|---|---|---|"]
    base = _common_base(list(options.values()))
    chosen = conf_options(group)
    out = [f"## `{group}`", ""]
    base_names = [f.name for f in dataclasses.fields(base)] if base is not None and len(options) > 1 else []
    if base_names:
        out += [f"Every `{group}` option has these keys (`{base.__name__}`):", "", *head,
                *_rows(base, base_names), ""]
    for name in sorted(options):
        cls = options[name]
        base_fields = {f.name: f for f in dataclasses.fields(base)} if base_names else {}
        own = [f.name for f in dataclasses.fields(cls)
               if f.name not in base_fields or _show(_default(f)) != _show(_default(base_fields[f.name]))]
        summary = _summary(cls)
        out += [f"### `{group}={name}` (`{cls.__name__}`)", ""]
        users = [o for o in chosen.get(name, []) if o != name]
        if users:
            out += [f"The schema of {', '.join(f'`{group}={o}`' for o in users)} (conf/{group}/).", ""]
        if summary and cls is not base:
            out += [summary, ""]
        out += ([*head, *_rows(cls, own), ""] if own else ["No keys beyond the ones above.", ""])
    return out


def _sections(config_cls) -> List[Tuple[str, type]]:
    """The top-level settings that are not groups (benchmark, peak, mlflow, paths, ...)."""
    out = []
    for f in dataclasses.fields(config_cls):
        d = _default(f)
        t = f.default_factory if f.default_factory is not dataclasses.MISSING else None  # type: ignore[misc]
        cls = t if isinstance(t, type) and dataclasses.is_dataclass(t) else (type(d) if dataclasses.is_dataclass(d) else None)
        if f.name not in GROUPS and cls is not None:
            out.append((f.name, cls))
    return out


def render() -> str:
    from bsb_hydra.config.run import Config
    from bsb_hydra.config.store import schemas

    lines = ["# Configuration reference", "",
             "Every key a run can set, with its default, written from the schemas in bsb_hydra/ by",
             "`make config-docs` (`python -m bsb_hydra.config.reference`); the text of each key is the comment",
             "above it in the schema. Do not edit this file: edit the schema and run `make config-docs`",
             "(tests/test_config.py checks it is current). A group option is chosen with `group=option`",
             "(`model=cnn`) and its keys set with `group.key=value` (`model.channels=[64,128]`). The",
             "defaults are the schema's: an option's YAML in conf/<group>/ may set its own (`data=digits`",
             "its name and sizes), and `python -m bsb_hydra --cfg job <overrides>` prints what a run composes.", ""]
    lines += ["## Top-level keys", "", "| key | default | type | what it is |", "|---|---|---|---|"]
    plain = [f.name for f in dataclasses.fields(Config) if f.name not in GROUPS
             and f.name not in dict(_sections(Config))]
    lines += _rows(Config, plain) + [""]
    for name, cls in _sections(Config):
        lines += [f"## `{name}` (`{cls.__name__}`)", ""]
        summary = _summary(cls)
        lines += ([summary, ""] if summary else []) + ["| key | default | type | what it is |", "|---|---|---|---|"]
        lines += _rows(cls, [f.name for f in dataclasses.fields(cls)]) + [""]
    for group in GROUPS:
        lines += _group(group, schemas(group))
    return "\n".join(lines).rstrip() + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--check", action="store_true", help="exit 1 if docs/config.md is not current")
    a = ap.parse_args(argv)
    text = render()
    if a.check:
        current = DOC.read_text() if DOC.exists() else ""
        if current != text:
            print(f"{DOC.relative_to(ROOT)} is not current: run `make config-docs`", file=sys.stderr)
            return 1
        return 0
    DOC.write_text(text)
    print(f"written {DOC.relative_to(ROOT)} ({len(text.splitlines())} lines)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
