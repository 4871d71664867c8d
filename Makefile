# PISA Live: `make run` brings the whole stack up, `make test` runs the suite. See README.md.
SHELL := /bin/bash
PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
# Without DATABASE_URL/REDIS_URL, both commands use real embedded PostgreSQL and Redis kept under PISA_HOME;
# the test suite gets its own PISA_HOME so it never touches the data of the stack you run.
PISA_HOME ?= $(CURDIR)/.pisa
PORT ?= 8000
STREAM_PORT ?= 8001
FLOWER_PORT ?= 5555
export PORT STREAM_PORT FLOWER_PORT
EMBEDDED := $(PY) -m pisa_site.embedded run --
# The Procfile's commands (gunicorn, celery, honcho) are the venv's.
export PATH := $(CURDIR)/$(VENV)/bin:$(PATH)

.PHONY: run test venv bench clean-data stop-services lint

$(VENV)/.installed: requirements.txt requirements-dev.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet --progress-bar off -r requirements-dev.txt
	@touch $@

venv: $(VENV)/.installed

run: venv
	PISA_HOME=$(PISA_HOME) DEBUG=$${DEBUG:-1} $(EMBEDDED) bash -c '$(PY) manage.py bootstrap && exec $(VENV)/bin/honcho start --port $(PORT)'

test: venv
	PISA_HOME=$(PISA_HOME)/test DEBUG=$${DEBUG:-1} $(EMBEDDED) $(VENV)/bin/pytest $(PYTEST_ARGS)

# Every benchmark, then bench/RESULTS.md. `make bench BENCH_ARGS=--quick` for a small run of each.
BENCHES ?= ingest freshness change_detection metrics api scale load workers analysis
BENCH_ARGS ?=
bench: venv
	@set -e; for name in $(BENCHES); do \
	  echo "=== bench/$$name.py $(BENCH_ARGS)"; PISA_HOME=$(PISA_HOME) $(PY) -m bench.$$name $(BENCH_ARGS); \
	done
	$(PY) -m bench.report

stop-services: venv
	PISA_HOME=$(PISA_HOME) $(PY) -m pisa_site.embedded stop
	PISA_HOME=$(PISA_HOME)/test $(PY) -m pisa_site.embedded stop

clean-data: stop-services
	rm -rf $(PISA_HOME)
