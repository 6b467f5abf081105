"""The ``busseg`` command line. Each sub-command is a module of this package exposing
``register(subparsers)``; the CLI only wraps the Python API."""
