"""Dataset adapters: one module per source layout, each with ``load(root, strict=True)``.

An adapter only lists files and reads the dataset's tables (fast); decoding pixels and checking
sizes happen in :mod:`busseg.data.imageio`, :mod:`busseg.data.preprocess` and the audit.
"""

from __future__ import annotations

from busseg.data.adapters import busbra, busi, folder, stu, udiat

#: dataset name -> adapter module (``load`` and ``DEFAULT_SUBDIR``).
ADAPTERS = {"busi": busi, "busbra": busbra, "udiat": udiat, "stu": stu, "folder": folder}

__all__ = ["ADAPTERS", "busbra", "busi", "folder", "stu", "udiat"]
