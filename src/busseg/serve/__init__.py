"""``busseg serve``: a local web page where a person drops a scan and sees the model's result.

- :mod:`busseg.serve.model`: which model is served (any run, cv folder or ONNX file; the demo
  model by default) and example scans;
- :mod:`busseg.serve.app`: the FastAPI application and its page (``page.html``).
"""
