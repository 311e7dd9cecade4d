"""How much memory a stage's models will take, estimated before any weight is loaded.

    size = model_size("runs/tiny/sft")              # shapes from safetensors headers (or config.json)
    parts = ppo_memory(policy, reward, value, plan)  # [(what, bytes)], one entry per model + activations
    check_fits("ppo", parts, available_bytes(device), alternatives)   # UserError when it cannot fit

Sizes come from the safetensors headers of a local folder (the 8-byte length and JSON header at the
start of each file: names, dtypes, shapes), or, for a hub name or a folder without safetensors, from
config.json through an empty (meta-device) model: nothing is downloaded but the config.

Bytes per parameter: a frozen model holds its weights in its dtype (4 fp32, 2 bf16/fp16, ~0.5 4-bit);
a trained one keeps fp32 master weights, fp32 gradients and AdamW's two fp32 moments (16 bytes); LoRA
trains only its adapters (16 bytes per adapter parameter) over a frozen base. Activations are a rough
bound for one update micro-batch (after Korthikanti et al. 2022, "Reducing Activation Recomputation in
Large Transformer Models": ~34 bytes x tokens x hidden per layer in 16-bit with flash attention; gradient
checkpointing keeps only each layer's input) plus the vocabulary logits of the answer tokens, or the
rollout's KV cache if larger. Allocator fragmentation and the CUDA context (~0.5 GiB) are not counted.
"""

from __future__ import annotations

import dataclasses
import json
import struct
from dataclasses import dataclass
from pathlib import Path

from pipeline.errors import UserError

GiB = 1024**3
ADAMW_BYTES = 16  # fp32 weight + fp32 gradient + AdamW's two fp32 moments
DTYPE_BYTES = {"float32": 4.0, "bfloat16": 2.0, "float16": 2.0, "4bit": 0.5}


@dataclass(frozen=True)
class ModelSize:
    """What the estimate needs of a model: its parameter count, shape, and its linear layers."""

    params: int
    hidden: int
    layers: int
    vocab: int
    kv_width: int  # key/value heads x head dim: the KV cache per token and layer is 2 x this
    linears: tuple[tuple[str, int, int], ...]  # (module name, out features, in features) of every 2-D weight

    def adapter_params(self, r: int, target_modules) -> int:
        """LoRA's trained parameters: r x (in + out) for every targeted linear layer."""
        targets = set(target_modules)
        return sum(r * (n_out + n_in) for name, n_out, n_in in self.linears if name.rsplit(".", 1)[-1] in targets)


def safetensors_shapes(path: str | Path) -> dict[str, list[int]]:
    """{tensor name: shape} from a safetensors file's header, without reading its weights."""
    with open(path, "rb") as f:
        (length,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(length))
    return {k: v["shape"] for k, v in header.items() if k != "__metadata__"}


def _local_shapes(d: Path) -> dict[str, list[int]] | None:
    index = d / "model.safetensors.index.json"
    if index.is_file():
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        return {k: s for shard in shards for k, s in safetensors_shapes(d / shard).items()}
    if (d / "model.safetensors").is_file():
        return safetensors_shapes(d / "model.safetensors")
    return None


def _meta_shapes(config) -> dict[str, list[int]]:
    """Shapes of a model built on the meta device from its config: no memory, no download."""
    from accelerate import init_empty_weights
    from transformers import AutoModelForCausalLM

    with init_empty_weights():
        model = AutoModelForCausalLM.from_config(config)
    model.tie_weights()  # meta tensors are not tied on creation
    return {k: list(p.shape) for k, p in model.named_parameters()}  # named_parameters skips tied copies


def model_size(source: str | Path) -> ModelSize:
    """The size of a local model folder or hub model, read from headers and config.json only."""
    from transformers import AutoConfig

    from pipeline.lm.loading import WEIGHT_FILES, loading

    local = Path(source).is_dir()
    has_weights = local and any((Path(source) / name).is_file() for name in WEIGHT_FILES)
    with loading(source, "model", model=has_weights):  # a truncated or corrupt file: one line naming it
        config = AutoConfig.from_pretrained(str(source))
        shapes = _local_shapes(Path(source)) if local else None
    text = getattr(config, "text_config", None) or config  # multimodal configs nest the language model's
    if shapes is None:
        shapes = _meta_shapes(config)
    heads = text.num_attention_heads
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // heads
    kv_heads = getattr(text, "num_key_value_heads", None) or heads
    linears = tuple((name.removesuffix(".weight"), s[0], s[1]) for name, s in shapes.items()
                    if name.endswith(".weight") and len(s) == 2)
    return ModelSize(params=sum(_numel(s) for s in shapes.values()), hidden=text.hidden_size,
                     layers=text.num_hidden_layers, vocab=text.vocab_size, kv_width=kv_heads * head_dim,
                     linears=linears)


def _numel(shape) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


@dataclass(frozen=True)
class PPOPlan:
    """The options that decide PPO's memory (a plain copy of the config's, so alternatives are cheap)."""

    frozen_dtype: str  # reference, reward model and a LoRA base: float32 | bfloat16 | float16
    lora: bool = False
    qlora: bool = False
    lora_r: int = 16
    lora_targets: tuple[str, ...] = ()
    lora_value: str = "head"  # with LoRA: head (shares the policy's base) | model (a separate value model)
    gradient_checkpointing: bool = False
    micro_batch: int = 16  # rows of one update forward (batch / processes / minibatches / grad_accum)
    generation_batch: int = 64  # prompts sampled together
    prompt_len: int = 128
    answer_len: int = 48

    @property
    def seq_len(self) -> int:
        return self.prompt_len + self.answer_len

    @property
    def activation_bytes(self) -> float:
        return 2.0 if self.frozen_dtype in ("bfloat16", "float16") else 4.0


