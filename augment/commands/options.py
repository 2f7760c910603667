"""Command-line flags derived from the config dataclasses: each option is declared once, on its field
(`augment.config.flag` metadata: name, help, type), as timm derives its parser from its config.

A flag's destination is the field's path ("learn.max_steps", "generate.refine_options.step_size", "engine"), so
`overrides(args)` is the config overrides as they are; in `build` a field marked `shared` is one flag for the
learn and the generate field of its name ("*.num_inference_steps"), and `build_flag` renames a field that two
sections keep apart (`--learn-batch-size`)."""

from __future__ import annotations

import argparse
import dataclasses
from typing import Any

SHARED = "*"


def add_fields(
    p: argparse.ArgumentParser,
    cls,
    path: str = "",
    *,
    build: bool = False,
    note: str = "",
    recurse: bool = True,
    only: tuple[str, ...] | None = None,
) -> None:
    """One flag per field of dataclass `cls` (and, with `recurse`, of its dataclass-typed fields) that declares
    one (`only`: of these fields); `path` prefixes the destinations ("learn.")."""
    for f in dataclasses.fields(cls):
        if only is not None and f.name not in only:
            continue
        meta = f.metadata
        if "flag" not in meta:
            default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
            if recurse and dataclasses.is_dataclass(default):
                add_fields(p, type(default), f"{path}{f.name}.", build=build, note=note)
            continue
        name = meta.get("build_flag", meta["flag"]) if build else meta["flag"]
        if build and meta.get("shared"):
            if any(name in a.option_strings for a in p._actions):  # the other section declared it already
                continue
            dest, help = f"{SHARED}.{f.name}", meta["help"] + note
        else:
            dest, help = f"{path}{f.name}", meta["help"]
        kwargs: dict[str, Any] = {"dest": dest, "help": help, "default": None}
        action = meta.get("action")
        if action == "boolean":
            kwargs["action"] = argparse.BooleanOptionalAction
        elif action:
            kwargs["action"] = action
        else:
            kwargs["type"] = meta["type"] or str
            kwargs["metavar"] = None if meta.get("choices") else f.name.upper()
        if meta.get("choices"):
            kwargs["choices"] = meta["choices"]
        p.add_argument(name, **kwargs)


def overrides(args: argparse.Namespace, sections: tuple[str, ...] = ("learn", "generate")) -> dict[str, Any]:
    """The config overrides the parsed flags ask for ({"learn.max_steps": 10, ...}); unset flags are left out."""
    top = run_config_fields()
    out: dict[str, Any] = {}
    for dest, value in vars(args).items():
        if value is None or ("." not in dest and dest not in top):
            continue
        if dest.startswith(f"{SHARED}."):
            for section in sections:
                out[f"{section}.{dest[2:]}"] = value
        else:
            out[dest] = value
    return out


def run_config_fields() -> tuple[str, ...]:
    from augment.config import RunConfig

    return tuple(f.name for f in dataclasses.fields(RunConfig) if "flag" in f.metadata)
