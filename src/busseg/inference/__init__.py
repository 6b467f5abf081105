"""Inference for users: prediction on their own scans, ensembles, ONNX export.

- :func:`busseg.inference.predict.predict` — masks at original size, overlays and one row of
  measurements per image for a file, folder or list of scans (``busseg predict``);
  :func:`~busseg.inference.predict.load_predictor` loads one model or a cv run's fold models.
- :func:`busseg.inference.measurements.lesion_measurements` — area, bounding box, maximum
  diameter, orientation and circularity of a mask.
- :func:`busseg.inference.export.export_onnx` — ONNX export checked against PyTorch
  (``busseg export``); :class:`busseg.inference.onnx_runner.OnnxModel` runs it with onnxruntime.
"""

from busseg.inference.export import export, export_onnx
from busseg.inference.measurements import lesion_measurements
from busseg.inference.onnx_runner import OnnxModel, load_onnx_model
from busseg.inference.predict import collect_inputs, load_predictor, predict

__all__ = [
    "OnnxModel",
    "collect_inputs",
    "export",
    "export_onnx",
    "lesion_measurements",
    "load_onnx_model",
    "load_predictor",
    "predict",
]
