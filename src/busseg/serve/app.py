"""The web demo: one page where a person drops a scan and sees what a busseg model makes of it.

``create_app(model)`` returns a FastAPI application (served by uvicorn, :func:`serve`):

- ``GET /``: the page (``page.html`` next to this file: one self-contained HTML file, no script,
  font or style from the network, so it works offline);
- ``GET /api/info``: the model's description, what it outputs, the examples, the upload limit;
- ``GET /api/examples/<name>``: an example scan;
- ``POST /api/predict``: a multipart form with ``file`` (an upload: PNG, JPEG, BMP, TIFF or
  DICOM) or ``example`` (the name of an example), and optionally ``tta`` (flip test-time
  augmentation) and ``spacing`` (mm per pixel, for images that record none). The answer is JSON:
  the scan, the predicted lesion over it, the probability heat map and the mask as PNG data
  URLs, the measurements (pixels, and mm with a spacing — DICOM files bring theirs), the class
  probabilities of multi-task models, and notes (e.g. a 16-bit image rescaled to 8 bits).

Every bad upload — an empty file, a file over the size limit, a file that is not an image busseg
reads, an image too large to show — is answered with a 4xx status and ``{"error": message}``,
a sentence naming the file and the problem that the page shows as it is; an unexpected failure
is logged with its traceback on the server and answered with a message, never a stack trace.

Why FastAPI (and not Gradio, the usual tool for model pages): the page is ours, a few hundred
lines of HTML and JavaScript with stable element ids, so the browser test drives it reliably and
nothing is fetched from the network (Gradio's front end is a large bundle whose markup changes
between releases); FastAPI, Starlette and uvicorn are small, well-kept packages that install
from PyPI without build steps, and FastAPI's TestClient tests the API without a browser.
"""

from __future__ import annotations

import base64
import io
import logging
import os
import re
import tempfile
import threading
import time
import warnings
from importlib import resources
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from fastapi import FastAPI, File, Form, Request, UploadFile
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse
from PIL import Image

from busseg.errors import BussegError

log = logging.getLogger("busseg")

#: largest upload accepted (bytes): an ultrasound frame is well under 5 MB, a DICOM file too.
DEFAULT_MAX_UPLOAD_BYTES = 25 * 1024 * 1024
#: largest image shown (pixels): above it, the overlays would be too large to send back.
DEFAULT_MAX_PIXELS = 16_000_000
#: bytes of a multipart request besides the file (boundaries, headers, form fields).
_FORM_OVERHEAD = 64 * 1024
_READABLE = "PNG, JPEG, BMP, TIFF or DICOM"


class UploadError(BussegError):
    """A request the page answers with a message (``status``: the HTTP status)."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


def _megabytes(n: int) -> str:
    return f"{n / (1024 * 1024):.1f} MB"


def _png_data_url(array: np.ndarray) -> str:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG", compress_level=1)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def _safe_name(name: str) -> str:
    """The uploaded file's base name, reduced to characters safe in a path."""
    base = Path(name.replace("\\", "/")).name
    return re.sub(r"[^A-Za-z0-9._-]+", "_", base).strip("._") or "upload"


def _parse_spacing(text: str | None) -> tuple[float, float] | None:
    """``"0.1"`` or ``"0.1, 0.12"`` (row, column mm per pixel) → a spacing; empty → None."""
    from busseg.inference.measurements import check_spacing

    if text is None or not text.strip():
        return None
    parts = [p for p in re.split(r"[,\s;x×]+", text.strip()) if p]
    try:
        values = [float(p) for p in parts]
    except ValueError:
        raise UploadError(f"pixel spacing {text!r}: give one number (mm per pixel) or two (row, column)") from None
    if len(values) == 1:
        values = values * 2
    if len(values) != 2:
        raise UploadError(f"pixel spacing {text!r}: give one number (mm per pixel) or two (row, column)")
    try:
        return check_spacing(values)
    except BussegError as exc:
        raise UploadError(str(exc)) from None


