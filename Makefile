# The two commands of the contract: `make demo` and `make test`. Both install what is
# missing on a fresh machine (Debian packages as root, the venv, the library).
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
LIB := logpool/liblogpool.so
DEB_PACKAGES := nginx-core nginx-dev libnginx-mod-http-lua luajit2 wrk libpython3.11 rsyslog rsyslog-relp \
	rsyslog-openssl
C_SOURCES := include/logpool.h $(wildcard logpool/csrc/*.c logpool/csrc/*.h) build_ffi.py logpool/__init__.py
PYTEST_ARGS ?=

.PHONY: all build deps system-deps test sanitize demo bench clean

all: build

system-deps:
	@missing=""; for p in $(DEB_PACKAGES); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "install ok installed" || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  if [ "$$(id -u)" = 0 ]; then SUDO=""; else SUDO=sudo; fi; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq $$missing; \
	fi

$(PY):
	$(PYTHON) -m venv $(VENV)

$(VENV)/.deps: pyproject.toml | $(PY)
	$(PY) -m pip install -q --upgrade pip setuptools wheel
	$(PY) -m pip install -q -e '.[test]'
	touch $@

deps: system-deps $(VENV)/.deps

$(LIB): $(C_SOURCES) | $(VENV)/.deps
	$(PY) build_ffi.py

build: deps $(LIB)

test: build
	$(PY) -m pytest $(PYTEST_ARGS)

sanitize: deps
	$(PY) build_ffi.py --sanitize --out=build/sanitize/liblogpool.so
	LOGPOOL_LIB=$(CURDIR)/build/sanitize/liblogpool.so \
	  LD_PRELOAD="$$(gcc -print-file-name=libasan.so) $$(gcc -print-file-name=libubsan.so)" \
	  ASAN_OPTIONS=detect_leaks=0:abort_on_error=1 UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 \
	  $(PY) -m pytest $(PYTEST_ARGS) tests/test_abi.py tests/test_delivery.py tests/test_faults.py \
	  tests/test_properties.py tests/test_framing.py tests/test_datagram.py tests/test_tls.py \
	  tests/test_relp.py tests/test_http.py tests/test_kafka.py \
	  tests/test_spool.py -k "not nginx and not sigkilled and not rsyslog"

demo: build
	$(PY) -m logpool demo $(DEMO_ARGS)

$(VENV)/.bench-deps: pyproject.toml | $(VENV)/.deps
	$(PY) -m pip install -q -e '.[test,bench]'
	touch $@

bench: build $(VENV)/.bench-deps
	$(PY) bench/run.py $(BENCH_ARGS)

clean:
	rm -rf build $(LIB)
