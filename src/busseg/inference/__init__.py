"""Applying trained models: the predictor, prediction on a user's scans, ONNX export.

- :mod:`busseg.inference.predictor` — :func:`~busseg.inference.predictor.load` (also
  ``busseg.load``) returns a :class:`~busseg.inference.predictor.Predictor`: one model or a fold
  ensemble, from a run, a cv folder, a checkpoint or an ONNX file, called on an image. Every
  other way of applying a model (``predict``, ``evaluate``, the report's figures) goes through it.
- :mod:`busseg.inference.predict` — ``predict()``: masks at original size, overlays and one row of
  measurements per image for a file, folder or list of scans (``busseg predict``).
- :mod:`busseg.inference.measurements` — ``lesion_measurements()``: area, bounding box, maximum
  diameter, orientation and circularity of a mask.
- :mod:`busseg.inference.export` — ``export_onnx()``: ONNX export checked against PyTorch
  (``busseg export``); :mod:`busseg.inference.onnx_runner` reads and writes busseg ONNX files,
  :mod:`busseg.inference.quantize` makes INT8 twins.

The inference layer sits below the training engine (``busseg.engine`` evaluates through the
predictor) and never imports it.

(The functions are not re-exported here: ``predict`` and ``export`` would shadow their modules.)
"""

__all__ = ["export", "measurements", "onnx_runner", "predict", "predictor", "quantize"]
