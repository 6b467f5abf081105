"""Inference for users: prediction on their own scans, ensembles, ONNX export.

- :mod:`busseg.inference.predict` — ``predict()``: masks at original size, overlays and one row of
  measurements per image for a file, folder or list of scans (``busseg predict``);
  ``load_predictor()`` loads one model or a cv run's fold models (an ensemble).
- :mod:`busseg.inference.measurements` — ``lesion_measurements()``: area, bounding box, maximum
  diameter, orientation and circularity of a mask.
- :mod:`busseg.inference.export` — ``export_onnx()``: ONNX export checked against PyTorch
  (``busseg export``); :mod:`busseg.inference.onnx_runner` runs it with onnxruntime.

(The functions are not re-exported here: ``predict`` and ``export`` would shadow their modules.)
"""

__all__ = ["export", "measurements", "onnx_runner", "predict"]
