"""`python -m training`: what `tadbot train` runs, in its own process, so the server never imports this
package (nor torch). One subcommand per tool (fer, prepare, generate, sft, merge, fetch-converter, export,
eval); errors are one line on stderr, as in the rest of `tadbot`: exit 2 for bad input, 1 otherwise."""

from __future__ import annotations

import argparse
import logging
import shlex
import sys
from collections.abc import Sequence

from server.for_training import exit_code
from training.fer import cli as fer_cli
from training.llm import cli as llm_cli
from training.llm import finetune_cli


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tadbot train", description="Train and export TADBot's models.")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    targets = parser.add_subparsers(dest="target", required=True, metavar="TARGET")
    fer_cli.add_parser(targets)
    llm_cli.add_parser(targets)
    finetune_cli.add_parsers(targets)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    args.command_line = shlex.join(["tadbot", "train", *argv])
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO, format="%(levelname)s %(name)s: %(message)s"
    )
    return exit_code(lambda: args.run(args))


if __name__ == "__main__":
    sys.exit(main())
