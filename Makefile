# Developer entry points. `make test` runs exactly the README's test command.
PYTHON ?= python

.PHONY: install demo test bench lint example conformance-allowlist

install:
	$(PYTHON) -m pip install -e '.[test,coreml]'

demo: install
	modelloader run models/digits_mlp.onnx models/digits_mlp_input.npy
	modelloader info models/digits_mlp.onnx

test:
	$(PYTHON) -m pytest -n 2 -q

# OpenBLAS's coretype overrides slow numpy's BLAS here; benchmarks drop them for themselves only.
BENCH_ENV = env -u OPENBLAS_CORETYPE -u OPENBLAS_L2_SIZE

# Builds ../shared/bench models into bench/.models/ once; writes bench/results.md.
bench:
	$(PYTHON) -m pip install -q -e '.[bench,compress]'
	$(PYTHON) bench/bench.py
	$(BENCH_ENV) $(PYTHON) bench/bench_quant.py
	$(BENCH_ENV) $(PYTHON) bench/bench_compress.py

lint:
	ruff check . && ruff format --check .

# Retrains the example classifiers and rewrites models/ (byte-for-byte reproducible).
example:
	$(PYTHON) scripts/make_example.py

conformance-allowlist:
	$(PYTHON) scripts/conformance.py --write-allowlist
