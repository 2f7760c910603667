"""`augment` command line: a thin layer over the library. Exit 0 ok, 2 bad input (one line on stderr), 1 a full
disk, a refused write or the engine giving up (one line), 130/143 interrupted (one line), a bug: a traceback
(augment.commands.shell)."""

from __future__ import annotations

import argparse
import importlib
import sys

from augment.commands.shell import Parser, Terminated, as_flags, run_command  # noqa: F401  (augment.cli's names)

# subcommand → module with `add_arguments(parser)` and `run(args) -> int`
COMMANDS = {
    "learn": "augment.commands.learn",
    "generate": "augment.commands.generate",
    "build": "augment.commands.build",
    "adapt": "augment.commands.adapt",
    "score": "augment.commands.score",
    "verify": "augment.commands.verify",
}


ALIASES = {"score": ["eval"]}  # `augment eval`, the command's name before 0.2, still works


def build_parser() -> argparse.ArgumentParser:
    from augment.version import __version__

    parser = Parser(
        prog="augment", description="Turn a label set into a synthetic training set with discriminative class tokens."
    )
    parser.add_argument("--version", action="version", version=f"augment {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    for name, module_name in COMMANDS.items():
        module = importlib.import_module(module_name)
        p = sub.add_parser(
            name, aliases=ALIASES.get(name, []), help=module.__doc__.splitlines()[0], description=module.__doc__
        )
        module.add_arguments(p)
        p.set_defaults(_run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    return run_command("augment", build_parser, lambda args: args._run(args), argv)


if __name__ == "__main__":
    sys.exit(main())
