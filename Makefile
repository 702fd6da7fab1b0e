# revproxy: the two commands a newcomer needs are `make run` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.deps-installed
# sslyze lives in a venv of its own (it pins an older cryptography).
SSLYZE_VENV  := .venv-sslyze
SSLYZE_STAMP := $(SSLYZE_VENV)/.deps-installed
# Tests and the demo run the code of this checkout, not a stale installed copy.
export PYTHONPATH := $(CURDIR)

.PHONY: run test lint typecheck unit install bench clean debian-deps

# Debian packages the integration tests use: real admin-socket clients
# (nc, socat), real TLS and HTTP/2 clients (openssl, nghttp, curl), and
# pebble, Let's Encrypt's test ACME server (with pebble-challtestsrv), and
# slowhttptest, a real slow-client attacker for the slow-client tests.
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

$(STAMP): requirements-test.txt setup.cfg pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q -U pip
	$(BIN)/pip install -q -r requirements-test.txt
	touch $@

# A real (non-editable) install: twistd finds plugins by scanning sys.path for
# twisted/plugins, which an editable install hides.
install: $(STAMP)
	$(BIN)/pip install -q --no-deps --no-build-isolation .

run: install
	@echo "revproxy demo: http://127.0.0.1:8080/  (upstream: examples/www on 127.0.0.1:8081; Ctrl-C stops both)"
	$(BIN)/python examples/demo_upstream.py 127.0.0.1 8081 examples/www & \
	  upstream=$$!; trap 'kill $$upstream 2>/dev/null' EXIT INT TERM; \
	  $(BIN)/twistd -n --pidfile= revproxy --config examples/quickstart.toml

$(SSLYZE_STAMP): requirements-sslyze.txt
	test -x $(SSLYZE_VENV)/bin/python || $(PYTHON) -m venv $(SSLYZE_VENV)
	$(SSLYZE_VENV)/bin/pip install -q -U pip
	$(SSLYZE_VENV)/bin/pip install -q -r requirements-sslyze.txt
	touch $@

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: $(STAMP)
	$(BIN)/mypy

unit: install $(SSLYZE_STAMP)
	REVPROXY_SSLYZE=$(CURDIR)/$(SSLYZE_VENV)/bin/sslyze $(BIN)/python -m twisted.trial --jobs=2 tests

debian-deps:
	@missing=""; \
	command -v nc >/dev/null || missing="$$missing netcat-openbsd"; \
	command -v socat >/dev/null || missing="$$missing socat"; \
	command -v openssl >/dev/null || missing="$$missing openssl"; \
	command -v nghttp >/dev/null || missing="$$missing nghttp2-client"; \
	command -v curl >/dev/null || missing="$$missing curl"; \
	command -v pebble >/dev/null || missing="$$missing pebble"; \
	command -v slowhttptest >/dev/null || missing="$$missing slowhttptest"; \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing"; \
	  $(SUDO) apt-get update -q && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -q $$missing; \
	fi

test: debian-deps lint typecheck unit

bench: install
	bench/run.sh

clean:
	rm -rf $(VENV) $(SSLYZE_VENV) build *.egg-info _trial_temp* twisted/plugins/dropin.cache
