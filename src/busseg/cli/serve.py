"""``busseg serve``: a local web page for trying a model on scans."""

from __future__ import annotations

import argparse

EPILOG = """\
examples:
  busseg serve                                  # the demo model (`make demo`; trained now if missing)
  busseg serve runs/elad                        # a cv folder: the fold models averaged
  busseg serve runs/elad/fold_0 --port 8080     # one run
  busseg serve elad_fold0.onnx --examples my_scans/
Then open http://127.0.0.1:7860 (or the --host/--port given) in a browser. Nothing leaves the machine."""


def register(sub) -> None:
    p = sub.add_parser(
        "serve", help="a local web page: drop a scan, see the lesion, its measurements, download the mask",
        description="Serve a model on a local web page: drop a scan (PNG, JPEG, BMP, TIFF, DICOM) or pick an\n"
                    "example, and see the predicted lesion over the scan, the probability heat map, the\n"
                    "benign/malignant probability of multi-task models and the lesion's measurements\n"
                    "(mm when the scan records its pixel spacing); download the mask as PNG.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", nargs="?", default=None,
                   help="a train run folder, a cv folder, a checkpoint or an ONNX file (default: the demo "
                        "model in --demo-dir, trained first when missing)")
    p.add_argument("--demo-dir", default="busseg_output/demo",
                   help="where `busseg demo` writes (default busseg_output/demo, as `make demo`)")
    p.add_argument("--examples", default=None, metavar="DIR",
                   help="folder of example scans to offer (default: a few phantoms the demo model never saw)")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=7860, help="port (default 7860)")
    p.add_argument("--max-upload-mb", type=float, default=25.0, help="largest accepted upload in MB (default 25)")
    p.set_defaults(func=run)


def _check_port(host: str, port: int) -> None:
    """Refuse a port that is taken before minutes go into loading (or training) the model."""
    import socket

    from busseg.errors import ConfigError

    try:
        with socket.create_server((host, port)):
            pass
    except OSError as exc:
        raise ConfigError(f"cannot listen on {host}:{port} ({exc.strerror or exc}); choose another --port") from None


def run(args) -> int:
    from pathlib import Path

    from busseg.data.imageio import IMAGE_SUFFIXES
    from busseg.errors import ConfigError
    from busseg.serve.app import create_app, serve
    from busseg.serve.model import demo_model, example_images, load_model

    _check_port(args.host, args.port)
    source = Path(args.model) if args.model else demo_model(args.demo_dir)
    model = load_model(source)
    if args.examples:
        folder = Path(args.examples)
        if not folder.is_dir():
            raise ConfigError(f"--examples {folder}: not a folder")
        examples = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)
        if not examples:
            raise ConfigError(f"--examples {folder}: no {', '.join(IMAGE_SUFFIXES)} file in it")
    else:
        examples = example_images()
    app = create_app(model, examples=examples, max_upload_bytes=int(args.max_upload_mb * 1024 * 1024))
    print(f"serving {model.describe()} ({source}) at http://{args.host}:{args.port} — Ctrl-C stops")
    serve(app, host=args.host, port=args.port)
    return 0
