"""ONNX export of busseg models, checked against PyTorch before the file is written.

A model's :class:`~busseg.models.output.ModelOutput` is not a tensor, so the exported graph is
that of :class:`OnnxExportWrapper`, which returns the tensors prediction needs: the
segmentation logits ``seg_logits [B,1,S,S]`` and, for multi-task models, the classification
logits ``cls_logits [B,2]`` (auxiliary maps and inspection extras are training/analysis outputs
and are not exported). The batch axis is dynamic; the spatial size is the recipe's
``image_size`` (prediction always resizes to it, as training did).

The recipe goes into the file's ``metadata_props`` (key ``busseg.recipe``) so that
``busseg predict --onnx`` preprocesses exactly as training did without the checkpoint.

Exporters: ``"dynamo"`` (``torch.export``, PyTorch's supported path), ``"torchscript"`` (the
legacy tracer, deprecated by PyTorch but much faster to run and still exact for these
feed-forward models), ``"auto"`` = dynamo, falling back to torchscript with a warning naming
the dynamo error. Whatever exporter ran, the ONNX graph is run by onnxruntime on random
images (normalised like real inputs) at batch sizes other than the one traced, and compared with
the PyTorch model; the file is written (atomically) only when every output agrees within
``atol + rtol·|reference|`` (NumPy ``allclose``), and the largest absolute difference is
reported and stored in the file (``busseg.check_max_abs_diff``).
"""

from __future__ import annotations

import json
import logging
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import numpy as np
import torch
from torch import nn

import busseg
from busseg.data.preprocess import normalize
from busseg.errors import ConfigError, ExportError
from busseg.inference.onnx_runner import (
    CLS_OUTPUT,
    INPUT_NAME,
    META_CHECK,
    META_FORMAT,
    META_OUTPUTS,
    META_RECIPE,
    META_VERSION,
    ONNX_FORMAT,
    SEG_OUTPUT,
    save_onnx,
)

if TYPE_CHECKING:
    from busseg.inference.quantize import QuantizationResult

log = logging.getLogger(__name__)

EXPORTERS = ("auto", "dynamo", "torchscript")
#: batch size the graph is traced with; the check runs other sizes to prove the axis dynamic.
TRACE_BATCH = 2


class OnnxExportWrapper(nn.Module):
    """The model with its ModelOutput flattened to the tensors named in ``outputs``."""

    def __init__(self, model: nn.Module, outputs: Sequence[str]) -> None:
        super().__init__()
        self.model = model
        self.outputs = tuple(outputs)

    def forward(self, image: torch.Tensor):
        out = self.model(image)
        tensors = tuple(out.seg if name == SEG_OUTPUT else out.cls for name in self.outputs)
        return tensors[0] if len(tensors) == 1 else tensors


@dataclass
class ExportResult:
    path: Path
    model: str
    outputs: list[str]
    exporter: str
    max_abs_diff: dict[str, float]
    checked_batch_sizes: list[int]
    fold: int | None = None
    notes: list[str] = field(default_factory=list)
    #: the INT8 twin written with ``quantize="int8"`` (:mod:`busseg.inference.quantize`).
    quantization: "QuantizationResult | None" = None

    def describe(self) -> str:
        diffs = ", ".join(f"{k} {v:.2e}" for k, v in self.max_abs_diff.items())
        fold = f" (fold {self.fold})" if self.fold is not None else ""
        text = (f"{self.path}: {self.model}{fold}, exporter {self.exporter}, outputs {', '.join(self.outputs)}; "
                f"max |onnxruntime - PyTorch| at batch {self.checked_batch_sizes}: {diffs}")
        return text + (f"\n{self.quantization.describe()}" if self.quantization else "")


def random_inputs(recipe: dict, batch: int, seed: int = 0) -> torch.Tensor:
    """Random uint8 images normalised as the recipe normalises real ones ``[B,C,S,S]``."""
    g = torch.Generator().manual_seed(seed)
    size = int(recipe["image_size"])
    pixels = torch.randint(0, 256, (batch, size, size), generator=g, dtype=torch.uint8)
    x = normalize(pixels, recipe["normalization"])
    return x[:, None].repeat(1, int(recipe["in_channels"]), 1, 1).contiguous()


def _probe_outputs(model: nn.Module, x: torch.Tensor) -> list[str]:
    with torch.no_grad():
        out = model(x)
    outputs = ([SEG_OUTPUT] if out.seg is not None else []) + ([CLS_OUTPUT] if out.cls is not None else [])
    if not outputs:
        raise ExportError("the model returned neither segmentation nor classification logits")
    return outputs


