"""``busseg demo``: the main job on the built-in phantom data."""

from __future__ import annotations


def register(sub) -> None:
    p = sub.add_parser("demo", help="run the whole pipeline on built-in phantom data (no external data)",
                       description="Generate phantoms, audit them, write a group-aware split, train a "
                                   "small U-Net on CPU, evaluate it on held-out phantoms and compare "
                                   "with a non-learned threshold baseline.")
    p.add_argument("--out", default="busseg_output/demo", help="output directory")
    p.add_argument("--n", type=int, default=100, help="number of phantom images")
    p.add_argument("--image-size", type=int, default=96, help="image size (divisible by 16)")
    p.add_argument("--epochs", type=int, default=15, help="training epochs")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.add_argument("--overwrite", action="store_true",
                   help="train again when --out holds a demo run of other settings (default: refuse)")
    p.set_defaults(func=run)


def run(args) -> int:
    from busseg.demo import run_demo

    run_demo(args.out, n_phantoms=args.n, image_size=args.image_size, epochs=args.epochs,
             progress=not args.no_progress, overwrite=args.overwrite)
    return 0
