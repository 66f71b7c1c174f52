# All set-up happens here: on a fresh machine `make demo` and `make test` create the venv,
# install the package and its offline assets, then run.
PY      ?= python3
VENV    := .venv
BIN     := $(VENV)/bin
STAMP   := $(VENV)/.installed-stamp
OUT     ?= demo-out
FMNIST  := /usr/share/datasets/fashion-mnist

.PHONY: install test demo bench data clean

$(STAMP): pyproject.toml constraints-local.txt
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --disable-pip-version-check -c constraints-local.txt -e '.[test,demo]'
	$(BIN)/pip install -q --disable-pip-version-check --no-deps animal-mnist
	touch $(STAMP)

install: $(STAMP) data

# Fashion-MNIST comes from Debian's dataset-fashion-mnist (root here; elsewhere RESI_DUAL_FASHION_MNIST, see README).
data:
	@if [ ! -d $(FMNIST) ]; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    (apt-get install -y -qq dataset-fashion-mnist >/dev/null 2>&1 || \
	     (apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq dataset-fashion-mnist >/dev/null 2>&1)) \
	    || echo "warning: could not install Debian package dataset-fashion-mnist"; \
	  else echo "note: Fashion-MNIST missing; install Debian's dataset-fashion-mnist or set RESI_DUAL_FASHION_MNIST to a folder with its IDX .gz files"; fi; \
	fi
	@# the explorer's browser test drives Debian's headless chromium through its chromedriver
	@if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    (apt-get install -y -qq chromium chromium-driver >/dev/null 2>&1 || \
	     (apt-get update -qq >/dev/null 2>&1 && apt-get install -y -qq chromium chromium-driver >/dev/null 2>&1)) \
	    || echo "warning: could not install Debian packages chromium and chromium-driver (the browser test will skip)"; \
	  else echo "note: chromium/chromedriver missing; install Debian's chromium and chromium-driver for the explorer's browser test"; fi; \
	fi

# The tiers in order (markers in pyproject.toml): a failing unit test stops before the slower tiers.
test: install
	$(BIN)/python -m pytest -q -m unit
	$(BIN)/python -m pytest -q -m integration
	$(BIN)/python -m pytest -q -m slow

demo: install
	$(BIN)/resi-dual demo --out $(OUT)

bench: install
	$(BIN)/python -m bench.run --out BENCHMARKS.md

clean:
	rm -rf $(VENV) $(OUT)
