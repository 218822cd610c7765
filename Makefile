# kontext-web: `make serve` and `make test` do everything (see README.md).
# Build caches live outside the clone so every checkout (and CI) reuses them.
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

export CARGO_TARGET_DIR ?= $(HOME)/.cache/kontext-web/target
export PATH := $(CURDIR)/.ci/cached-tools:$(CURDIR)/node_modules/.bin:$(HOME)/.cargo/bin:$(PATH)
export XDG_RUNTIME_DIR ?= /tmp/kontext-web-xdg
# Native wgpu tests run on whatever Vulkan device exists; on a GPU-less machine that is Mesa lavapipe.
export RUST_BACKTRACE ?= 0
HOST ?= 127.0.0.1
PORT ?= 8080
CARGO_TEST_JOBS ?=
# cargo-fuzz (nightly + libFuzzer) builds with instrumentation, so it has a target dir of its own.
FUZZ_TARGET_DIR ?= $(HOME)/.cache/kontext-web/fuzz-target
FUZZ_TARGETS := gguf safetensors safetensors_index config tokenizer manifest image lora
FUZZ = cargo +nightly fuzz
FUZZ_FLAGS = --fuzz-dir tests/fuzz --sanitizer none --target-dir $(FUZZ_TARGET_DIR)
LIBFUZZER_FLAGS = -rss_limit_mb=4096 -malloc_limit_mb=4096 -timeout=20
FUZZ_SECONDS ?= 600
SMOKE_SECONDS ?= 10
# Real-width test packs (issue 14): made by tests/fixtures/generator/ with diffusers in a venv, both cached
# outside the clone and made again only when the generator, its config or CLIP-L's merges change.
VENV := $(HOME)/.cache/kontext-web/venv
PYTHON_PACKAGES := torch==2.15.0 diffusers==0.42.1 transformers==5.24.0 safetensors==0.8.0 tokenizers==0.23.3 \
  sentencepiece==0.2.3 gguf==0.19.0 numpy==2.4.6 pillow==13.0.0 protobuf==7.36.2
export KONTEXT_REAL_WIDTH ?= $(HOME)/.cache/kontext-web/packs/real_width
REAL_WIDTH_INPUTS := tests/fixtures/generator/make_fixtures.py tests/fixtures/generator/real_width.json \
  src/pipeline/clip_l_merges.txt
REAL_WIDTH_STAMP = $(KONTEXT_REAL_WIDTH)/.made-$(shell cat $(REAL_WIDTH_INPUTS) | sha256sum | cut -c1-16)
# The tiny Kontext of tests/fixtures/tiny with its DiT as a GGUF of every type the reader supports (a few MB).
export KONTEXT_TINY_TYPES ?= $(HOME)/.cache/kontext-web/packs/tiny_types
TINY_TYPES_GGUF := F16,BF16,Q8_0,Q4_0,Q4_1,Q5_0,Q5_1,Q4_K,Q5_K,Q6_K
TINY_TYPES_INPUTS := tests/fixtures/generator/make_fixtures.py tests/fixtures/generator/tiny_reference.json
# A Debian 13 root with Mesa 26's lavapipe, whose cooperative matrices run the coop suite (tests/coop/).
COOP_ROOT ?= $(HOME)/.cache/kontext-web/trixie-root
# burn/cubecl's own CMMA matmul and attention through its SPIR-V compiler (tests/cmma/, a crate of its own).
CMMA = cargo build --locked --release --manifest-path tests/cmma/Cargo.toml
CMMA_BIN = $(CARGO_TARGET_DIR)/release/burn-cmma
TINY_TYPES_STAMP = $(KONTEXT_TINY_TYPES)/.made-$(shell (cat $(TINY_TYPES_INPUTS); echo $(TINY_TYPES_GGUF)) | sha256sum | cut -c1-16)
# A tiny Kontext with widths the committed configs lack (heads of 48, T5 attention narrower than its model, ...).
export KONTEXT_ODD_WIDTHS ?= $(HOME)/.cache/kontext-web/packs/odd_widths
ODD_WIDTHS_INPUTS := tests/fixtures/generator/make_fixtures.py tests/fixtures/generator/odd_widths.json
ODD_WIDTHS_STAMP = $(KONTEXT_ODD_WIDTHS)/.made-$(shell cat $(ODD_WIDTHS_INPUTS) | sha256sum | cut -c1-16)

.PHONY: help tools web serve dist check test test-native test-coop test-gpu gpu-bundle gpu-dry-run test-wasm test-e2e test-long test-fuzz fuzz fuzz-minimize fmt bench-gpu packs