def _export_graph(wrapper: nn.Module, x: torch.Tensor, outputs: list[str], exporter: str,
                  opset: int | None, path: Path) -> None:
    with warnings.catch_warnings():
        # the legacy exporter's deprecation notice and its tracer warnings about Python
        # conditions on (fixed) spatial sizes; the numerical check below is what counts
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        if exporter == "dynamo":
            batch = torch.export.Dim("batch", min=1, max=65536)
            torch.onnx.export(
                wrapper, (x,), str(path), dynamo=True, external_data=False, verbose=False,
                input_names=[INPUT_NAME], output_names=outputs, opset_version=opset,
                dynamic_shapes={"image": {0: batch}},
            )
        else:
            axes = {name: {0: "batch"} for name in [INPUT_NAME, *outputs]}
            torch.onnx.export(
                wrapper, (x,), str(path), dynamo=False, input_names=[INPUT_NAME],
                output_names=outputs, dynamic_axes=axes, opset_version=opset or 17,
                do_constant_folding=True,
            )


def _check_signature(proto, recipe: dict) -> None:
    """One image input ``[batch, C, S, S]`` with a symbolic batch axis."""
    graph_inputs = [i for i in proto.graph.input if i.name not in {init.name for init in proto.graph.initializer}]
    if len(graph_inputs) != 1:
        raise ExportError(
            f"model {recipe['model']!r}: the exported graph has {len(graph_inputs)} inputs instead of the "
            "image (an output that does not depend on the input, e.g. computed through NumPy or Python "
            "values, is baked in as a constant)"
        )
    dims = graph_inputs[0].type.tensor_type.shape.dim
    expected = [int(recipe["in_channels"]), int(recipe["image_size"]), int(recipe["image_size"])]
    if len(dims) != 4 or not dims[0].dim_param or [d.dim_value for d in dims[1:]] != expected:
        shape = [d.dim_param or d.dim_value for d in dims]
        raise ExportError(f"model {recipe['model']!r}: exported input shape {shape}, expected [batch, {expected}]")


def _check(session, wrapper: nn.Module, recipe: dict, outputs: list[str], batch_sizes: Sequence[int],
           atol: float, rtol: float, seed: int) -> dict[str, float]:
    worst = dict.fromkeys(outputs, 0.0)
    input_name = session.get_inputs()[0].name
    for i, batch in enumerate(batch_sizes):
        x = random_inputs(recipe, batch, seed + 1 + i)
        with torch.no_grad():
            ref = wrapper(x)
        ref = ref if isinstance(ref, tuple) else (ref,)
        got = session.run(outputs, {input_name: x.numpy()})
        for name, r, g in zip(outputs, ref, got):
            r = r.float().numpy()
            if g.shape != r.shape:
                raise ExportError(f"output {name}: onnxruntime shape {g.shape} != PyTorch {r.shape} at batch {batch}")
            worst[name] = max(worst[name], float(np.abs(g - r).max()))
            if not np.allclose(g, r, atol=atol, rtol=rtol):
                raise ExportError(
                    f"output {name} at batch {batch}: onnxruntime differs from PyTorch by up to "
                    f"{np.abs(g - r).max():.3g} (tolerance atol={atol:g} + rtol={rtol:g}·|value|)"
                )
    return worst



def export_onnx(
    model: nn.Module,
    recipe: dict,
    path: str | Path,
    *,
    exporter: str = "auto",
    opset: int | None = None,
    atol: float = 1e-4,
    rtol: float = 1e-3,
    check_batch_sizes: Sequence[int] = (1, 3),
    seed: int = 0,
) -> ExportResult:
    """Export ``model`` (built from ``recipe``) to ``path`` as ONNX with a dynamic batch axis.

    The graph is checked against the PyTorch model with onnxruntime at ``check_batch_sizes``
    (see the module docstring) and written only if it agrees; raises :class:`ExportError`
    otherwise. ``opset``: ONNX opset (default: the exporter's; 17 for torchscript)."""
    import onnx
    import onnxruntime as ort

    if exporter not in EXPORTERS:
        raise ConfigError(f"exporter {exporter!r} unknown; choose one of {', '.join(EXPORTERS)}")
    path = Path(path)
    model = model.eval()
    x = random_inputs(recipe, TRACE_BATCH, seed)
    outputs = _probe_outputs(model, x)
    wrapper = OnnxExportWrapper(model, outputs).eval()
    notes: list[str] = []
    tried = ["dynamo", "torchscript"] if exporter == "auto" else [exporter]
    with tempfile.TemporaryDirectory(prefix=".busseg-export-") as tmp:
        graph_file = Path(tmp) / "model.onnx"
        for i, name in enumerate(tried):
            try:
                _export_graph(wrapper, x, outputs, name, opset, graph_file)
                used = name
                break
            except Exception as exc:  # the exporters raise many types
                reason = f"{name} export failed ({type(exc).__name__}: {str(exc).strip().splitlines()[0][:300] if str(exc).strip() else ''})"
                if i + 1 < len(tried):
                    log.warning("%s; falling back to %s", reason, tried[i + 1])
                    notes.append(reason)
                    continue
                raise ExportError(f"model {recipe['model']!r}: {reason}") from exc
        proto = onnx.load(str(graph_file))
    try:
        onnx.checker.check_model(proto)
    except Exception as exc:
        raise ExportError(f"model {recipe['model']!r}: exported graph is not valid ONNX ({exc})") from exc
    _check_signature(proto, recipe)
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    diffs = _check(session, wrapper, recipe, outputs, check_batch_sizes, atol, rtol, seed)
    meta = {
        META_FORMAT: ONNX_FORMAT,
        META_VERSION: busseg.__version__,
        META_RECIPE: json.dumps(recipe, default=str),
        META_OUTPUTS: json.dumps(outputs),
        META_CHECK: json.dumps(diffs),
    }
    save_onnx(proto, path, meta, f"busseg {busseg.__version__} ({used} exporter)")
    return ExportResult(path=path, model=recipe["model"], outputs=outputs, exporter=used,
                        max_abs_diff=diffs, checked_batch_sizes=list(check_batch_sizes), notes=notes)


