"""Parsing the command line's compression options into a job spec (a plain dict).

The same dict is what ``POST /v1/jobs`` takes as ``spec``, so the offline
``compress`` and the client's ``submit`` accept exactly the same options.
This module imports neither torch nor the web stack.
"""

from __future__ import annotations

import argparse
import json
from typing import Any

from kegnet_core.budget import parse_duration
from kegnet_core.spec import PresetName, Prior, Quantize


def parse_shape(text: str) -> list[int]:
    """``"1,32,32"`` -> ``[1, 32, 32]``."""
    try:
        shape = [int(part) for part in text.replace("x", ",").split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"input shape must be comma-separated integers, got {text!r}"
        ) from None
    if len(shape) not in (1, 2, 3) or any(size <= 0 for size in shape):
        raise argparse.ArgumentTypeError(
            "input shape must be C,H,W (images), C,L (signals) or D (vectors) with positive sizes, "
            f"got {text!r}"
        )
    return shape


def parse_budget(text: str) -> float:
    """``"15m"`` -> 900.0 (see :func:`kegnet_core.budget.parse_duration`)."""
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def parse_ranks(text: str) -> str | float | dict[str, list[int]]:
    """``auto``, ``evbmf``, a keep fraction (``0.5``), JSON, or ``conv3=11:7,conv2=4:3``."""
    if text in ("auto", "evbmf"):
        return text
    try:
        return float(text)
    except ValueError:
        pass
    if text.lstrip().startswith("{"):
        try:
            value = json.loads(text)
        except json.JSONDecodeError as exc:
            raise argparse.ArgumentTypeError(f"the JSON is invalid: {exc}") from None
        if not isinstance(value, dict):
            raise argparse.ArgumentTypeError("the JSON must be an object of layer: [out, in]")
        return value
    ranks: dict[str, list[int]] = {}
    for item in text.split(","):
        name, _, pair = item.partition("=")
        try:
            out_rank, in_rank = (int(part) for part in pair.split(":"))
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"auto, evbmf, a fraction, or layer=OUT:IN pairs, got {item!r}"
            ) from None
        ranks[name.strip()] = [out_rank, in_rank]
    return ranks


def add_spec_options(parser: argparse.ArgumentParser, *, factorises: bool = True) -> None:
    """The options shared by ``compress``, ``extract``, ``quantize`` and ``submit``; the layers,
    ranks, ratio and int8 options only where the command factorises (``factorises``)."""
    parser.add_argument(
        "--input-shape",
        required=True,
        type=parse_shape,
        help="C,H,W for images, C,L for signals, D for vectors",
    )
    if factorises:
        _add_factorising_options(parser)
    parser.add_argument(
        "--prior",
        choices=[p.value for p in Prior],
        default=Prior.AUTO.value,
        help="where training samples come from",
    )
    parser.add_argument("--preset", choices=[p.value for p in PresetName], default=PresetName.DEFAULT.value)
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        type=parse_override,
        default=[],
        metavar="SECTION.SETTING=VALUE",
        help="override one recipe setting, e.g. --set distill.steps=500 (repeatable)",
    )
    parser.add_argument(
        "--budget",
        type=parse_budget,
        help="the whole job's time on its device, e.g. 90s, 15m, 1h30m: the recipe's steps are "
        "scaled to end within it (default: the preset as it is)",
    )
    parser.add_argument("--seed", type=int, default=0)


def _add_factorising_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--layers",
        help="comma-separated module paths to factorise (default: every layer that gets smaller, "
        "except the first and the output layer; with --ranks auto the first joins them where the "
        "others cannot make the model 2x smaller)",
    )
    parser.add_argument(
        "--ranks", type=parse_ranks, default="auto", help="auto (2x smaller) | evbmf | 0.5 | conv3=11:7,..."
    )
    parser.add_argument(
        "--target-ratio",
        type=float,
        help="choose ranks so the model shrinks at least this much (leave --ranks at auto)",
    )
    parser.add_argument(
        "--quantize",
        choices=[q.value for q in Quantize],
        default=Quantize.NONE.value,
        help="int8: also write an int8 student, calibrated on the run's generated samples",
    )


def spec_from_args(args: argparse.Namespace, task: str = "compress") -> dict[str, Any]:
    """The job spec dict from parsed options (a command without the factorising options
    leaves their fields at their defaults)."""
    layers = getattr(args, "layers", None)
    return {
        "input_shape": args.input_shape,
        "layers": [name.strip() for name in layers.split(",") if name.strip()] if layers else None,
        "ranks": getattr(args, "ranks", "auto"),
        "target_ratio": getattr(args, "target_ratio", None),
        "prior": args.prior,
        "preset": args.preset,
        "seed": args.seed,
        "task": task,
        "quantize": getattr(args, "quantize", Quantize.NONE.value),
        "overrides": parse_overrides(getattr(args, "overrides", None) or []),
        "budget_s": getattr(args, "budget", None),
    }


def parse_override(item: str) -> str:
    """One ``--set`` item, checked to have the form SECTION.SETTING=VALUE (argparse reports it)."""
    key, sep, _text = item.partition("=")
    if not sep or not key.strip():
        raise argparse.ArgumentTypeError(f"takes SECTION.SETTING=VALUE, e.g. distill.steps=500; got {item!r}")
    return item


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """``["distill.steps=500"]`` -> ``{"distill.steps": 500}``; values are read as JSON where they parse."""
    overrides: dict[str, Any] = {}
    for item in items:
        key, _, text = parse_override(item).partition("=")
        try:
            value = json.loads(text)
        except json.JSONDecodeError:
            value = text
        overrides[key.strip()] = value
    return overrides
