# The RLHF pipeline: make pretrain sft rank reward ppo eval chat
#   CONFIG=configs/small.yaml    pick a preset (default configs/tiny.yaml)
#   NPROC=2                      run the training stages on 2 local processes (CPU: gloo; CUDA: one per GPU);
#                                the global batch stays the preset's, each process takes its share
#   NPROC=2 SHARD=fsdp           ... with FSDP: each process holds 1/N of the weights (CPU: pretrain, sft, ppo)
#   LAUNCH="accelerate launch --config_file configs/accelerate/ddp.yaml"   wrap a stage in a launcher (any)
#   any section.key=value        passed to the stage as a config override (e.g. ppo.kl_coef=0.05)
SHELL := /bin/bash
CONFIG ?= configs/tiny.yaml
NAME ?= $(basename $(notdir $(CONFIG)))
OUT ?= runs
RUN := $(OUT)/$(NAME)
VENV ?= .venv
PY ?= $(VENV)/bin/python
# NPROC=N: the launched (L) stages run under accelerate on N processes of this machine with the config for its
# hardware (ACCELERATE_CONFIG: CUDA -> ddp.yaml, else cpu_ddp.yaml; SHARD=fsdp: fsdp.yaml, cpu_fsdp.yaml);
# LAUNCH=... given as well wins.
NPROC ?=
SHARD ?=
ifneq ($(filter-out fsdp,$(SHARD)),)
$(error SHARD=$(SHARD): the one sharded backend here is SHARD=fsdp (DeepSpeed: LAUNCH=..., see docs/scale-out.md))
endif
ifneq ($(NPROC),)
ifeq ($(shell [[ '$(NPROC)' =~ ^[1-9][0-9]*$$ ]] && echo ok),)
$(error NPROC=$(NPROC) is not a number of processes: give a whole number, e.g. NPROC=2)
endif
ACCELERATE_CONFIG ?= configs/accelerate/$(if $(filter True,$(shell $(PY) -c 'import torch; print(torch.cuda.is_available())' 2>/dev/null)),,cpu_)$(or $(SHARD),ddp).yaml
ACCELERATE_CONFIG := $(ACCELERATE_CONFIG)
endif
LAUNCH ?= $(if $(NPROC),$(PY) -m accelerate.commands.launch --config_file $(ACCELERATE_CONFIG) --num_processes $(NPROC) --num_machines 1,$(PY))
# torch from your pip index (PyPI's Linux wheel is the CUDA build). CPU only: make setup TORCH_INDEX=https://download.pytorch.org/whl/cpu
# a given CUDA: make setup TORCH_INDEX=https://download.pytorch.org/whl/cu128
TORCH_SPEC ?= torch==2.13.0
TORCH_INDEX ?=
# make setup installs the exact versions CI last passed with (constraints.txt, written by `make lock`);
# make setup LATEST=1 tries the newest versions pyproject.toml allows instead.
CONSTRAINTS ?= constraints.txt
LATEST ?=
TEMPERATURE ?= 0.7
MODELS ?=
HOST ?= 127.0.0.1
PORT ?= 8000
COMPARE ?=
comma := ,
empty :=
space := $(empty) $(empty)

# Command-line variables with a dot in their name are config overrides (make passes them as variables).
OVERRIDES := $(strip $(foreach v,$(MAKEOVERRIDES),$(if $(findstring .,$(firstword $(subst =, ,$(v)))),$(v))) $(ARGS))
STAGE_ARGS = --config '$(CONFIG)' 'run.name=$(NAME)' 'run.out_dir=$(OUT)' $(OVERRIDES)  # quoted: OUT may hold spaces
# The stage graph (pipeline/chain/table.py) decides each stage target's prerequisites, its command and whether
# it has a job in this config; `python -m pipeline.chain.plan` prints it as words (no torch, a fraction of a
# second). A stage whose input the config names (sft.init_from, ppo.policy, ...) builds nothing before it.
PLAN := $(shell $(PY) -m pipeline.chain.plan $(STAGE_ARGS) 2>/dev/null)
word_of = $(patsubst $(1):%,%,$(filter $(1):%,$(PLAN)))
list_of = $(subst $(comma),$(space),$(call word_of,$(1)))
STAGES := $(call list_of,stages)
needs = $(call list_of,$(1))
run_parts = $(subst :, ,$(patsubst run:$(1)=%,%,$(filter run:$(1)=%,$(PLAN))))
# L: a training stage, under $(LAUNCH); P: plain python. ARGS_<stage>: make variables a stage reads.
stage_cmd = $(if $(filter L,$(word 1,$(call run_parts,$(1)))),$(LAUNCH),$(PY)) -m $(word 2,$(call run_parts,$(1))) \
	$(STAGE_ARGS) $(wordlist 3,9,$(call run_parts,$(1))) $(ARGS_$(1))
