"""Command-line overrides, before Hydra composes: group choices that name options, and keys of one option of a group."""
from __future__ import annotations

from pathlib import Path
from typing import Dict, List

from bsb_hydra.config.base import ConfigError
from bsb_hydra.config.store import schemas

CONF_DIR = Path(__file__).resolve().parents[2] / "conf"
GROUP_NAMES = ("model", "data", "quant", "backend", "device", "train", "task", "experiment")


def group_options(group: str) -> List[str]:
    return sorted(p.stem for p in (CONF_DIR / group).glob("*.yaml"))


def defer_group_keys(argv: List[str]) -> List[str]:
    """In a multirun, ``group.key=value`` (quant.bits=4) becomes ``group.key=choice(value)``: a
    one-value sweep. Hydra applies plain overrides to the primary config, whose group option is the
    default one (quant=fp32 has no bits), and refuses the sweep before any job exists; a sweep
    override is applied per job instead, where the validating sweeper leaves it out of the jobs
    whose option lacks the key (hydra_plugins/bsb_hydra_sweeper). Jobs see the same override text."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    if not {"-m", "--multirun"} & set(argv):
        return argv
    parser = OverridesParser.create()
    out = []
    for arg in argv:
        if "=" in arg and not arg.startswith("-"):
            try:
                o = parser.parse_override(arg)
            except Exception:  # Hydra's own parser names the problem later
                out.append(arg)
                continue
            group, dot, rest = o.key_or_group.partition(".")
            if (dot and rest and group in GROUP_NAMES and not o.package and o.type.name == "CHANGE"
                    and not o.is_sweep_override()):
                out.append(f"{o.key_or_group}=choice({o.get_value_element_as_str()})")
                continue
        out.append(arg)
    return out


CONFIG_PATH_FLAGS = ("--config-path", "-cp", "--config-dir", "-cd")


def snapshot_conf(argv: List[str], conf_dir: Path = CONF_DIR) -> List[str]:
    """A multirun reads conf/ as it was when it started. Hydra's launchers compose each job from the
    config files when the job starts, so an edit of conf/ during a sweep reached its later jobs, and
    one that did not compose with the running code ("Key 'peak' not in 'Config'") ended the whole
    sweep. The sweep gets a copy of conf/ taken now (``--config-path`` to it, removed when the
    process exits); a --config-path or --config-dir of the user's own is left alone. The Python
    code is not copied: a sweep's worker processes import bsb_hydra from disk."""
    import atexit
    import shutil
    import tempfile

    if not {"-m", "--multirun"} & set(argv) or any(a.split("=")[0] in CONFIG_PATH_FLAGS for a in argv):
        return argv
    snap = Path(tempfile.mkdtemp(prefix="bsb_hydra_conf_"))
    atexit.register(shutil.rmtree, snap, ignore_errors=True)
    shutil.copytree(conf_dir, snap / "conf")
    return [f"--config-path={snap / 'conf'}", *argv]


def check_group_overrides(overrides: List[str]) -> None:
    """Command-line overrides of a config group must name options (``model=cnn`` or a sweep of them).
    Hydra itself answers ``model=null`` or ``model=3`` with an error that names neither the group nor
    its options; this one names both. A key of one option given with another single option
    (``quant=dynamic quant.analyze=true``) is named with the options that have it, where Hydra would
    suggest appending it with ``+``. Everything else is left to Hydra's own checks."""
    import dataclasses

    from hydra.core.override_parser.overrides_parser import OverridesParser

    parsed = OverridesParser.create().parse_overrides([a for a in overrides if "=" in a])
    chosen: Dict[str, str] = {}
    for o in parsed:
        group = o.key_or_group.lstrip("+~")
        if group not in GROUP_NAMES or o.package or o.is_delete():
            continue
        v = o.value()
        values = list(v.list) if o.is_sweep_override() and hasattr(v, "list") else [v]
        for x in values:
            if not isinstance(x, str):
                raise ConfigError(f"{group}={x!r} (in {o.input_line}) is not an option of {group}: "
                                  f"choose one of {', '.join(group_options(group))}")
        if not o.is_sweep_override():
            chosen[group] = values[0]
    for o in parsed:
        group, dot, rest = o.key_or_group.partition(".")
        options = schemas(group) if group in GROUP_NAMES else {}
        if not dot or o.key_or_group.startswith(("+", "~")) or chosen.get(group) not in options:
            continue
        key = rest.split(".")[0]
        has = [name for name, cls in options.items() if key in {f.name for f in dataclasses.fields(cls)}]
        if has and chosen[group] not in has:
            raise ConfigError(f"{group}.{key} is not a key of {group}={chosen[group]}: it belongs to "
                              f"{', '.join(f'{group}={n}' for n in has)}")