help:
	@echo "make serve   install what is missing, build the app, serve it on http://$(HOST):$(PORT)"
	@echo "make check   formatting, clippy (native and wasm32, warnings are errors) and the layering test"
	@echo "make test    make check, then every test: native (CPU + wgpu on lavapipe), wasm in headless Chromium, end-to-end, fuzz smoke"
	@echo "make test-coop   the coop kernel path (cooperative matrices) on Mesa 26's lavapipe, in a Debian 13 root made once, burn/cubecl's own CMMA kernels there (tests/cmma --quick), the coop kernels in Chromium's dialect on Dawn there (tests/subgroup_matrix.rs), and the wasm build's worker and DiT on Dawn (tests/dawn_wasm.rs)"
	@echo "make test-long   the long browser tests: a real-width edit in Chromium against the native CLI (about 10 minutes)"
	@echo "make packs   the real-width, tiny-types and odd-widths test packs (diffusers in a venv; cached in ~/.cache/kontext-web/packs)"
	@echo "make dist    the shipped build (opt-level z, fat LTO, wasm-opt -O1) in dist/"
	@echo "make fuzz    every fuzz target for FUZZ_SECONDS (600) each, growing then minimizing tests/fuzz/corpus/"
	@echo "make fuzz-minimize   each corpus cut to its named seeds and findings plus a set cover of the rest"
	@echo "make bench-gpu   on a real GPU: attention, matmuls and the real-scale Kontext step, with diffusers beside (tests/bench/gpu.sh)"
	@echo "make test-gpu    on a real GPU: the GPU suites with the coop path required and the real-width coop block at 1024²"
	@echo "make gpu-bundle  the suites and the benchmark packed in two kits in .gpu-bundle/, for a lent GPU machine without Rust (tests/gpu/lease.sh)"
	@echo "make gpu-dry-run those kits tried here at the smallest sizes, as a lent machine runs them"

tools:
	@bash .ci/ensure-tools

web: tools
	@mkdir -p $(XDG_RUNTIME_DIR)
	trunk build --locked

dist: tools
	trunk build --locked --cargo-profile dist

serve: web
	@echo "Serving http://$(HOST):$(PORT)/ (Ctrl-C stops)"
	node www/serve.mjs dist $(HOST) $(PORT)

test: tools check test-native test-coop test-wasm test-e2e test-fuzz

# fmt, clippy for the host, the browser and tests/cmma, and tests/layering.rs (no import cycles, no import up the layers).
check: tools
	cargo fmt --check
	cargo fmt --check --manifest-path tests/cmma/Cargo.toml
	cargo clippy --locked --all-targets -- -D warnings
	cargo clippy --locked --all-targets --target wasm32-unknown-unknown -- -D warnings
	cargo clippy --locked --release --manifest-path tests/cmma/Cargo.toml -- -D warnings
	cargo test --locked --test layering

$(VENV)/.installed-$(shell echo $(PYTHON_PACKAGES) | sha256sum | cut -c1-16):
	python3 -m venv $(VENV)
	nice -n 10 $(VENV)/bin/pip install -q $(PYTHON_PACKAGES)
	touch $@

# The real-width packs: a Kontext at real widths and one block of each kind, in every file format users have,
# with diffusers' goldens (tests/fixtures/generator/README.md). Several GB, a few minutes on 2 cores.
packs: $(VENV)/.installed-$(shell echo $(PYTHON_PACKAGES) | sha256sum | cut -c1-16)
	@if [ ! -e $(REAL_WIDTH_STAMP) ]; then \
	  rm -rf $(KONTEXT_REAL_WIDTH) && mkdir -p $(KONTEXT_REAL_WIDTH) && \
	  nice -n 10 $(VENV)/bin/python tests/fixtures/generator/make_fixtures.py \
	    --config tests/fixtures/generator/real_width.json --out $(KONTEXT_REAL_WIDTH) > $(KONTEXT_REAL_WIDTH)/checks.json && \
	  touch $(REAL_WIDTH_STAMP); \
	fi
	@if [ ! -e $(TINY_TYPES_STAMP) ]; then \
	  rm -rf $(KONTEXT_TINY_TYPES) && mkdir -p $(KONTEXT_TINY_TYPES) && \
	  nice -n 10 $(VENV)/bin/python tests/fixtures/generator/make_fixtures.py \
	    --config tests/fixtures/generator/tiny_reference.json --dit-gguf $(TINY_TYPES_GGUF) \
	    --out $(KONTEXT_TINY_TYPES) > $(KONTEXT_TINY_TYPES)/checks.json && \
	  touch $(TINY_TYPES_STAMP); \
	fi
	@if [ ! -e $(ODD_WIDTHS_STAMP) ]; then \
	  rm -rf $(KONTEXT_ODD_WIDTHS) && mkdir -p $(KONTEXT_ODD_WIDTHS) && \
	  nice -n 10 $(VENV)/bin/python tests/fixtures/generator/make_fixtures.py \
	    --config tests/fixtures/generator/odd_widths.json --out $(KONTEXT_ODD_WIDTHS) > $(KONTEXT_ODD_WIDTHS)/checks.json && \
	  touch $(ODD_WIDTHS_STAMP); \
	fi