def pytorch_reference(model: nn.Module):
    """``images [N,C,S,S] (NumPy) -> {output name: logits}`` of a PyTorch model, the reference a
    quantized graph is checked against."""
    model = model.eval()

    def run(images: np.ndarray) -> dict[str, np.ndarray]:
        with torch.inference_mode():
            out = model(torch.from_numpy(np.ascontiguousarray(images, np.float32)))
        values = {SEG_OUTPUT: out.seg, CLS_OUTPUT: out.cls}
        return {k: v.float().numpy() for k, v in values.items() if v is not None}

    return run


def models_to_export(source: str | Path, *, fold: int | None = None) -> list[tuple[int | None, nn.Module, dict]]:
    """``(fold, model, recipe)`` for every PyTorch model ``source`` names: a checkpoint file, a
    train run, or a ``cv`` directory (every fold model, or only ``fold``), found as
    :func:`busseg.inference.predictor.load` finds them (checkpoints read without running code)."""
    from busseg.inference.predictor import find_models
    from busseg.models.checkpoint import load_checkpoint

    found = find_models(source)
    if fold is not None:
        found = [(k, path) for k, path in found if k == fold]
        if not found:
            raise ConfigError(f"{source}: no model of fold {fold}")
    onnx_files = [str(path) for _, path in found if path.suffix.lower() == ".onnx"]
    if onnx_files:
        raise ConfigError(f"{source}: already ONNX ({onnx_files[0]}); export takes a checkpoint, run or cv folder")
    return [(k, *load_checkpoint(path)) for k, path in found]


def export(
    source: str | Path | Sequence[tuple[int | None, nn.Module, dict]],
    out: str | Path,
    *,
    fold: int | None = None,
    quantize: str | None = None,
    calibration: str | Path = "phantoms",
    calibration_count: int = 16,
    min_dice: float = 0.98,
    **options,
) -> list[ExportResult]:
    """Export what ``source`` names (a path, see :func:`models_to_export`, or a list of
    ``(fold, model, recipe)``) to ``out``: a file for one model; for several fold models, ``out``
    is a folder receiving ``fold_<k>.onnx`` each (``busseg predict --onnx`` on that folder
    ensembles them). ``options`` go to
    :func:`export_onnx`.

    ``quantize="int8"`` also writes an INT8 twin of every exported file (``model.int8.onnx``
    next to a file, ``<out>/int8/fold_<k>.onnx`` in a folder), calibrated on ``calibration``
    (``"phantoms"`` or a folder of scans) and refused unless its masks agree with PyTorch's
    with a mean Dice of at least ``min_dice`` (:func:`busseg.inference.quantize.quantize_onnx`)."""
    from busseg.inference.quantize import QUANTIZATIONS, quantize_onnx, quantized_path

    if quantize is not None and quantize not in QUANTIZATIONS:
        raise ConfigError(f"quantization {quantize!r} unknown; choose one of {', '.join(QUANTIZATIONS)}")
    models = models_to_export(source, fold=fold) if isinstance(source, (str, Path)) else list(source)
    out = Path(out)
    results = []
    for k, model, recipe in models:
        if len(models) == 1:
            target = out if out.suffix == ".onnx" else out / f"{'model' if k is None else f'fold_{k}'}.onnx"
        else:
            if out.suffix == ".onnx":
                raise ConfigError(f"{len(models)} fold models to export: give a folder as output, not {out}")
            target = out / f"fold_{k}.onnx"
        result = export_onnx(model, recipe, target, **options)
        result.fold = k
        if quantize:
            result.quantization = quantize_onnx(
                target, quantized_path(target, out.suffix == ".onnx"), recipe, pytorch_reference(model),
                calibration=calibration, calibration_count=calibration_count, min_dice=min_dice)
            result.quantization.fold = k
        results.append(result)
    return results


__all__ = ["EXPORTERS", "ExportError", "ExportResult", "OnnxExportWrapper", "export", "export_onnx",
           "models_to_export", "pytorch_reference", "random_inputs"]
