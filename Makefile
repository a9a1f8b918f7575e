# Two commands do all set-up on a fresh machine (Python 3.11, no GPU):
#   make demo   -> .venv with the training extras, then the demo training job
#   make test   -> .venv with every extra, then the whole test suite
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# torch and torchvision are pinned to the releases served from this disk; the
# core itself only needs torch>=2.1.
TORCH  ?= torch==2.14.1 torchvision==0.29.1
PYTEST_ARGS ?=

.PHONY: demo test lint install install-test clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip setuptools wheel

$(VENV)/.base: $(BIN)/python setup.cfg pyproject.toml
	$(BIN)/pip install -q $(TORCH)
	$(BIN)/pip install -q -e '.[train]'
	touch $@

$(VENV)/.test: $(VENV)/.base
	$(BIN)/pip install -q -e '.[train,test,lightning,validate]'
	# traiNNer-redux is a clone, not a package (tests use the snapshot in ../shared/vendor); its PyPI deps:
	$(BIN)/pip install -q antialiased_cnns ema-pytorch msgspec 'pytorch-optimizer>=3.4.2' 'pyvips>=2.2.3' \
		'pyvips-binary>=8.16.0' timm 'spandrel-extra-arches>=0.2.0' rich requests
	# basicsr 1.4.2 lists torch in setup_requires: build it against our torch.
	$(BIN)/pip install -q --no-build-isolation 'basicsr==1.4.2'
	# pyiqa is only a test reference for parity; its full dependency tree is not needed.
	$(BIN)/pip install -q --no-deps 'pyiqa==0.1.16'
	# Real-ESRGAN's model classes (pure Python; its face-restoration extras are not needed).
	$(BIN)/pip install -q --no-deps 'realesrgan==0.3.0'
	# The learned labeller (ST-LPIPS, weights BSD-2 inside the wheel); it declares no usable deps.
	$(BIN)/pip install -q --no-deps 'stlpips-pytorch==0.0.2'
	touch $@

install: $(VENV)/.base
install-test: $(VENV)/.test

demo: install
	$(BIN)/python -m drqa_plugin.demo

test: install-test
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# Style and import hygiene of the package (tests and benchmarks are scripts, not checked here).
lint: install-test
	$(BIN)/ruff check drqa_plugin
	$(BIN)/mypy drqa_plugin

clean:
	rm -rf $(VENV) runs build *.egg-info
