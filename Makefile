# Two entry points a fresh machine needs: `make demo` (the main job, built-in phantom data)
# and `make test` (the test suite). Both create or reuse the virtual environment in .venv.
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.busseg-installed

.PHONY: demo test venv browser clean

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# torch/torchvision first and pinned: these exact releases install from the local disk.
	$(BIN)/python -m pip install -q torch==2.14.1 torchvision==0.29.1
	$(BIN)/python -m pip install -q -e ".[dev]"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/busseg demo

# The web demo's tests drive Debian's headless chromium through chromedriver; they never skip,
# so a fresh machine gets both here (apt-get, as root).
browser:
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || \
	  (apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y chromium chromium-driver) || \
	  (echo "the browser tests need chromium and chromium-driver: apt-get install -y chromium chromium-driver" >&2; exit 1)

test: $(STAMP) browser
	$(BIN)/python -m pytest -n 2 --dist loadfile -p no:cacheprovider tests

clean:
	rm -rf $(VENV) build src/*.egg-info
