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
"""

__version__ = "0.1.0"
