"""The busseg ONNX file: written by :func:`save_onnx` (export, INT8 quantization) and run with
onnxruntime behind the same interface as a PyTorch model: calling it on an image batch returns a
:class:`~busseg.models.output.ModelOutput`, so :class:`busseg.inference.predictor.Predictor`
(ensembles, test-time flips) serves both without a second implementation.

A busseg ONNX file (written by :func:`busseg.inference.export.export_onnx`) carries in its
``metadata_props`` everything prediction needs besides the weights: the training recipe (image
size, normalisation, input channels, model name) and the names of its outputs
(``seg_logits`` ``[B,1,S,S]`` and/or ``cls_logits`` ``[B,2]``).
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import torch

from busseg.errors import CheckpointError
from busseg.fileio import atomic_write_bytes
from busseg.models.output import ModelOutput

#: metadata_props keys of a busseg ONNX file.
META_RECIPE = "busseg.recipe"
META_OUTPUTS = "busseg.outputs"
META_FORMAT = "busseg.format"
META_VERSION = "busseg.version"
META_CHECK = "busseg.check_max_abs_diff"
#: present in INT8 files: how they were quantized and how well their masks agree (JSON).
META_QUANTIZATION = "busseg.quantization"
#: bumped when the meaning of the exported inputs/outputs changes.
ONNX_FORMAT = "busseg-onnx/1"
SEG_OUTPUT = "seg_logits"
CLS_OUTPUT = "cls_logits"
INPUT_NAME = "image"


def _providers(device: str) -> list[str]:
    import onnxruntime as ort

    available = ort.get_available_providers()
    if str(device).startswith("cuda"):
        if "CUDAExecutionProvider" not in available:
            raise CheckpointError(
                "device 'cuda' asked for an ONNX model, but this onnxruntime has no "
                f"CUDAExecutionProvider (available: {', '.join(available)})"
            )
        return ["CUDAExecutionProvider", "CPUExecutionProvider"]
    return ["CPUExecutionProvider"]


class OnnxModel:
    """An exported busseg model run by onnxruntime; ``model(images)`` -> ModelOutput.

    Args:
        path: the ``.onnx`` file.
        device: ``"cpu"`` or ``"cuda"`` (needs onnxruntime-gpu).
        threads: onnxruntime intra-op threads (default: onnxruntime's choice, one per core).

    Session: every graph optimisation (``ORT_ENABLE_ALL``: constant folding, Conv+BatchNorm
    fusion, and on CPU the blocked NCHWc layout for fp32 / NHWC for INT8 convolutions),
    sequential execution of the nodes (a U-Net is a chain: parallel branches would only take
    cores from the convolutions) and one inter-op thread. The intra-op threads do not spin
    while waiting for work: ``busseg predict`` decodes and writes images on the same cores, and
    spinning took about 10 % of the CPU time from them (2 cores, ResNet-18 U-Net at 256²:
    end-to-end 4.9 instead of 4.8 images/s, benchmarks/predict_throughput.py).
    """

    def __init__(self, path: str | Path, device: str = "cpu", threads: int | None = None) -> None:
        import onnxruntime as ort

        self.path = Path(path)
        if not self.path.is_file():
            raise CheckpointError(f"ONNX model {self.path} does not exist")
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        options.inter_op_num_threads = 1
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        if threads:
            options.intra_op_num_threads = int(threads)
        try:
            self.session = ort.InferenceSession(str(self.path), options, providers=_providers(device))
        except CheckpointError:
            raise
        except Exception as exc:  # onnxruntime raises its own exception types
            raise CheckpointError(f"ONNX model {self.path}: cannot be loaded ({type(exc).__name__}: {exc})") from None
        meta = self.session.get_modelmeta().custom_metadata_map
        if META_RECIPE not in meta or META_OUTPUTS not in meta:
            raise CheckpointError(
                f"ONNX model {self.path}: no busseg metadata (recipe, outputs); export it with "
                "`busseg export` so that prediction knows the preprocessing"
            )
        if meta.get(META_FORMAT, ONNX_FORMAT) != ONNX_FORMAT:
            raise CheckpointError(
                f"ONNX model {self.path}: format {meta.get(META_FORMAT)!r}, this busseg reads {ONNX_FORMAT!r}"
            )
        self.recipe: dict = json.loads(meta[META_RECIPE])
        self.outputs: list[str] = json.loads(meta[META_OUTPUTS])
        self.input_name = self.session.get_inputs()[0].name
        #: how the file was quantized (None: fp32), see :mod:`busseg.inference.quantize`.
        self.quantization: dict | None = json.loads(meta[META_QUANTIZATION]) if META_QUANTIZATION in meta else None

    @property
    def precision(self) -> str:
        return self.quantization["type"] if self.quantization else "fp32"

    def __call__(self, images: torch.Tensor) -> ModelOutput:
        x = np.ascontiguousarray(images.detach().cpu().numpy(), dtype=np.float32)
        values = dict(zip(self.outputs, self.session.run(self.outputs, {self.input_name: x})))
        seg = torch.from_numpy(values[SEG_OUTPUT]) if SEG_OUTPUT in values else None
        cls = torch.from_numpy(values[CLS_OUTPUT]) if CLS_OUTPUT in values else None
        return ModelOutput(seg=seg, cls=cls)

    # the few nn.Module methods that callers of a model use
    def eval(self) -> OnnxModel:
        return self

    def to(self, *args, **kwargs) -> OnnxModel:
        return self

    def __repr__(self) -> str:
        return (f"OnnxModel({str(self.path)!r}, model={self.recipe.get('model')!r}, outputs={self.outputs}, "
                f"precision={self.precision!r})")


def save_onnx(proto, path: str | Path, metadata: dict[str, str], producer: str) -> Path:
    """Write an ONNX model atomically with ``metadata`` as its metadata_props (replacing any)
    and ``producer`` as its producer name."""
    import onnx

    del proto.metadata_props[:]
    for key, value in metadata.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    proto.producer_name = producer
    buffer = io.BytesIO()
    onnx.save(proto, buffer)
    return atomic_write_bytes(path, buffer.getvalue())


def load_onnx_model(path: str | Path, device: str = "cpu", threads: int | None = None) -> tuple[OnnxModel, dict]:
    """``(model, recipe)`` of a busseg ONNX file, like :func:`busseg.models.checkpoint.load_checkpoint`."""
    model = OnnxModel(path, device=device, threads=threads)
    return model, model.recipe


__all__ = [
    "CLS_OUTPUT",
    "INPUT_NAME",
    "META_QUANTIZATION",
    "META_RECIPE",
    "OnnxModel",
    "SEG_OUTPUT",
    "load_onnx_model",
    "save_onnx",
]