def _measurement_rows(m: dict[str, Any] | None, spacing) -> list[dict[str, str]]:
    """The measurements as (label, value) rows, pixels and millimetres side by side."""
    if m is None:
        return []
    if not m.get("lesion_found"):
        return [{"label": "Lesion", "value": "none found (empty mask)"}]

    def both(px: str, mm: Any, unit: str) -> str:
        return px if mm is None else f"{px} ({mm:.1f} {unit})"

    rows = [
        {"label": "Lesion", "value": "found" + (f" ({m['n_components']} regions; the largest is measured)"
                                               if m.get("n_components", 1) > 1 else "")},
        {"label": "Area" + (" (all regions)" if m.get("n_components", 1) > 1 else ""),
         "value": both(f"{m['area_px']:,} px", m.get("area_mm2"), "mm²")},
        {"label": "Maximum diameter", "value": both(f"{m['max_diameter_px']:.1f} px", m.get("max_diameter_mm"), "mm")},
        {"label": "Bounding box", "value": f"{m['bbox_width']} × {m['bbox_height']} px at ({m['bbox_x']}, {m['bbox_y']})"
                                          + ("" if m.get("width_mm") is None else
                                             f" ({m['width_mm']:.1f} × {m['depth_mm']:.1f} mm)")},
        {"label": "Orientation", "value": f"{m['orientation']} (depth/width {m['depth_width_ratio']:.2f})"},
        {"label": "Circularity", "value": f"{m['circularity']:.2f}"},
        {"label": "Pixel spacing", "value": "not known (pixels only)" if spacing is None else
                                            f"{spacing[0]:g} × {spacing[1]:g} mm"},
    ]
    return rows


class DemoService:
    """The predictions behind the page: reads an upload safely, runs the model, renders."""

    def __init__(self, model, *, examples: Sequence[str | Path] = (), max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES,
                 max_pixels: int = DEFAULT_MAX_PIXELS) -> None:
        self.model = model
        self.models = {False: model, True: model.with_options(tta=True)}
        self.examples = {Path(p).name: Path(p) for p in examples}
        self.max_upload_bytes = int(max_upload_bytes)
        self.max_pixels = int(max_pixels)
        self._lock = threading.Lock()

    def info(self) -> dict:
        return {"model": self.model.describe(), "segments": self.model.segments, "classifies": self.model.classifies,
                "examples": sorted(self.examples), "max_upload_bytes": self.max_upload_bytes,
                "max_upload": _megabytes(self.max_upload_bytes), "readable": _READABLE}

    def read_upload(self, name: str, stream) -> bytes:
        data = stream.read(self.max_upload_bytes + 1)
        if not data:
            raise UploadError(f"{name} is empty (0 bytes): choose a {_READABLE} scan.")
        if len(data) > self.max_upload_bytes:
            raise UploadError(f"{name} is larger than {_megabytes(self.max_upload_bytes)}: the demo accepts scans "
                              f"up to {_megabytes(self.max_upload_bytes)}.", status=413)
        return data

    def predict_bytes(self, name: str, data: bytes, *, tta: bool = False, spacing=None) -> dict:
        with tempfile.TemporaryDirectory(prefix="busseg-serve-") as folder:
            path = Path(folder) / _safe_name(name)
            path.write_bytes(data)
            try:
                return self.predict_file(path, name, tta=tta, spacing=spacing)
            except BussegError as exc:
                if isinstance(exc, UploadError):
                    raise
                message = str(exc).replace(str(path), name).replace(folder + os.sep, "")
                hint = "" if "supported:" in message else f". The demo reads {_READABLE} scans."
                raise UploadError(message + hint, status=415) from None

    def predict_example(self, name: str, *, tta: bool = False, spacing=None) -> dict:
        if name not in self.examples:
            raise UploadError(f"no example named {name!r}", status=404)
        return self.predict_file(self.examples[name], name, tta=tta, spacing=spacing)

    def _check_size(self, path: Path, name: str) -> None:
        try:
            with Image.open(path) as img:
                width, height = img.size
        except Exception:  # not a Pillow image (DICOM, or not an image): read_image decides
            return
        if width * height > self.max_pixels:
            raise UploadError(f"{name} is {width} × {height} pixels; the demo shows images up to "
                              f"{self.max_pixels / 1e6:.0f} megapixels.", status=413)

    def predict_file(self, path: Path, name: str, *, tta: bool = False, spacing=None) -> dict:
        # One request at a time: bounded memory, predictable latency, and the warnings caught
        # while reading belong to this file (the warnings filters are global to the process).
        with self._lock:
            return self._predict_file(path, name, tta=tta, spacing=spacing)

    def _predict_file(self, path: Path, name: str, *, tta: bool, spacing) -> dict:
        from busseg.data.imageio import read_image, read_pixel_spacing
        from busseg.viz.overlay import overlay_heatmap, overlay_prediction

        self._check_size(path, name)
        notes: list[str] = []
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            gray = read_image(path)
            own = read_pixel_spacing(path)
        notes += [str(w.message).replace(str(path), name) for w in caught
                  if issubclass(w.category, UserWarning)]
        if gray.size > self.max_pixels:
            raise UploadError(f"{name} is {gray.shape[1]} × {gray.shape[0]} pixels; the demo shows images up to "
                              f"{self.max_pixels / 1e6:.0f} megapixels.", status=413)
        used = own if own is not None else spacing
        model = self.models[bool(tta)]
        started = time.perf_counter()
        result = model(gray, spacing=used)  # the decoded scan; its own spacing (DICOM) wins
        seconds = time.perf_counter() - started
        answer: dict[str, Any] = {
            "name": name, "width": int(gray.shape[1]), "height": int(gray.shape[0]),
            "spacing_mm": None if used is None else [float(used[0]), float(used[1])],
            "spacing_source": None if used is None else ("file" if own is not None else "given"),
            "model": model.describe(), "tta": bool(tta), "seconds": round(seconds, 3), "notes": notes,
            "image": _png_data_url(gray),
        }
        if result.mask is not None:
            mask = np.asarray(result.mask, bool)
            answer.update(
                overlay=_png_data_url(overlay_prediction(gray, mask, alpha=0.45)),
                heatmap=_png_data_url(overlay_heatmap(gray, np.asarray(result.probability, np.float32))),
                mask=_png_data_url(mask.astype(np.uint8) * 255),
                mask_filename=f"{Path(_safe_name(name)).stem}_mask.png",
                lesion_found=bool(mask.any()),
                max_probability=float(np.max(result.probability)),
                measurements=_measurement_rows(result.measurements, used),
                raw_measurements=result.measurements,
            )
        if result.class_probabilities is not None:
            probabilities = {k: float(v) for k, v in result.class_probabilities.items()}
            answer.update(class_probabilities=probabilities,
                          predicted_class=max(probabilities, key=probabilities.get))
        return answer


