# ebmesh: every set-up step lives here, so a fresh Debian 12 machine needs only `make`.
# Run as root: the demo and the kernel tests attach eBPF programs to throwaway cgroups.

PYTHON  ?= python3
VENV    := .venv
PY      := $(VENV)/bin/python
STAMP   := $(VENV)/.ebmesh-installed
APT_PKGS := clang llvm libbpf-dev bpftool iproute2 util-linux python3-venv

.PHONY: all setup system-packages bench-setup demo test test-fast bench lint clean

all: test

# Idempotent: installs only what is missing.
setup: system-packages $(STAMP)

system-packages:
	@missing=""; \
	for bin in clang bpftool ip nsenter; do command -v $$bin >/dev/null 2>&1 || missing=1; done; \
	[ -e /usr/include/bpf/bpf_helpers.h ] || missing=1; \
	$(PYTHON) -c 'import ensurepip, venv' >/dev/null 2>&1 || missing=1; \
	if [ -n "$$missing" ]; then \
		echo "==> installing system packages: $(APT_PKGS)"; \
		export DEBIAN_FRONTEND=noninteractive; \
		apt-get update -qq && apt-get install -y -qq --no-install-recommends $(APT_PKGS) >/dev/null; \
	fi

$(STAMP): setup.py pyproject.toml
	@echo "==> creating $(VENV) and installing ebmesh with its Python dependencies"
	@[ -x $(PY) ] || $(PYTHON) -m venv $(VENV)
	@$(PY) -m pip install -q --upgrade pip >/dev/null
	@$(PY) -m pip install -q -e '.[dev]'
	@touch $@

demo: setup
	@$(PY) examples/demo.py

# bench-setup: tests/bench runs the benchmark's smoke test, with its tools.
test: setup bench-setup
	@$(PY) -m pytest -q tests

# Everything but the kernel tests: no root needed.
test-fast: setup
	@$(PY) -m pytest -q tests -m 'not kernel'

# The benchmark's own tools: the load generators (sockperf, iperf3) and the sidecars it
# measures against (haproxy; nginx with its stream module). Services must not start on
# install: Debian's nginx would listen on 0.0.0.0:80. invoke-rc.d asks policy-rc.d, so one
# that says "no" (exit 101) stands in for the install when the machine has none.
BENCH_APT_PKGS := sockperf iperf3 haproxy nginx libnginx-mod-stream

bench-setup: setup
	@missing=""; \
	for bin in sockperf iperf3 haproxy nginx; do command -v $$bin >/dev/null 2>&1 || missing=1; done; \
	[ -e /usr/lib/nginx/modules/ngx_stream_module.so ] || missing=1; \
	if [ -n "$$missing" ]; then \
		echo "==> installing the benchmark's tools: $(BENCH_APT_PKGS)"; \
		export DEBIAN_FRONTEND=noninteractive; \
		placed=""; \
		if [ ! -e /usr/sbin/policy-rc.d ]; then \
			printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod 755 /usr/sbin/policy-rc.d && placed=1; \
		fi; \
		apt-get update -qq && apt-get install -y -qq --no-install-recommends $(BENCH_APT_PKGS) >/dev/null; \
		status=$$?; \
		[ -z "$$placed" ] || rm -f /usr/sbin/policy-rc.d; \
		exit $$status; \
	fi
	@$(PY) -c 'import matplotlib' >/dev/null 2>&1 || $(PY) -m pip install -q -e '.[bench]'

bench: bench-setup
	@$(PY) bench/run.py
	@$(PY) bench/mtls.py

lint: setup
	@$(PY) -m ruff check ebmesh tests bench examples
	@$(PY) -m ruff format --check ebmesh tests bench examples

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache .hypothesis
