# revproxy: the two commands a newcomer needs are `make run` and `make test`.
# Debian's own python3 (built with PGO and LTO) when there is one: the
# Python the .deb runs on, and about a fifth faster than an interpreter
# built without optimizations (pyenv's default).  See docs/performance.md.
PYTHON ?= $(shell test -x /usr/bin/python3 && echo /usr/bin/python3 || echo python3)
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.deps-installed
# sslyze lives in a venv of its own (it pins an older cryptography).
SSLYZE_VENV  := .venv-sslyze
SSLYZE_STAMP := $(SSLYZE_VENV)/.deps-installed
# Tests and the demo run the code of this checkout, not a stale installed copy.
export PYTHONPATH := $(CURDIR)

.PHONY: run test lint typecheck unit integration install bench clean debian-deps lock deb deb-deps deb-test

# Debian packages the integration tests use: real admin-socket clients
# (nc, socat), real TLS and HTTP/2 clients (openssl, nghttp, curl), and
# pebble, Let's Encrypt's test ACME server (with pebble-challtestsrv),
# slowhttptest, a real slow-client attacker for the slow-client tests, and
# redis-server (Redis 7), which the tests start on a loopback port with a
# directory of their own (the shared state of a fleet, #19), and haproxy,
# the L4 balancer in TCP mode in front of a test fleet (#19; it lives in
# /usr/sbin, which a user's PATH may lack).
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

# The unit tests: every tests/test_*.py, on memory reactors and in-memory
# transports (no network, no socket file, no child process), in seconds.
# The integration tests, tests/integration/: the real plugin in child
# processes, real sockets on loopback and on disk, and the command-line
# clients (the Debian packages above, sslyze); tests/h2conformance/ is what
# their HTTP/2 conformance test runs.  make test runs each set once.
UNIT_TESTS := $(patsubst tests/%.py,tests.%,$(sort $(wildcard tests/test_*.py)))

unit: install
	$(BIN)/python -m twisted.trial --jobs=2 $(UNIT_TESTS)

integration: install debian-deps $(SSLYZE_STAMP)
	REVPROXY_SSLYZE=$(CURDIR)/$(SSLYZE_VENV)/bin/sslyze $(BIN)/python -m twisted.trial --jobs=2 tests.integration

debian-deps:
	@missing=""; \
	command -v nc >/dev/null || missing="$$missing netcat-openbsd"; \
	command -v socat >/dev/null || missing="$$missing socat"; \
	command -v openssl >/dev/null || missing="$$missing openssl"; \
	command -v nghttp >/dev/null || missing="$$missing nghttp2-client"; \
	command -v curl >/dev/null || missing="$$missing curl"; \
	command -v pebble >/dev/null || missing="$$missing pebble"; \
	command -v slowhttptest >/dev/null || missing="$$missing slowhttptest"; \
	command -v redis-server >/dev/null || missing="$$missing redis-server"; \
	test -x /usr/sbin/haproxy || missing="$$missing haproxy"; \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing"; \
	  $(SUDO) apt-get update -q && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -q $$missing; \
	fi

test: debian-deps lint typecheck unit integration

bench: install
	bench/run.sh

clean:
	rm -rf $(VENV) $(SSLYZE_VENV) build dist *.egg-info _trial_temp* twisted/plugins/dropin.cache

# ---- Debian package ---------------------------------------------------------
# make lock      regenerate requirements.lock (runtime) and
#                requirements-build.lock (build and test tools): exact
#                versions with sha256, from setup.cfg at requirements-test.txt's
#                pins (packaging/lock.sh)
# make deb       dist/revproxy_VERSION_ARCH.deb: built by dpkg-buildpackage in
#                a copy of the tree under build/deb/ (it writes its results
#                to the parent directory), then checked by lintian (an error
#                fails the build)
# make deb-test  install that package on this machine, run its service by
#                hand as systemd would, then purge it (packaging/deb-test.sh)
DEB_VERSION := $(shell sed -n '1s/^[^(]*(\([^)]*\)).*/\1/p' debian/changelog)
DEB_ARCH    := $(shell dpkg --print-architecture 2>/dev/null || echo amd64)
DEB_NAME    := revproxy_$(DEB_VERSION)_$(DEB_ARCH)
DEB_BUILD   := build/deb
DEB_SRC     := $(DEB_BUILD)/revproxy-$(DEB_VERSION)
DEB         := dist/$(DEB_NAME).deb
# What dpkg-buildpackage, debian/control's Build-Depends and lintian need.
DEB_BUILD_DEPS := build-essential dpkg-dev debhelper dh-virtualenv python3 python3-dev python3-venv lintian
# pyenv's python3 comes first on PATH here and would hijack the build (and
# the Makefile's PYTHONPATH would put this checkout before the venv).
CLEAN_ENV := env -u PYTHONPATH -u PYTHONHOME -u VIRTUAL_ENV -u PYENV_VERSION PATH=/usr/sbin:/usr/bin:/sbin:/bin
# Left out of the copy: what make test and the tools leave in the checkout.
DEB_EXCLUDES := --exclude-vcs --exclude=./.venv --exclude=./.venv-sslyze \
	--exclude=./build --exclude=./dist --exclude='*.egg-info' \
	--exclude='_trial_temp*' --exclude=./.hypothesis --exclude=./.mypy_cache \
	--exclude=./.ruff_cache --exclude=./.state --exclude=__pycache__ \
	--exclude='*.pyc' --exclude=./bench/results --exclude=dropin.cache

lock:
	packaging/lock.sh

deb-deps:
	@missing=""; \
	for pkg in $(DEB_BUILD_DEPS); do \
	  dpkg-query -W -f='$${Status}' $$pkg 2>/dev/null | grep -q 'install ok installed' || missing="$$missing $$pkg"; \
	done; \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing"; \
	  $(SUDO) apt-get update -q && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -q --no-install-recommends $$missing; \
	fi

deb: deb-deps
	rm -rf $(DEB_BUILD) $(DEB)
	mkdir -p $(DEB_SRC) dist
	tar -c $(DEB_EXCLUDES) . | tar -x -C $(DEB_SRC)
	cd $(DEB_SRC) && $(CLEAN_ENV) dpkg-buildpackage -us -uc -b
	$(CLEAN_ENV) lintian --fail-on error --display-info $(DEB_BUILD)/$(DEB_NAME).changes
	cp $(DEB_BUILD)/$(DEB_NAME).deb $(DEB)
	@echo "built $(DEB) ($$(du -h $(DEB) | cut -f1))"

deb-test: deb
	$(SUDO) packaging/deb-test.sh $(DEB)
