"""busseg: lesion segmentation and benign/malignant classification in breast ultrasound.

The pipeline is visible in the sub-packages, in the order a study runs:

- ``busseg.data``        datasets (adapters per source layout), phantoms, preprocessing cache,
                         audit (duplicates), leakage-free splits, augmentation
- ``busseg.models``      the model registry (``create_model``), encoders, the papers' models
                         and the baselines they compare against
- ``busseg.losses``      pixel losses and the papers' composite objectives
- ``busseg.metrics``     per-image segmentation metrics and classification metrics
- ``busseg.engine``      recipes, training (Lightning), cross-validation, evaluation
- ``busseg.postprocess`` mask post-processing (components, holes, smoothing)
- ``busseg.inference``   prediction on a user's scans, ensembling, ONNX export
- ``busseg.report``      benchmarks, statistics and the HTML/Markdown report
- ``busseg.viz``         overlays and figures (TP green, FP red, FN blue)

Applying a trained model takes three lines (:mod:`busseg.inference.predictor`)::

    import busseg
    model = busseg.load("runs/elad")   # run, cv folder (fold ensemble), checkpoint or ONNX file
    result = model(image)              # NumPy array, PIL image or path -> mask, probability,
                                       # class_probabilities, measurements at the image's size
"""

__version__ = "0.1.0"

#: the public API re-exported here, imported on first use so that ``import busseg`` (and every
#: command line) does not pay for PyTorch until a model is loaded.
_PREDICTOR_API = ("load", "Predictor", "Prediction")


def __getattr__(name: str):
    if name in _PREDICTOR_API:
        from busseg.inference import predictor

        return getattr(predictor, name)
    raise AttributeError(f"module 'busseg' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_PREDICTOR_API])


__all__ = ["__version__", *_PREDICTOR_API]
