# The README's two commands: `make demo` runs the main job, `make test` runs the tests.
# Both create the virtual environment and install on first use.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp
# torch==2.13.0 must come from the CPU wheel on disk; PyPI's build of that version is multi-GB CUDA.
WHEELS := $(wildcard /opt/wheels)
PIP_FLAGS := -q $(if $(WHEELS),--find-links $(WHEELS))

.PHONY: install spark demo test redis browser lint clean bench lock wheel bento

# deploy/requirements.txt pins every runtime dependency: the venv, the tests and the Bento get the same set.
$(STAMP): pyproject.toml deploy/requirements.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install $(PIP_FLAGS) --upgrade pip
	$(BIN)/pip install $(PIP_FLAGS) -c deploy/requirements.txt -e ".[test]"
	touch $(STAMP)

install: $(STAMP)

# The Spark engine (optional extra): the tests hold it to DuckDB's answers, so `make test` installs it.
SPARK_STAMP := $(VENV)/.spark-stamp
$(SPARK_STAMP): $(STAMP)
	$(BIN)/pip install $(PIP_FLAGS) -c deploy/requirements.txt -e ".[test,spark]"
	touch $(SPARK_STAMP)

spark: $(SPARK_STAMP)

# The Redis online store and ledger are tested against a real redis-server; deploy/prometheus.yml and
# the dashboard's queries against Prometheus' own promtool (Debian's prometheus package; not started).
redis:
	@command -v redis-server >/dev/null 2>&1 || (apt-get update -qq && apt-get install -y -qq redis-server >/dev/null) \
		|| (echo "could not install redis-server: install it (apt-get install redis-server) and re-run" && exit 1)
	@command -v promtool >/dev/null 2>&1 || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
		--no-install-recommends prometheus >/dev/null) \
		|| (echo "could not install promtool: install it (apt-get install prometheus) and re-run" && exit 1)

# The dashboard's browser tests drive a real headless Chromium: Debian's package (Playwright's own browser download
# is not used).
browser:
	@command -v chromium >/dev/null 2>&1 || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
		--no-install-recommends chromium >/dev/null) \
		|| (echo "could not install chromium: install it (apt-get install chromium) and re-run" && exit 1)

# After changing dependencies: pin the installed runtime closure again (deploy/requirements.txt).
lock: install
	$(BIN)/python deploy/lock.py

# The nextbest wheel in dist/ (for the Bento and deploy/Dockerfile).
wheel: install
	rm -rf dist && $(BIN)/pip wheel -q --no-deps --no-build-isolation -w dist .

# The Bento of the decision service ([tool.bentoml.build] in pyproject.toml).
bento: wheel
	$(BIN)/bentoml build

demo: install
	$(BIN)/nextbest demo

test: install spark redis browser
	$(BIN)/python -m pytest

lint: install
	$(BIN)/ruff check features simulation training serving campaigns monitoring pipelines tests benchmarks

bench: install
	$(BIN)/python benchmarks/bench_features.py --users 100000

clean:
	rm -rf .nextbest $(VENV)
