"""Check a learn/generate/build output directory: shards against their markers, tokens, _info.json.

Prints one line per problem (with its file) and what a rerun would redo; exit 0 when everything checks,
1 when something does not, 2 when OUT is not a run directory.
"""

from __future__ import annotations

import argparse


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("out", help="a learn/generate/build output directory (a path or a URL)")


def run(args: argparse.Namespace) -> int:
    from augment.data.verify import verify_run

    report = verify_run(args.out)
    if report.older:
        print(f"older format: {report.older}")
    for line in report.problems:
        print(f"problem: {line}")
    for line in report.redo:
        print(f"a rerun would redo: {line}")
    checked = ", ".join(f"{v} {k}" for k, v in report.checked.items())
    print(f"{'ok' if report.ok else f'{len(report.problems)} problem(s)'}: checked {checked} in {args.out}")
    return 0 if report.ok else 1
