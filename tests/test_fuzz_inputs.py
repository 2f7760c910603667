"""Generated malformed values for every flag of every command (`augment learn|generate|build|score|verify`,
`downstream fewshot|train`), every config key (a YAML file) and the launchers' variables: each ends in exactly
one line on stderr, exit 2, no traceback, and nothing created next to OUT or under it.

The flags are read off the parsers, so a new flag is fuzzed without a line here. Each run names a generator (or a
dataset) that does not exist: a malformed value that slipped through would reach it, and the line would name it
instead of the value; the test asserts it does not. Hypothesis derandomized: the same examples on every run.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import io
import itertools
import os
import shutil
import tempfile
import typing
from pathlib import Path
from unittest import mock

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from augment.cli import build_parser as augment_parser
from augment.cli import main as augment_main
from augment.config import SECTIONS, GenerateConfig, LearnConfig, LoraConfig, RunConfig
from augment.settings import DateOptions
from downstream.cli import build_parser as downstream_parser
from downstream.cli import main as downstream_main

ROOT = Path(__file__).resolve().parents[1]
LABELS = str(ROOT / "manifests" / "fashion-mnist.txt")
MISSING = "/nonexistent-augment-fuzz"  # the generator / dataset / shards every run names: never reached
FUZZ = settings(max_examples=10, derandomize=True, deadline=None, suppress_health_check=list(HealthCheck))
WORK = Path(tempfile.mkdtemp(prefix="augment-fuzz-"))
COUNTER = itertools.count()


def _base(prog: str, command: str, out: str) -> list[str]:
    if prog == "downstream":
        common = ["--dataset", f"imagefolder:{MISSING}", "--labels", LABELS, "--no-progress"]
        return [command, *common, *(["--out", out] if command == "fewshot" else ["--json", f"{out}.json"])]
    if command == "score":
        return ["score", "--shards", MISSING, "--preset", "toy", "--out", f"{out}.json", "--no-progress"]
    if command == "verify":
        return ["verify"]
    return [command, "--preset", "toy", "--labels", LABELS, "--out", out, "--generator", MISSING, "--no-progress"]


def _not(parse):
    """A filter: True for a text that `parse` (int, float) refuses."""

    def refused(text: str) -> bool:
        try:
            parse(text)
        except ValueError:
            return True
        return False

    return refused


_not_int, _not_float = _not(int), _not(float)


JUNK = st.text(alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=12)
EMPTY = st.sampled_from(["", " ", "\t"])
# Values that no flag of each kind takes: a flag that takes one of them is the bug this test is for.
BY_KIND = {
    "int": st.one_of(JUNK.filter(_not_int), st.sampled_from(["1.5", "1e3", "0x10", "-1"])),
    "float": st.one_of(JUNK.filter(_not_float), st.sampled_from(["nan", "inf", "-inf", "NaN", "-1e999"])),
    "str": EMPTY,
    "list": st.sampled_from(["", ",", "3,,9", "3,x", "-1", "3,-3"]),
}
SPECIAL = {  # flags whose values have a form of their own
    "--synthetic": st.sampled_from(["", "=", "noeq", "a=", "=dir", "a=learn:", "a=learn:nosuchpreset"]),
    "--classes-per-step": st.one_of(JUNK.filter(lambda t: _not_int(t) and t != "auto"), st.sampled_from(["0", "-2"])),
    "--real-fraction": st.one_of(JUNK.filter(_not_float), st.sampled_from(["-0.5", "1.5", "nan"])),
    "--model-kwargs": st.sampled_from(["", "{", "[1]", "x=", "=1", "a=b=c"]),
    "--shots": BY_KIND["list"],
    "--dataset": st.sampled_from(["", "nosuchkind:x", "cub:", f"imagefolder:{MISSING}"]),
    "--scheduler": st.one_of(EMPTY, st.sampled_from(["dpm", "PNDM", "euler_a"])),
    "--device": st.one_of(EMPTY, st.sampled_from(["gpu", "cuda:x", "cpu:", "cuda:-1", "tpu"])),
    "--dtype": st.one_of(EMPTY, st.sampled_from(["fp8", "half", "int8"])),
    "--preset": st.one_of(EMPTY, st.sampled_from(["nosuch", "../toy", "toy.yaml"])),
    "--config": st.one_of(EMPTY, st.sampled_from([MISSING, "/", "/dev/null/x"])),
    "--labels": st.one_of(EMPTY, st.sampled_from([MISSING, "/", "/dev/null"])),
    "--guide": st.one_of(EMPTY, st.sampled_from(["resnet50", "nosuch:x", "hf:", "clip:x?templates=", "hf:x?pool=max"])),
    "--classifier": st.one_of(EMPTY, st.sampled_from(["resnet50", "nosuch:x", "ckpt:"])),
    "--features": st.one_of(EMPTY, st.sampled_from(["nosuch:x", "hf:"])),
    "--ray-address": st.sampled_from(["", "host", "127.0.0.1:6379"]),  # needs --engine ray: refused alone
    "--lease": st.sampled_from(["1", "60", "x"]),  # retired: refused with what to use instead
    "--init-word": EMPTY,
    "--tokens": st.one_of(EMPTY, st.sampled_from([MISSING])),
    "--model": EMPTY,
}
SKIP = {"--claim"}  # (a store_true: no value to fuzz; refused alone, tests/test_ray.py)
# Flags whose own value is the thing every run names as missing: the check that the line names the value
# rather than MISSING does not apply.
NAMES_MISSING = {"--generator", "--dataset", "--shards", "--tokens", "--config", "--labels", "out"}


def _kind(action: argparse.Action) -> str | None:
    if action.choices is not None:
        return "choices"
    if action.nargs == 0:
        return None
    t = action.type
    if t is int:
        return "int"
    if t is float:
        return "float"
    return "str"


def _cases():
    cases = []
    for prog, build in (("augment", augment_parser), ("downstream", downstream_parser)):
        parser = build()
        sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        for command, p in sub.choices.items():
            if command == "eval":  # an alias of score
                continue
            for action in p._actions:
                name = action.option_strings[0] if action.option_strings else action.dest
                if isinstance(action, argparse._HelpAction) or name in SKIP or _kind(action) is None:
                    continue
                cases.append(pytest.param(prog, command, name, id=f"{prog}-{command}-{name}"))
    return cases


def _strategy(prog: str, command: str, name: str):
    if name in SPECIAL:
        return SPECIAL[name]
    if name == "out":  # verify's positional
        return st.sampled_from(["", " ", MISSING, "/dev/null"])
    parser = (augment_parser if prog == "augment" else downstream_parser)()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices[command]
    action = next(a for a in sub._actions if (a.option_strings[:1] or [a.dest])[0] == name)
    kind = _kind(action)
    if kind == "choices":
        return JUNK.filter(lambda t: t not in action.choices)
    return BY_KIND[kind]


def _run(prog: str, argv: list[str], env: dict[str, str] | None = None) -> tuple[int, str]:
    err, out = io.StringIO(), io.StringIO()
    main = augment_main if prog == "augment" else downstream_main
    with mock.patch.dict(os.environ, env or {}), contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
        code = main(argv)
    return code, err.getvalue()


def _check(prog: str, argv: list[str], room: Path, own_missing: bool = False, env=None) -> str:
    code, err = _run(prog, argv, env)
    lines = err.splitlines()
    assert code == 2, f"{argv}: exit {code}, stderr {err[-500:]!r}"
    assert len(lines) == 1 and lines[0].startswith(f"{prog}: error: "), f"{argv}: {err[-500:]!r}"
    assert "Traceback" not in err
    if not own_missing:
        assert MISSING not in lines[0], f"{argv}: the malformed value went through: {lines[0]}"
    assert list(room.iterdir()) == [], f"{argv}: left {sorted(p.name for p in room.iterdir())}"
    return lines[0]


def _room() -> Path:
    room = WORK / f"r{next(COUNTER)}"
    room.mkdir()
    return room


@pytest.fixture(scope="module", autouse=True)
def _work():
    yield
    shutil.rmtree(WORK, ignore_errors=True)


@pytest.mark.parametrize("prog, command, name", _cases())
def test_a_malformed_flag_is_one_line_exit_2_nothing_written(prog, command, name):
    @FUZZ
    @given(value=_strategy(prog, command, name))
    def check(value):
        room = _room()
        argv = _base(prog, command, str(room / "out"))
        argv = [*argv, value] if name == "out" else [*argv, f"{name}={value}"]
        _check(prog, argv, room, own_missing=name in NAMES_MISSING)
        shutil.rmtree(room)

    check()


def _wrong_values(hint) -> st.SearchStrategy:
    """YAML values that are not of type `hint` (or break its range: NaN and infinities for numbers)."""
    candidates = [None, True, "x", "", 1.5, -7, [], ["a", 1], {"a": 1}, float("nan"), float("inf"), "\x00"]
    return st.sampled_from([v for v in candidates if not _fits(v, hint)])


def _fits(value, hint) -> bool:
    from augment.settings import _fits as fits

    return fits(value, hint)


def _config_cases():
    cases = []
    for section, cls in (("", RunConfig), ("learn", LearnConfig), ("generate", GenerateConfig), ("lora", LoraConfig)):
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            if f.name in SECTIONS:
                continue
            hint = DateOptions if f.name == "refine_options" else hints[f.name]
            cases.append(pytest.param(section, f.name, hint, id=f"{section or 'top'}.{f.name}"))
    for f in dataclasses.fields(DateOptions):
        cases.append(pytest.param("generate.refine_options", f.name, typing.get_type_hints(DateOptions)[f.name],
                                  id=f"refine_options.{f.name}"))  # fmt: skip
    return cases


@pytest.mark.parametrize("section, key, hint", _config_cases())
def test_a_config_key_of_the_wrong_type_is_one_line_exit_2(section, key, hint):
    """Every key of a config file, given a value of another type (or NaN, infinity, a NUL): refused by
    RunConfig.validate before the generator is looked at."""

    @FUZZ
    @given(value=_wrong_values(dict | None if hint is DateOptions else hint))  # (null: DATE's defaults)
    def check(value):
        room = _room()
        data: dict = {key: value}
        for part in reversed([p for p in section.split(".") if p]):
            data = {part: data}
        config = WORK / f"c{next(COUNTER)}.yaml"
        config.write_text(yaml.safe_dump(data, allow_unicode=True))
        argv = ["learn", "--preset", "toy", "--labels", LABELS, "--out", str(room / "out"), "--config", str(config)]
        if key != "generator":
            argv += ["--generator", MISSING]
        _check("augment", argv, room, own_missing=key == "generator")
        shutil.rmtree(room)

    check()


LAUNCHER = ["RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "SLURM_PROCID", "SLURM_LOCALID",
            "SLURM_STEP_NUM_TASKS", "SLURM_ARRAY_TASK_ID", "SLURM_ARRAY_TASK_COUNT"]  # fmt: skip


@pytest.mark.parametrize("variable", LAUNCHER)
def test_a_malformed_launcher_variable_is_one_line_exit_2(variable):
    """A launcher variable that is not a whole number, or is out of range: named in one line, before any model."""
    partner = {"RANK": "WORLD_SIZE", "WORLD_SIZE": "RANK", "SLURM_PROCID": "SLURM_STEP_NUM_TASKS",
               "SLURM_STEP_NUM_TASKS": "SLURM_PROCID", "SLURM_ARRAY_TASK_ID": "SLURM_ARRAY_TASK_COUNT",
               "SLURM_ARRAY_TASK_COUNT": "SLURM_ARRAY_TASK_ID", "LOCAL_WORLD_SIZE": "LOCAL_RANK"}  # fmt: skip
    partner_value = {"WORLD_SIZE": "2", "SLURM_STEP_NUM_TASKS": "2", "SLURM_ARRAY_TASK_COUNT": "2"}

    @FUZZ
    @given(value=st.one_of(JUNK.filter(lambda t: _not_int(t) and t.strip()), st.sampled_from(["-1", "1.0", "-5"])))
    def check(value):
        room = _room()
        env = {variable: value}
        if variable in partner:
            env[partner[variable]] = partner_value.get(partner[variable], "0")
        argv = _base("augment", "learn", str(room / "out"))
        line = _check("augment", argv, room, env=env)
        assert f"${variable}" in line, line
        shutil.rmtree(room)

    check()
