# The RLHF pipeline: make pretrain sft reward ppo eval chat
#   CONFIG=configs/small.yaml    pick a preset (default configs/tiny.yaml)
#   LAUNCH="accelerate launch --config_file configs/accelerate/ddp.yaml"   wrap a stage in a launcher
#   any section.key=value        passed to the stage as a config override (e.g. ppo.kl_coef=0.05)
SHELL := /bin/bash
CONFIG ?= configs/tiny.yaml
NAME ?= $(basename $(notdir $(CONFIG)))
OUT ?= runs
RUN := $(OUT)/$(NAME)
VENV ?= .venv
PY ?= $(VENV)/bin/python
LAUNCH ?= $(PY)
# CPU wheel by default; on a GPU box: make setup TORCH_SPEC="torch==2.13.0" TORCH_INDEX=https://download.pytorch.org/whl/cu128
TORCH_SPEC ?= torch==2.13.0
TORCH_INDEX ?=
MODEL ?= $(if $(wildcard $(RUN)/ppo/manifest.json),$(RUN)/ppo,$(RUN)/sft)
TEMPERATURE ?= 0.7
MODELS ?=
comma := ,
empty :=
space := $(empty) $(empty)

# Command-line variables with a dot in their name are config overrides (make passes them as variables).
OVERRIDES := $(strip $(foreach v,$(MAKEOVERRIDES),$(if $(findstring .,$(firstword $(subst =, ,$(v)))),$(v))) $(ARGS))
STAGE_ARGS = --config $(CONFIG) run.name=$(NAME) run.out_dir=$(OUT) $(OVERRIDES)
export HF_HUB_DISABLE_TELEMETRY := 1
export TOKENIZERS_PARALLELISM ?= false

.PHONY: help setup test lint bench faults data pretrain sft reward ppo eval chat clean

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'
	@echo "  presets: $(notdir $(wildcard configs/*.yaml))   current: CONFIG=$(CONFIG) -> $(RUN)/"

setup:  ## create .venv with every dependency (CPU torch unless TORCH_INDEX is set)
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH_SPEC)" $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX))
	$(PY) -m pip install -q -e ".[dev]"

test:  ## run the test suite (offline)
	HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 $(PY) -m pytest tests

lint:  ## ruff
	$(VENV)/bin/ruff check pipeline stages data tests benchmarks

bench:  ## benchmarks: pretrain loop vs nanoGPT, PPO vs TRL 1.12 (side by side, same run)
	$(PY) -m benchmarks.pretrain
	$(PY) -m benchmarks.ppo $(if $(wildcard $(RUN)/reward/manifest.json),--also-run $(RUN))

faults:  ## fault injection per stage on the test preset: kill -9 x20, config change, NaN, disk full, two runs (tens of minutes)
	$(PY) -m faults $(FAULTS_ARGS)

# Each stage target runs its stage, and each stage checks itself: when its artifact is complete for
# the same config sections and input fingerprints it prints "up to date" and exits. So `make ppo`
# runs only what is missing or stale, and a command-line override makes exactly its stage stale.
data:  ## build the embedded demo data (offline, seconds)
	$(PY) -m data.demo $(STAGE_ARGS)

pretrain: data  ## tokenizer + GPT from scratch -> runs/<preset>/pretrain
	$(LAUNCH) -m stages.pretrain $(STAGE_ARGS)

sft: pretrain  ## instruction tuning (TRL SFTTrainer) -> runs/<preset>/sft
	$(LAUNCH) -m stages.sft $(STAGE_ARGS)

reward: sft  ## reward model on rankings (TRL RewardTrainer) -> runs/<preset>/reward
	$(LAUNCH) -m stages.reward $(STAGE_ARGS)

ppo: sft reward  ## PPO with a KL leash to SFT -> runs/<preset>/ppo
	$(LAUNCH) -m stages.ppo $(STAGE_ARGS)

eval:  ## compare pretrain / SFT / PPO on held-out data -> runs/<preset>/eval/report.md
	$(PY) -m stages.eval $(STAGE_ARGS) $(if $(MODELS),eval.models="[$(subst $(space),$(comma),$(strip $(MODELS)))]")

chat:  ## talk to the final model (MODEL=dir TEMPERATURE=0.7)
	$(PY) -m pipeline.chat --model $(MODEL) --temperature $(TEMPERATURE) $(CHAT_ARGS)

clean:  ## remove this preset's run directory
	rm -rf $(RUN)
