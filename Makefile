# kontext-web: `make serve` and `make test` do everything (see README.md).
# Build caches live outside the clone so every checkout (and CI) reuses them.
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

export CARGO_TARGET_DIR ?= $(HOME)/.cache/kontext-web/target
export PATH := $(CURDIR)/node_modules/.bin:$(HOME)/.cargo/bin:$(PATH)
export XDG_RUNTIME_DIR ?= /tmp/kontext-web-xdg
# Native wgpu tests run on whatever Vulkan device exists; on a GPU-less machine that is Mesa lavapipe.
export RUST_BACKTRACE ?= 0
HOST ?= 127.0.0.1
PORT ?= 8080
CARGO_TEST_JOBS ?=

.PHONY: help tools web serve dist test test-native test-wasm test-e2e fmt

help:
	@echo "make serve   install what is missing, build the app, serve it on http://$(HOST):$(PORT)"
	@echo "make test    every test: native (CPU + wgpu on lavapipe), wasm in headless Chromium, end-to-end"
	@echo "make dist    the shipped build (fat LTO, wasm-opt -Oz) in dist/"

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

test: tools test-native test-wasm test-e2e

# With WebGPU's default 128 MiB storage binding as the limit, whatever the adapter grants (src/device.rs).
test-native:
	@mkdir -p $(XDG_RUNTIME_DIR)
	KONTEXT_MAX_BUFFER_BYTES=134217728 cargo test --locked

# wasm-bindgen-test-runner drives Debian's Chromium through chromedriver, with WebGPU on SwiftShader.
# tests/store.rs downloads from tests/e2e/drop-server.mjs (Range, CORS, cut connections) on port 8791.
test-wasm:
	node tests/e2e/drop-server.mjs 8791 & server=$$!; trap "kill $$server" EXIT; \
	CHROMEDRIVER=$$(command -v chromedriver) WASM_BINDGEN_TEST_WEBDRIVER_JSON=$(CURDIR)/tests/webdriver.json \
	WASM_BINDGEN_TEST_TIMEOUT=600 cargo test --locked --target wasm32-unknown-unknown --profile web --test web --test web_worker --test store --test stream

# The end-to-end tests compare the browser's edit with the native CLI's, so they build both.
test-e2e: web
	cargo build --locked --bin kontext
	node --test --test-concurrency=1 tests/e2e/

fmt:
	cargo fmt
