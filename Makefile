# The two commands of the contract: `make demo` and `make test`. Both install what is
# missing on a fresh machine (Debian packages as root, the venv, the library).
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
LIB := logpool/liblogpool.so
DEB_PACKAGES := nginx-core nginx-dev libnginx-mod-http-lua luajit2 wrk libpython3.11 rsyslog rsyslog-relp \
	rsyslog-openssl clickhouse-server clickhouse-client curl valgrind
C_SOURCES := include/logpool.h $(wildcard logpool/csrc/*.c logpool/csrc/*.h) build_ffi.py logpool/__init__.py
PRODUCER_LIB := logpool/liblogpool_producer.so
PYTEST_ARGS ?=
# The native nginx module, built against the installed nginx's own sources (Debian's
# nginx-dev ships them with conf_flags), in a copy of that tree under build/.
NGX_SRC ?= /usr/share/nginx/src
NGX_BUILD := build/nginx-src
NGX_GEN := build/nginx-gen
NGX_MODULE := logpool/ngx_http_logpool_module.so
NGX_MODULE_SOURCES := $(wildcard nginx/*.c nginx/*.h) include/logpool.h $(NGX_GEN)/ngx_http_logpool_build.h

.PHONY: all build nginx-module install sanitize-nginx deps system-deps test sanitize demo bench clean

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

# Built with liblogpool.so by the same command (agent mode's Python-free producer library).
$(PRODUCER_LIB): $(LIB)
	test -f $@ || $(PY) build_ffi.py

# Where the module dlopen()s the library: logpool/paths.py's lib path, baked in (the
# logpool_library directive overrides it).
$(NGX_GEN)/ngx_http_logpool_build.h: logpool/paths.py | $(VENV)/.deps
	@mkdir -p $(NGX_GEN)
	$(PY) -c 'import json; from logpool import paths; \
	  print("#define NGX_HTTP_LOGPOOL_LIB " + json.dumps(paths.lib_path())); \
	  print("#define NGX_HTTP_LOGPOOL_PRODUCER_LIB " + json.dumps(paths.producer_lib_path()))' > $@.tmp
	mv $@.tmp $@

$(NGX_BUILD)/objs/Makefile: nginx/config
	rm -rf $(NGX_BUILD) && mkdir -p build && cp -r $(NGX_SRC) $(NGX_BUILD)
	cd $(NGX_BUILD) && . ./conf_flags && LOGPOOL_GEN_DIR=$(CURDIR)/$(NGX_GEN) \
	  LOGPOOL_INCLUDE_DIR=$(CURDIR)/include \
	  ./configure "$${NGX_CONF_FLAGS[@]}" --with-compat \
	  --add-dynamic-module=$(CURDIR)/nginx > configure.log 2>&1 \
	  || { tail -30 configure.log; exit 1; }

$(NGX_MODULE): $(NGX_MODULE_SOURCES) $(NGX_BUILD)/objs/Makefile
	rm -f $(NGX_BUILD)/objs/addon/nginx/*.o
	$(MAKE) -s -C $(NGX_BUILD) -f objs/Makefile modules
	cp $(NGX_BUILD)/objs/ngx_http_logpool_module.so $@.tmp
	mv $@.tmp $@

nginx-module: deps $(NGX_MODULE)

# The module under ASan/UBSan (its own configured tree), for make sanitize-nginx.
NGX_ASAN_BUILD := build/nginx-asan
NGX_ASAN_MODULE := $(NGX_ASAN_BUILD)/objs/ngx_http_logpool_module.so
NGX_SANITIZE := -fsanitize=address,undefined -fno-omit-frame-pointer

$(NGX_ASAN_BUILD)/objs/Makefile: nginx/config
	rm -rf $(NGX_ASAN_BUILD) && mkdir -p build && cp -r $(NGX_SRC) $(NGX_ASAN_BUILD)
	cd $(NGX_ASAN_BUILD) && . ./conf_flags && LOGPOOL_GEN_DIR=$(CURDIR)/$(NGX_GEN) \
	  LOGPOOL_INCLUDE_DIR=$(CURDIR)/include \
	  ./configure "$${NGX_CONF_FLAGS[@]}" --with-compat \
	  --with-cc-opt="$(NGX_SANITIZE) -fno-sanitize-recover=undefined" \
	  --with-ld-opt="$(NGX_SANITIZE)" \
	  --add-dynamic-module=$(CURDIR)/nginx > configure.log 2>&1 \
	  || { tail -30 configure.log; exit 1; }

$(NGX_ASAN_MODULE): $(NGX_MODULE_SOURCES) $(NGX_ASAN_BUILD)/objs/Makefile
	rm -f $(NGX_ASAN_BUILD)/objs/addon/nginx/*.o
	$(MAKE) -s -C $(NGX_ASAN_BUILD) -f objs/Makefile modules

sanitize-nginx: build $(NGX_ASAN_MODULE)
	LOGPOOL_NGINX_ASAN_MODULE=$(CURDIR)/$(NGX_ASAN_MODULE) \
	  $(PY) -m pytest $(PYTEST_ARGS) tests/test_nginx_module.py tests/test_nginx_fidelity.py

# An installation nginx's worker user can load (a Python it can read, a venv, the library built
# for that Python, the Lua module and the nginx module); prints the nginx lines to paste.
PREFIX ?= /opt/logpool
INSTALL_PYTHON ?=
install: build
	$(PY) -m logpool.tools.install --prefix "$(PREFIX)" --source "$(CURDIR)" \
	  --module "$(CURDIR)/$(NGX_MODULE)" $(if $(INSTALL_PYTHON),--python "$(INSTALL_PYTHON)")

build: deps $(LIB) $(PRODUCER_LIB) $(NGX_MODULE)

test: build
	$(PY) -m pytest $(PYTEST_ARGS)

sanitize: deps
	$(PY) build_ffi.py --sanitize --out=build/sanitize/liblogpool.so
	LOGPOOL_LIB=$(CURDIR)/build/sanitize/liblogpool.so \
	  LD_PRELOAD="$$(gcc -print-file-name=libasan.so) $$(gcc -print-file-name=libubsan.so)" \
	  ASAN_OPTIONS=detect_leaks=0:abort_on_error=1 UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 \
	  $(PY) -m pytest $(PYTEST_ARGS) tests/test_abi.py tests/test_delivery.py tests/test_faults.py \
	  tests/test_properties.py tests/test_framing.py tests/test_datagram.py tests/test_tls.py \
	  tests/test_relp.py tests/test_http.py tests/test_kafka.py tests/test_conformance.py \
	  tests/test_backends.py tests/test_elasticsearch.py tests/test_loki.py tests/test_otlp.py \
	  tests/test_splunk_hec.py tests/test_clickhouse.py tests/test_datadog.py \
	  tests/test_forward.py tests/test_spool.py tests/test_chunk_cache.py tests/test_agent.py \
	  -k "not nginx and not sigkilled and not rsyslog and not worker_user and not metrics_location"

demo: build
	$(PY) -m logpool demo $(DEMO_ARGS)

$(VENV)/.bench-deps: pyproject.toml | $(VENV)/.deps
	$(PY) -m pip install -q -e '.[test,bench]'
	touch $@

bench: build $(VENV)/.bench-deps
	$(PY) bench/run.py $(BENCH_ARGS)

clean:
	rm -rf build $(LIB) $(PRODUCER_LIB) $(NGX_MODULE)
