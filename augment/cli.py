"""`augment` command line: a thin layer over the library. Exit 0 ok, 2 bad input (one line on stderr), 1 bug."""

from __future__ import annotations

import argparse
import importlib
import sys

from augment.errors import UserError

# subcommand → module with `add_arguments(parser)` and `run(args) -> int`
COMMANDS = {
    "learn": "augment.commands.learn",
    "generate": "augment.commands.generate",
    "build": "augment.commands.build",
    "eval": "augment.commands.evaluate",
}


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # argparse's usage dump → our one-line user error
        raise UserError(message)


def build_parser() -> argparse.ArgumentParser:
    from augment import __version__

    parser = _Parser(prog="augment", description="Turn a label set into a synthetic training set "
                                                 "with discriminative class tokens.")
    parser.add_argument("--version", action="version", version=f"augment {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    for name, module_name in COMMANDS.items():
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as e:
            if e.name != module_name:
                raise
            continue
        p = sub.add_parser(name, help=module.__doc__.splitlines()[0], description=module.__doc__)
        module.add_arguments(p)
        p.set_defaults(_run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
        code = args._run(args)
    except UserError as e:
        print(f"augment: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("augment: interrupted", file=sys.stderr)
        return 130
    return code or 0


if __name__ == "__main__":
    sys.exit(main())
