# Set-up and the two jobs of the README: `make quickstart` and `make test`.
VENV ?= .venv
PYTHON ?= python3
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
FASHION_MNIST := /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz

.PHONY: install data browser postgres quickstart test

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

# PostgreSQL server binaries from Debian for tests/test_postgres.py, which starts its own throwaway server (as the
# postgres user, on a free loopback port, in a temp dir) and stops it. A cluster that the package's scripts start
# on install is stopped again: the tests don't use it, and nothing is left running.
postgres:
	@ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 || { $(SUDO) apt-get update -q && \
	  $(SUDO) env DEBIAN_FRONTEND=noninteractive apt-get install -y -q postgresql && \
	  { pg_lsclusters -h 2>/dev/null | while read -r version cluster port status rest; do \
	      case "$$status" in online*) $(SUDO) pg_ctlcluster "$$version" "$$cluster" stop;; esac; done; }; }

quickstart: install data
	$(VENV)/bin/dsearch run spaces/quickstart.yaml
	$(VENV)/bin/dsearch pareto studies/quickstart

test: install data browser postgres
	$(VENV)/bin/lint-imports
	$(VENV)/bin/pytest -q
