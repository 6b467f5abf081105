"""Benchmarks and reports: every model under one protocol, on one shared split.

- ``benchmark``  ``run_benchmark``: models × folds through the engine into one results folder
                 (protocols ``paper`` / ``quick`` / a YAML file; re-runs skip finished work)
- ``results``    reading a results folder back
- ``tables``     the report's tables, recomputed from per-image CSVs
- ``stats``      paired t-test / Wilcoxon against the best, Friedman + Nemenyi, critical difference
- ``figures``    box plots, critical-difference diagram, training curves
- ``compose``    ``build_report``: report.md + self-contained report.html + report_numbers.json
- ``leakage``    ``leakage_study``: random image-level split vs duplicate-aware split
- ``html``       the document model rendered to Markdown and HTML
"""

from busseg.report.benchmark import QUICK_LABEL, QUICK_PROTOCOL, run_benchmark
from busseg.report.compose import build_report
from busseg.report.leakage import leakage_study

__all__ = ["QUICK_LABEL", "QUICK_PROTOCOL", "build_report", "leakage_study", "run_benchmark"]
