"""The ``kegnet`` command: offline compression, the service, and its client.

Each subcommand imports what it needs only when it runs, so ``kegnet submit``
never loads torch and ``kegnet compress`` never loads the web stack.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from kegnet_cli.client import ClientError, add_client_commands
from kegnet_cli.options import add_spec_options
from kegnet_cli.service_commands import add_service_commands


def _compress(args: argparse.Namespace) -> int:
    from kegnet_cli.offline import run_offline

    return run_offline(args, "compress")


def _extract(args: argparse.Namespace) -> int:
    from kegnet_cli.offline import run_offline

    return run_offline(args, "extract")


def _quantize(args: argparse.Namespace) -> int:
    from kegnet_cli.offline import run_offline

    return run_offline(args, "quantize")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kegnet",
        description="Compress a trained TorchScript classifier without its training data (KegNet + Tucker).",
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    compress = commands.add_parser("compress", help="compress a TorchScript classifier on this machine")
    compress.add_argument("model", help="the teacher: a TorchScript file")
    add_spec_options(compress)
    compress.add_argument("-o", "--output", required=True, help="where to write the student (.pt)")
    compress.add_argument("--device", help="cpu, cuda or cuda:N (default: cuda when present)")
    compress.set_defaults(handler=_compress)

    extract = commands.add_parser("extract", help="train generators only (the extracted knowledge)")
    extract.add_argument("model", help="the teacher: a TorchScript file")
    add_spec_options(extract, factorises=False)
    extract.add_argument("-o", "--output", required=True, help="folder for the generators and images")
    extract.add_argument("--device", help="cpu, cuda or cuda:N (default: cuda when present)")
    extract.set_defaults(handler=_extract)

    quantize = commands.add_parser(
        "quantize", help="an int8 copy of a TorchScript classifier (no Tucker), calibrated without data"
    )
    quantize.add_argument("model", help="the teacher: a TorchScript file")
    add_spec_options(quantize, factorises=False)
    quantize.add_argument("-o", "--output", required=True, help="where to write the int8 model (.pt)")
    quantize.add_argument("--device", help="cpu, cuda or cuda:N (default: cuda when present)")
    quantize.set_defaults(handler=_quantize, quantize="int8")

    add_service_commands(commands)
    add_client_commands(commands)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        result: int = args.handler(args)
    except ClientError as exc:
        print(f"kegnet {args.command}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return result


if __name__ == "__main__":
    sys.exit(main())