ARGS_eval = $(if $(MODELS),eval.models="[$(subst $(space),$(comma),$(strip $(MODELS)))]")
# chat and serve: the PPO model of the newest finished round up to run.rounds, else the SFT model
MODEL ?= $(or $(call word_of,model),$(RUN)/sft)
NOT_STAGES := help setup lock test lint bench gpu-check faults chat serve clean
ifneq ($(filter-out $(NOT_STAGES),$(MAKECMDGOALS)),)
ifeq ($(STAGES),)
$(error $(PY) cannot read the stage graph: run `make setup` first (or set PY=your python))
endif
endif
export HF_HUB_DISABLE_TELEMETRY := 1
export TOKENIZERS_PARALLELISM ?= false

.PHONY: $(NOT_STAGES) $(STAGES)

help:  ## list the targets
	@$(PY) -m pipeline.chain.plan --targets 2>/dev/null || echo "  (stage targets: run make setup first)"
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-13s %s\n", $$1, $$2}'
	@echo "  presets: $(notdir $(wildcard configs/*.yaml))   current: CONFIG=$(CONFIG) -> $(RUN)/"

setup:  ## create .venv with every dependency at constraints.txt's versions (LATEST=1: newest allowed; TORCH_INDEX=URL: the torch build)
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH_SPEC)" $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
	$(PY) -m pip install -q -e ".[dev]" $(if $(LATEST),,--constraint $(CONSTRAINTS))

lock:  ## pin the versions installed in .venv into constraints.txt (run after CI passes; torch stays TORCH_SPEC)
	@{ echo "# Exact versions CI last passed with; make setup installs these (make setup LATEST=1 ignores them)."; \
	  echo "# Written by make lock from $(VENV) ($$($(PY) -c 'import platform; print("Python", platform.python_version())')):"; \
	  echo "# every installed package except torch (TORCH_SPEC in the Makefile) and this project."; \
	  $(PY) -m pip freeze --exclude-editable --exclude torch --exclude rlhf-pipeline; } > $(CONSTRAINTS)
	@echo "wrote $(CONSTRAINTS): $$(grep -vc '^#' $(CONSTRAINTS)) pinned packages"

test:  ## run the test suite (offline)
	HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 $(PY) -m pytest tests

lint:  ## ruff
	$(VENV)/bin/ruff check pipeline stages data apps faults tests benchmarks

bench:  ## benchmarks: pretrain loop vs nanoGPT, reward step vs TRL's, PPO vs TRL 1.12 (side by side, same run), serving, 1 vs 2 processes
	$(PY) -m benchmarks.pretrain
	$(PY) -m benchmarks.reward
	$(PY) -m benchmarks.ppo $(if $(wildcard $(RUN)/reward/manifest.json),--also-run $(RUN))
	$(PY) -m benchmarks.serve
	$(PY) -m benchmarks.data_memory
	$(PY) -m benchmarks.scaling

gpu-check:  ## on a CUDA machine: the chain in bf16, QLoRA SFT, LoRA and full PPO, FSDP on every GPU; speed, MFU, memory vs estimate
	$(PY) -m benchmarks.gpu $(GPU_ARGS)

faults:  ## fault injection: the bad-input suite (one clear line each), then per stage kill -9 x20, config change, NaN, disk full, two runs (tens of minutes)
	HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 $(PY) -m pytest tests/test_bad_inputs.py -q
	$(PY) -m faults $(FAULTS_ARGS)

# Each stage target runs its stage, and each stage checks itself first: when its artifact is complete
# for the same config values and input fingerprints it prints "up to date" and exits (before loading
# torch). So `make ppo` runs only what is missing or stale, and an override makes exactly the artifacts
# it changes stale. run.rounds=N: after round 1, `make ppo` runs the loop's stages for rounds 2..N.
.SECONDEXPANSION:
$(STAGES): $$(call needs,$$@)
	$(if $(filter skip:$@,$(PLAN)),@$(PY) -m pipeline.chain.plan --why $@ $(STAGE_ARGS),$(call stage_cmd,$@))
	$(if $(and $(filter $@,$(call word_of,rounds_after)),$(call word_of,later)),$(foreach r,$(call list_of,later),$(foreach s,$(call list_of,loop),$(call stage_cmd,$(s)) run.round=$(r) && ))true)

chat:  ## talk to the final model (MODEL=dir TEMPERATURE=0.7)
	$(PY) -m apps.chat --model $(MODEL) --temperature $(TEMPERATURE) $(CHAT_ARGS)

serve:  ## OpenAI-compatible API + chat page at http://127.0.0.1:8000/ (MODEL=dir COMPARE=dir PORT HOST)
	$(PY) -m apps.serve --model $(MODEL) $(if $(COMPARE),--compare $(COMPARE)) --host $(HOST) --port $(PORT) $(SERVE_ARGS)

clean:  ## delete this preset's artifacts (the labels people wrote and files the pipeline did not make stay)
	$(PY) -m pipeline.chain.clean $(STAGE_ARGS)