def _activations(m: ModelSize, plan: PPOPlan) -> float:
    tokens, b = plan.micro_batch * plan.seq_len, plan.activation_bytes
    per_layer = tokens * m.hidden * 34 * b / 2
    layers = (tokens * m.hidden * b * m.layers + per_layer) if plan.gradient_checkpointing else per_layer * m.layers
    logits = plan.micro_batch * plan.answer_len * m.vocab * 4 * 2  # fp32 logits and their gradient
    return layers + logits


def ppo_memory(policy: ModelSize, reward: ModelSize, value: ModelSize, plan: PPOPlan) -> list[tuple[str, float]]:
    """[(what, bytes)] for the policy, reference, reward and value models and the activations."""
    frozen = DTYPE_BYTES[plan.frozen_dtype]
    parts = []
    if plan.lora:
        base = DTYPE_BYTES["4bit"] if plan.qlora else frozen
        adapters = policy.adapter_params(plan.lora_r, plan.lora_targets)
        parts.append((f"policy ({'4-bit' if plan.qlora else plan.frozen_dtype} base + LoRA r={plan.lora_r}, "
                      "AdamW on the adapters)", policy.params * base + adapters * ADAMW_BYTES))
        parts.append(("reference (the policy's base, adapters off)", 0.0))
    else:
        parts.append(("policy (fp32 + AdamW)", policy.params * ADAMW_BYTES))
        parts.append((f"reference ({plan.frozen_dtype})", policy.params * frozen))
    parts.append((f"reward ({plan.frozen_dtype})", reward.params * frozen))
    shared_value = plan.lora and plan.lora_value != "model"
    if shared_value:
        parts.append(("value (a head on the policy's base)", (policy.hidden + 1) * ADAMW_BYTES))
    else:
        parts.append(("value (fp32 + AdamW)", value.params * ADAMW_BYTES))
    update = _activations(policy, plan) + (0 if shared_value else _activations(value, plan))
    kv_cache = 2 * policy.layers * policy.kv_width * plan.generation_batch * plan.seq_len * plan.activation_bytes
    parts.append(("activations (rough: one update micro-batch, or the rollout's KV cache)", max(update, kv_cache)))
    return parts


def total(parts: list[tuple[str, float]]) -> float:
    return sum(b for _, b in parts)


def describe(stage: str, parts: list[tuple[str, float]], budget: float | None, where: str) -> str:
    lines = [f"{stage}: memory estimate before loading ({where}"
             + (f", {budget / GiB:.2f} GiB available):" if budget is not None else "):")]
    lines += [f"{stage}:   {what:<72} {b / GiB:8.3f} GiB" for what, b in parts]
    lines.append(f"{stage}:   {'total':<72} {total(parts) / GiB:8.3f} GiB")
    return "\n".join(lines)


def available_bytes(device) -> float | None:
    """Free memory where the models will live: the GPU's free memory on CUDA, MemAvailable on a
    Linux CPU; None where it cannot be read (MPS, other systems): no refusal then."""
    import torch

    if device.type == "cuda":
        return float(torch.cuda.mem_get_info(device)[0])
    if device.type == "cpu":
        try:
            for line in Path("/proc/meminfo").read_text().splitlines():
                if line.startswith("MemAvailable:"):
                    return float(line.split()[1]) * 1024
        except OSError:
            return None
    return None


def check_fits(stage: str, parts: list[tuple[str, float]], budget: float | None,
               alternatives: dict[str, list[tuple[str, float]]], where: str) -> None:
    """Refuse, in one line, a plan whose estimate exceeds the budget, naming the options (each
    applied alone) that would bring it under; when none does alone, all of them together."""
    need = total(parts)
    if budget is None or need <= budget:
        return
    fitting = [f"{opt} (~{total(p) / GiB:.2f} GiB)" for opt, p in alternatives.items() if total(p) <= budget]
    if fitting:
        advice = "any of these would make it fit: " + "; ".join(fitting)
    elif alternatives:
        together = " ".join(alternatives)
        advice = (f"none of {together} fits alone; combine them, or use a smaller model or a bigger device")
    else:
        advice = "use a smaller model or a bigger device"
    raise UserError(f"{stage} needs about {need / GiB:.2f} GiB but {where} has {budget / GiB:.2f} GiB available; "
                    f"{advice} ({stage}.check_memory=false skips this check; the estimate is rough).")


def ppo_alternatives(policy, reward, value, plan: PPOPlan, *, cuda: bool) -> dict[str, list]:
    """The PPO estimate under each memory option the plan does not use yet, one at a time
    (QLoRA's 4-bit kernels need CUDA, so it is offered there only)."""
    options: dict[str, PPOPlan] = {}
    if not plan.lora:
        options["ppo.lora.enabled=true"] = dataclasses.replace(plan, lora=True)
    if plan.frozen_dtype == "float32":
        options["run.dtype=bfloat16"] = dataclasses.replace(plan, frozen_dtype="bfloat16")
    if cuda and not plan.qlora:
        key = "ppo.lora.qlora=true" if plan.lora else "ppo.lora.enabled=true ppo.lora.qlora=true"
        options[key] = dataclasses.replace(plan, lora=True, qlora=True)
    if not plan.gradient_checkpointing:
        options["ppo.gradient_checkpointing=true"] = dataclasses.replace(plan, gradient_checkpointing=True)
    if plan.micro_batch > 1 or plan.generation_batch > 1:
        options["smaller batches (a larger ppo.grad_accum, a smaller ppo.generation_batch_size)"] = (
            dataclasses.replace(plan, micro_batch=1, generation_batch=1))
    return {k: ppo_memory(policy, reward, value, p) for k, p in options.items()}