# With WebGPU's default 128 MiB storage binding as the limit, whatever the adapter grants (src/device/mod.rs).
test-native: packs
	@mkdir -p $(XDG_RUNTIME_DIR)
	KONTEXT_MAX_BUFFER_BYTES=134217728 cargo test --locked

# The coop suite on a software device with cooperative matrices, then the coop kernels in Chromium's dialect on
# Dawn (tests/subgroup_matrix.rs; KONTEXT_REQUIRE_COOP makes a skip a failure), then the wasm build on Dawn in node
# (tests/dawn_wasm.rs: tests/coop/dawn-bin/node stands in for node, see tests/coop/dawn-node.sh).
# One test at a time: lavapipe's emulated products, several tests at once on 2 cores, took 504 s against 58 s.
test-coop:
	@mkdir -p $(XDG_RUNTIME_DIR)
	bash tests/coop/ensure-root.sh $(COOP_ROOT)
	binary=$$(cargo test --locked --no-run --test gpu_coop 2>&1 | sed -n 's/.*Executable tests\/gpu_coop.rs (\(.*\))/\1/p'); \
	test -x "$$binary" || { echo "test-coop: the gpu_coop test binary did not build"; exit 1; }; \
	KONTEXT_REQUIRE_COOP=1 KONTEXT_MAX_BUFFER_BYTES=134217728 bash tests/coop/run.sh $(COOP_ROOT) $$binary --test-threads=1
	KONTEXT_REQUIRE_COOP=1 KONTEXT_COOP_ROOT=$(COOP_ROOT) cargo test --locked --test subgroup_matrix
	KONTEXT_COOP_ROOT=$(COOP_ROOT) PATH=$(CURDIR)/tests/coop/dawn-bin:$$PATH \
	  cargo test --locked --target wasm32-unknown-unknown --profile web --test dawn_wasm -- --nocapture
	$(CMMA)
	bash tests/coop/run.sh $(COOP_ROOT) $(CMMA_BIN) --quick --require-cmma >/dev/null

# On a machine with a real GPU: the GPU suites one test at a time, a missing coop path a failure, the real-width coop
# block at 1024². Where that machine has no Rust toolchain (a lent one), `make gpu-bundle` here and `bash
# tests/gpu/lease.sh` there, one kit per call (README.md, Tests).
GPU_SUITES := gpu_coop gpu_attention gpu_quant
test-gpu: packs
	@mkdir -p $(XDG_RUNTIME_DIR)
	KONTEXT_REQUIRE_COOP=1 KONTEXT_COOP_1024=1 KONTEXT_MAX_BUFFER_BYTES=134217728 \
	  cargo test --locked $(GPU_SUITES:%=--test %) -- --test-threads=1

gpu-bundle: packs
	$(CMMA)
	DIFFUSERS=$(filter diffusers==%,$(PYTHON_PACKAGES)) bash tests/gpu/bundle.sh .gpu-bundle $(GPU_SUITES)

# The two kits of `make gpu-bundle` run here as a lent machine runs them (tests/gpu/lease.sh), at the smallest
# sizes: the suites and the benchmark's parts on Mesa 26's lavapipe (test-coop's root: cooperative matrices), and
# diffusers on the CPU (the venv's torch under the kit's diffusers).
gpu-dry-run: gpu-bundle
	@mkdir -p $(XDG_RUNTIME_DIR)
	bash tests/coop/ensure-root.sh $(COOP_ROOT)
	rm -rf gpu-dry-run
	GPU_DRY_RUN=1 KONTEXT_COOP_ROOT=$(COOP_ROOT) bash tests/gpu/lease.sh .gpu-bundle/check gpu-dry-run/check 1800
	GPU_DRY_RUN=1 KONTEXT_COOP_ROOT=$(COOP_ROOT) PATH=$(VENV)/bin:$$PATH bash tests/gpu/lease.sh .gpu-bundle/bench gpu-dry-run/bench 1800

