# The RLHF pipeline: make pretrain sft rank reward ppo eval chat
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
STAGE_ARGS = --config $(CONFIG) run.name=$(NAME) run.out_dir=$(OUT) $(OVERRIDES)
# Which stages each target builds first, read from the config and overrides (pipeline/graph/plan.py): a stage
# whose input is given (sft.init_from, reward.init_from, ppo.policy, ppo.reward_model, rank.policy, ...)
# does not build the one before it, and a target with no job in this config (pretrain when sft.init_from
# is set, data when no stage reads the demo) says why instead of running. Without a usable config (or
# .venv), the full chain, as the stage itself then reports what is wrong.
STAGE_TARGETS := data pretrain sft rank reward ppo dpo grpo rloo
FULL_CHAIN := data: pretrain:data sft:pretrain rank:sft reward:sft,rank ppo:sft,reward dpo:sft grpo:sft,reward rloo:sft,reward
ifneq ($(filter $(STAGE_TARGETS),$(MAKECMDGOALS)),)
PLAN := $(shell $(PY) -m pipeline.graph.plan $(STAGE_ARGS) 2>/dev/null)
endif
PLAN := $(or $(PLAN),$(FULL_CHAIN))
# chat and serve: the PPO model of the newest finished round up to run.rounds, else the SFT model
ifneq ($(filter chat serve,$(MAKECMDGOALS)),)
MODEL ?= $(or $(shell $(PY) -m pipeline.graph.plan --model $(STAGE_ARGS) 2>/dev/null),$(RUN)/sft)
endif
needs = $(subst $(comma),$(space),$(patsubst $(1):%,%,$(filter $(1):%,$(PLAN))))
run_or_skip = $(if $(filter skip:$(1),$(PLAN)),@$(PY) -m pipeline.graph.plan --why $(1) $(STAGE_ARGS),$(2))
export HF_HUB_DISABLE_TELEMETRY := 1
export TOKENIZERS_PARALLELISM ?= false

.PHONY: help setup lock test faults lint bench data pretrain sft rank reward ppo dpo grpo rloo compare eval chat serve clean

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-10s %s\n", $$1, $$2}'
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
	$(VENV)/bin/ruff check pipeline stages data tests benchmarks

bench:  ## benchmarks: pretrain loop vs nanoGPT, reward step vs TRL's, PPO vs TRL 1.12 (side by side, same run), serving
	$(PY) -m benchmarks.pretrain
	$(PY) -m benchmarks.reward
	$(PY) -m benchmarks.ppo $(if $(wildcard $(RUN)/reward/manifest.json),--also-run $(RUN))
	$(PY) -m benchmarks.serve

faults:  ## fault injection: the bad-input suite (one clear line each), then per stage kill -9 x20, config change, NaN, disk full, two runs (tens of minutes)
	HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 $(PY) -m pytest tests/test_bad_inputs.py -q
	$(PY) -m faults $(FAULTS_ARGS)

# Each stage target runs its stage, and each stage checks itself: when its artifact is complete for
# the same config sections and input fingerprints it prints "up to date" and exits. So `make ppo`
# runs only what is missing or stale, and a command-line override makes exactly its stage stale.
# The prerequisites follow the config (PLAN above): `make -n sft sft.init_from=DIR` shows no pretraining.
data:  ## build the embedded demo data (offline, seconds)
	$(call run_or_skip,data,$(PY) -m data.demo $(STAGE_ARGS))

pretrain: $(call needs,pretrain)  ## tokenizer + GPT from scratch -> runs/<preset>/pretrain
	$(call run_or_skip,pretrain,$(LAUNCH) -m stages.pretrain $(STAGE_ARGS))

sft: $(call needs,sft)  ## instruction tuning (TRL SFTTrainer) -> runs/<preset>/sft
	$(LAUNCH) -m stages.sft $(STAGE_ARGS)

rank: $(call needs,rank)  ## the SFT model's own answers, ranked (rank.labeler=gold|human|judge) -> runs/<preset>/rank
	$(PY) -m stages.rank $(STAGE_ARGS)

reward: $(call needs,reward)  ## reward model on rankings (TRL RewardTrainer) -> runs/<preset>/reward
	$(LAUNCH) -m stages.reward $(STAGE_ARGS)

# run.rounds=N: after round 1, `make ppo` runs rounds 2..N, each rank -> reward -> ppo with run.round set
# (round N ranks round N-1's PPO answers and writes rank-rN, reward-rN, ppo-rN; pipeline/graph/rounds.py).
round = $(PY) -m stages.rank $(STAGE_ARGS) run.round=$(1) && $(LAUNCH) -m stages.reward $(STAGE_ARGS) \
	run.round=$(1) && $(LAUNCH) -m stages.ppo $(STAGE_ARGS) run.round=$(1)
ppo: $(call needs,ppo)  ## PPO with a KL leash to SFT -> runs/<preset>/ppo (run.rounds=N: rounds 2..N -> ppo-rN)
	$(LAUNCH) -m stages.ppo $(STAGE_ARGS)
	$(if $(call needs,later),$(foreach r,$(call needs,later),$(call round,$(r)) && )true)

dpo: $(call needs,dpo)  ## DPO (TRL DPOTrainer) on the reward model's preference pairs -> runs/<preset>/dpo
	$(LAUNCH) -m stages.align $(STAGE_ARGS) align.method=dpo

grpo: $(call needs,grpo)  ## GRPO (TRL GRPOTrainer), rewarded as PPO is, PPO's answer budget -> runs/<preset>/grpo
	$(LAUNCH) -m stages.align $(STAGE_ARGS) align.method=grpo

rloo: $(call needs,rloo)  ## RLOO (TRL RLOOTrainer), rewarded as PPO is, PPO's answer budget -> runs/<preset>/rloo
	$(LAUNCH) -m stages.align $(STAGE_ARGS) align.method=rloo

compare:  ## SFT vs PPO, DPO, GRPO, RLOO (those that exist) -> runs/<preset>/compare/compare.md
	$(PY) -m stages.compare $(STAGE_ARGS)

eval:  ## compare pretrain / SFT / PPO on held-out data -> runs/<preset>/eval/report.md
	$(PY) -m stages.eval $(STAGE_ARGS) $(if $(MODELS),eval.models="[$(subst $(space),$(comma),$(strip $(MODELS)))]")

chat:  ## talk to the final model (MODEL=dir TEMPERATURE=0.7)
	$(PY) -m apps.chat --model $(MODEL) --temperature $(TEMPERATURE) $(CHAT_ARGS)

serve:  ## OpenAI-compatible API + chat page at http://127.0.0.1:8000/ (MODEL=dir COMPARE=dir PORT HOST)
	$(PY) -m apps.serve --model $(MODEL) $(if $(COMPARE),--compare $(COMPARE)) --host $(HOST) --port $(PORT) $(SERVE_ARGS)

clean:  ## remove this preset's run directory
	rm -rf $(RUN)
