"""``busseg models``: list the registered models with their paper, size and recipe."""

from __future__ import annotations

import argparse
import json
from importlib import resources

from busseg.errors import BussegError, ConfigError

_DESCRIPTION = """\
List every registered model: name, paper, number of parameters (built with random
initialisation, encoder_weights="none"), whether it is multi-task (segmentation +
benign/malignant classification) and the name of its default recipe
(busseg/recipes/<recipe>.yaml; "(missing)" when the file does not exist).

Models are built one at a time, on PyTorch's "meta" device where possible (shapes only,
no memory), else on the CPU. --flops adds the cost of one forward pass at
batch 1 (eval mode), counted by torch.utils.flop_counter: GFLOPs count a multiply-add as 2
FLOPs, GMACs = GFLOPs / 2 (papers usually print MACs under the name "FLOPs")."""


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "models",
        help="list registered models (paper, parameters, multitask, recipe)",
        description=_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "names", nargs="*", metavar="MODEL",
        help="only these models (default: all registered models)",
    )
    parser.add_argument(
        "--flops", action="store_true",
        help="also count GFLOPs and GMACs of one forward pass at --image-size (slower)",
    )
    parser.add_argument(
        "--image-size", type=int, default=None, metavar="PX",
        help="square input size for --flops (default: 256)",
    )
    parser.add_argument(
        "--in-channels", type=int, default=1, choices=(1, 3),
        help="input channels the models are built for (default: 1, grayscale)",
    )
    parser.add_argument("--json", action="store_true", help="print a JSON list instead of a table")
    parser.set_defaults(func=run)


def _recipe_exists(recipe: str) -> bool:
    return resources.files("busseg").joinpath("recipes", f"{recipe}.yaml").is_file()


def _build(name: str, in_channels: int, on_meta: bool):
    """Build ``name`` with random init; on the ``meta`` device when asked (shapes only: no
    memory and no initialisation cost, same parameter count and FLOPs)."""
    import torch

    from busseg.models import create_model

    if not on_meta:
        return create_model(name, in_channels=in_channels, encoder_weights="none")
    with torch.device("meta"):
        return create_model(name, in_channels=in_channels, encoder_weights="none")


def describe_models(
    names: list[str] | None = None,
    flops: bool = False,
    image_size: int = 256,
    in_channels: int = 1,
) -> list[dict]:
    """One dict per model (name, paper, parameters, multitask, segments, recipe,
    recipe_found, size_divisor and, with ``flops``, gflops/gmacs at ``image_size``).

    Each model is built on the ``meta`` device first (only shapes, so a 134 M-parameter FCN
    costs nothing); a model whose construction or forward pass needs real data (e.g. a
    ``.item()`` call) is rebuilt on the CPU for that step. Models are built one at a time.
    """
    from busseg.models import list_models, model_info
    from busseg.models.complexity import count_flops, count_parameters

    selected = names or list_models()
    infos = [model_info(name) for name in selected]  # unknown names: ConfigError first
    rows = []
    for info in infos:
        row = {
            "name": info.name,
            "paper": info.paper,
            "multitask": info.multitask,
            "segments": info.segments,
            "size_divisor": info.size_divisor,
            "recipe": info.recipe,
            "recipe_found": _recipe_exists(info.recipe),
        }
        on_meta = True
        try:
            model = _build(info.name, in_channels, on_meta=True)
        except BussegError:
            raise
        except Exception:  # meta tensors cannot do everything: build it for real
            on_meta = False
            model = _build(info.name, in_channels, on_meta=False)
        row["parameters"] = count_parameters(model)
        if flops:
            if image_size % info.size_divisor:
                raise ConfigError(
                    f"--image-size {image_size} is not divisible by {info.size_divisor} "
                    f"(needed by model {info.name!r})"
                )
            try:
                total = count_flops(model, image_size=image_size, in_channels=in_channels)
            except BussegError:
                raise
            except Exception:
                if not on_meta:
                    raise
                model = _build(info.name, in_channels, on_meta=False)
                total = count_flops(model, image_size=image_size, in_channels=in_channels)
            row["image_size"] = image_size
            row["gflops"] = total / 1e9
            row["gmacs"] = total / 2e9
        del model  # one model in memory at a time
        rows.append(row)
    return rows


def _format_table(rows: list[dict], flops: bool) -> str:
    headers = ["name", "params (M)", "multitask", "recipe"]
    if flops:
        headers[2:2] = ["GFLOPs", "GMACs"]
    headers.append("paper")
    lines = []
    for row in rows:
        cells = [row["name"], f"{row['parameters'] / 1e6:.2f}"]
        if flops:
            cells += [f"{row['gflops']:.2f}", f"{row['gmacs']:.2f}"]
        cells += [
            "yes" if row["multitask"] else "no",
            row["recipe"] + ("" if row["recipe_found"] else " (missing)"),
            row["paper"],
        ]
        lines.append(cells)
    widths = [max(len(str(c)) for c in column) for column in zip(headers, *lines)]
    out = []
    for cells in [headers, *lines]:
        padded = [str(c).ljust(w) for c, w in zip(cells[:-1], widths[:-1])]
        out.append("  ".join(padded + [str(cells[-1])]))
    return "\n".join(out)


def run(args: argparse.Namespace) -> int:
    if args.image_size is not None and not args.flops:
        raise ConfigError("--image-size sets the input of the FLOP count: add --flops")
    args.image_size = 256 if args.image_size is None else args.image_size
    if args.image_size < 1:
        raise ConfigError(f"--image-size must be positive, got {args.image_size}")
    rows = describe_models(args.names, args.flops, args.image_size, args.in_channels)
    if args.json:
        print(json.dumps(rows, indent=2))
    else:
        print(_format_table(rows, args.flops))
        if args.flops:
            print(f"\nFLOPs: one forward pass, batch 1, {args.image_size}x{args.image_size}, "
                  f"{args.in_channels} channel(s); 1 multiply-add = 2 FLOPs = 1 MAC.")
    return 0