# wasm-bindgen-test-runner drives Debian's Chromium through chromedriver, with WebGPU on SwiftShader.
# --nocapture shows what the tests print (which f16 checks ran, or why they were skipped).
# tests/store.rs downloads from tests/e2e/drop-server.mjs (Range, CORS, cut connections) on port 8791.
# chromedriver leaves each session's Chromium profile in TMPDIR when the runner ends it (up to 1.2 GB of IndexedDB
# each: 82 of them had filled this disk until Cache.addAll failed), so the run gets a TMPDIR of its own, deleted after.
test-wasm:
	scratch=$$(mktemp -d /tmp/kontext-wasm-tests.XXXXXX); \
	node tests/e2e/drop-server.mjs 8791 & server=$$!; trap "kill $$server; rm -rf $$scratch" EXIT; \
	TMPDIR=$$scratch CHROMEDRIVER=$$(command -v chromedriver) WASM_BINDGEN_TEST_WEBDRIVER_JSON=$(CURDIR)/tests/webdriver.json \
	WASM_BINDGEN_TEST_TIMEOUT=600 cargo test --locked --target wasm32-unknown-unknown --profile web --test web --test web_worker --test store --test stream \
	  -- --nocapture

# The end-to-end tests compare the browser's edit with the native CLI's, so they build both; the real-width test
# loads the real-width packs.
test-e2e: web packs
	cargo build --locked --bin kontext
	node --test --test-concurrency=2 tests/e2e/*.test.mjs

# The long browser tests (tests/e2e/long/: a real-width edit in Chromium against the native CLI, about 10 minutes).
test-long: web packs
	cargo build --locked --bin kontext
	node --test --test-concurrency=1 tests/e2e/long/

# A short libFuzzer run of every target, two at a time, starting from the committed corpus; new inputs go to a
# scratch folder, a finding to tests/fuzz/artifacts/<target>/ (and the run fails).
test-fuzz: tools
	$(FUZZ) build $(FUZZ_FLAGS)
	LIBFUZZER_FLAGS="$(LIBFUZZER_FLAGS)" bash tests/fuzz/smoke.sh $(FUZZ_BIN) $(SMOKE_SECONDS) $(FUZZ_TARGETS)

# The long runs: FUZZ_SECONDS per target into the committed corpus, then the corpus minimized again.
fuzz: tools
	$(FUZZ) build $(FUZZ_FLAGS)
	for target in $(FUZZ_TARGETS); do \
	  $(FUZZ) run $(FUZZ_FLAGS) $$target -- $(LIBFUZZER_FLAGS) -max_total_time=$(FUZZ_SECONDS) -print_final_stats=1; \
	done
	$(MAKE) fuzz-minimize

# Each corpus becomes its named inputs (the seeds of tests/fuzz/make_seeds.py and every past finding,
# `*-regression-*`) plus the fewest others that keep every coverage edge in src/ they reach: first libFuzzer's
# set cover (-set_cover_merge=1 over edges, fast), then tests/fuzz/minimize.py (each input's own edges, limited to
# this crate's code, greedy set cover).
FUZZ_BIN = $(FUZZ_TARGET_DIR)/x86_64-unknown-linux-gnu/release
fuzz-minimize: tools
	$(FUZZ) build $(FUZZ_FLAGS)
	for target in $(FUZZ_TARGETS); do \
	  corpus=tests/fuzz/corpus/$$target; kept=$$(mktemp -d); \
	  find $$corpus -type f -regextype egrep ! -regex '.*/[0-9a-f]{40}' -exec cp {} $$kept/ \; ; \
	  $(FUZZ) run $(FUZZ_FLAGS) $$target $$kept $$corpus -- $(LIBFUZZER_FLAGS) -set_cover_merge=1 -use_counters=0 >$$kept.log 2>&1 \
	    || { cat $$kept.log; exit 1; }; \
	  rm -rf $$corpus $$kept.log; mv $$kept $$corpus; chmod 755 $$corpus; \
	  python3 tests/fuzz/minimize.py $(FUZZ_BIN)/$$target $$corpus src; \
	done

fmt:
	cargo fmt

# On a machine with a real GPU: tests/bench/gpu.sh with KONTEXT_BIN (a prebuilt kontext, best built with
# --features autotune; built so in release when unset), results in BENCH_OUT.
BENCH_OUT ?= bench-gpu
bench-gpu:
	tests/bench/gpu.sh "$${KONTEXT_BIN:-}" $(BENCH_OUT)
