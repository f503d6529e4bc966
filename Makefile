# Set-up and the two jobs of the README: `make quickstart` and `make test`.
VENV ?= .venv
PYTHON ?= python3
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
FASHION_MNIST := /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz

.PHONY: install data browser quickstart test

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -e '.[test]'
	touch $@

# Real Fashion-MNIST (MIT licence) from Debian: the quickstart's data and the real-data tests'.
data:
	@[ -f $(FASHION_MNIST) ] || { $(SUDO) apt-get update -q && $(SUDO) apt-get install -y -q dataset-fashion-mnist; }

# Headless Chromium + ChromeDriver from Debian for the HTML figure test.
browser:
	@{ [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ]; } || { $(SUDO) apt-get update -q && $(SUDO) apt-get install -y -q chromium chromium-driver; }

quickstart: install data
	$(VENV)/bin/dsearch run spaces/quickstart.yaml
	$(VENV)/bin/dsearch pareto studies/quickstart

test: install data browser
	$(VENV)/bin/lint-imports
	$(VENV)/bin/pytest -q