def _page() -> str:
    return (resources.files("busseg.serve") / "page.html").read_text(encoding="utf-8")


def create_app(model, *, examples: Sequence[str | Path] = (), max_upload_bytes: int = DEFAULT_MAX_UPLOAD_BYTES,
               max_pixels: int = DEFAULT_MAX_PIXELS):
    """The FastAPI application serving ``model`` (a predictor, :func:`busseg.serve.model.load_model`)."""
    service = DemoService(model, examples=examples, max_upload_bytes=max_upload_bytes, max_pixels=max_pixels)
    app = FastAPI(title="busseg demo", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.service = service

    @app.exception_handler(UploadError)
    async def _upload_error(request: Request, exc: UploadError):
        return JSONResponse({"error": str(exc)}, status_code=exc.status)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception):
        log.exception("serve: %s failed", request.url.path)
        return JSONResponse({"error": f"the model could not process this request ({type(exc).__name__}: {exc}); "
                                      "the server log has the details"}, status_code=500)

    @app.middleware("http")
    async def _refuse_oversized(request: Request, call_next):
        # before the body is read: an upload far over the limit is refused at once, not spooled to
        # disk (one a little over it is read and refused with its file name, read_upload)
        length = request.headers.get("content-length")
        if request.url.path == "/api/predict" and length and length.isdigit() \
                and int(length) > 2 * service.max_upload_bytes + _FORM_OVERHEAD:
            return JSONResponse({"error": f"the upload is {_megabytes(int(length))}: the demo accepts scans up to "
                                          f"{_megabytes(service.max_upload_bytes)}."}, status_code=413)
        return await call_next(request)

    @app.get("/", response_class=HTMLResponse)
    def page() -> str:
        return _page()

    @app.get("/api/info")
    def info() -> dict:
        return service.info()

    @app.get("/api/examples/{name}")
    def example(name: str):
        if name not in service.examples:
            return JSONResponse({"error": f"no example named {name!r}"}, status_code=404)
        return FileResponse(service.examples[name])

    @app.post("/api/predict")
    def predict(file: UploadFile | None = File(None), example: str | None = Form(None),
                tta: bool = Form(False), spacing: str | None = Form(None)) -> dict:
        pixel_spacing = _parse_spacing(spacing)
        if example:
            return service.predict_example(example, tta=tta, spacing=pixel_spacing)
        if file is None or not file.filename:
            raise UploadError(f"no scan received: drop a {_READABLE} file on the page or pick an example.")
        data = service.read_upload(file.filename, file.file)
        return service.predict_bytes(file.filename, data, tta=tta, spacing=pixel_spacing)

    return app


def serve(app, host: str = "127.0.0.1", port: int = 7860) -> None:
    """Run ``app`` with uvicorn until interrupted."""
    import uvicorn

    uvicorn.run(app, host=host, port=port, log_level="warning")


__all__ = ["DEFAULT_MAX_PIXELS", "DEFAULT_MAX_UPLOAD_BYTES", "DemoService", "UploadError", "create_app", "serve"]
