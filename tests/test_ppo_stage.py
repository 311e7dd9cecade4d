"""`python -m stages.ppo` end to end on tiny artifacts: what it writes and what it refuses."""

import json
import shutil

import pytest
import torch
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

from pipeline.artifacts.metrics import read_metrics
from pipeline.artifacts.store import read_manifest
from stages.ppo.stage import main
from tests.stage_fixtures import fixed_reward_stats, sft_and_reward


@pytest.fixture
def run_dir(tiny_lm_dir, tmp_path):
    sft_and_reward(tiny_lm_dir, tmp_path)
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": f"What does function number {i} do?"}) + "\n" for i in range(40)))
    held = tmp_path / "held.jsonl"
    held.write_text("".join(json.dumps({"prompt": f"Explain object {i}", "gold": f"object {i} does things"}) + "\n"
                            for i in range(6)))
    return tmp_path


def argv(tmp_path, *extra):
    """The stage's command line, with reward statistics current for it (as `make ppo` leaves them)."""
    args = ["--config", "configs/test.yaml", f"run.out_dir={tmp_path / 'runs'}", "run.name=t",
            f"ppo.data={tmp_path / 'prompts.jsonl'}", f"ppo.eval_data={tmp_path / 'held.jsonl'}",
            "ppo.total_episodes=32", "ppo.batch_size=16", "ppo.max_new_tokens=8", "ppo.forward_batch_size=16",
            "ppo.sample_every=1", *extra]
    fixed_reward_stats(args)
    return args


def test_stage_writes_a_chat_model_value_model_manifest_metrics_and_samples(run_dir, capsys):
    assert main(argv(run_dir)) == 0
    out = run_dir / "runs" / "t" / "ppo"
    manifest = read_manifest(out)
    assert manifest["status"] == "complete"
    assert manifest["inputs"]["policy"]["fingerprint"] == read_manifest(run_dir / "runs/t/sft")["fingerprint"]
    assert manifest["inputs"]["reward_model"]["fingerprint"] == read_manifest(run_dir / "runs/t/reward")["fingerprint"]
    AutoModelForCausalLM.from_pretrained(out)
    assert AutoTokenizer.from_pretrained(out).chat_template
    AutoModelForSequenceClassification.from_pretrained(out / "value")
    rows = [r for r in read_metrics(out) if "score" in r]
    assert [r["step"] for r in rows] == [1, 2]
    assert any("eval/gold" in r for r in read_metrics(out))
    samples = (out / "samples.md").read_text()
    assert samples.count("## Step") == 3 and "## Step 0" in samples and "*Gold:*" in samples
    report = json.loads((out / "report.json").read_text())
    assert report["split"] == "development" and report["prompts_source"] == str(run_dir / "held.jsonl")
    # 6 development prompts answered twice each (ppo.report_samples=2): 12 pairs, intervals over 6 prompts.
    assert (report["answers"], report["prompts"]) == (12, 6)
    assert report["win_rate_rm"]["prompts"] == 6 and report["gold_difference"]["prompts"] == 6
    assert 0 <= report["win_rate_rm"]["win_rate"] <= 1 and report["gold_baseline"] is not None
    # The printed verdict is the report's; on 6 prompts (the bar needs 30) it judges nothing and says so.
    bar = report["quality_bar"]
    assert bar["gold_state"] == "too few prompts" and not bar["met"]
    assert bar["verdict"].startswith("too few prompts to judge (6 < 30)")
    text = capsys.readouterr().out
    assert "6 development prompts (12 answer pairs)" in text
    assert f"ppo: {bar['verdict']} -> {out}" in text
    md = (out / "report.md").read_text()
    assert "development prompts" in md and bar["verdict"] in md
    assert main(argv(run_dir)) == 0  # same inputs and config: nothing to do
    assert "up to date" in capsys.readouterr().out


def test_stage_names_the_missing_reward_model(run_dir, capsys):
    shutil.rmtree(run_dir / "runs" / "t" / "reward")
    with pytest.raises(SystemExit) as e:
        main(argv(run_dir))
    assert e.value.code == 2
    assert "make reward" in capsys.readouterr().err


def test_stage_rejects_a_batch_that_does_not_split_into_minibatches(run_dir, capsys):
    with pytest.raises(SystemExit):
        main(argv(run_dir, "ppo.num_minibatches=3"))
    assert "ppo.batch_size" in capsys.readouterr().err


def test_stage_with_lora_saves_the_merged_policy_and_the_adapter(run_dir):
    assert main(argv(run_dir, "ppo.lora.enabled=true", "ppo.lora.r=4", "ppo.total_episodes=16", "ppo.lr=0.01")) == 0
    out = run_dir / "runs" / "t" / "ppo"
    assert (out / "adapter" / "adapter_config.json").is_file()
    merged = AutoModelForCausalLM.from_pretrained(out)  # a plain causal LM: later stages need no peft
    sft = AutoModelForCausalLM.from_pretrained(run_dir / "runs" / "t" / "sft")
    assert any(not torch.equal(a, b) for a, b in zip(merged.state_dict().values(), sft.state_dict().values()))
    # the value: a head on the policy's base (ppo.lora_value=head), saved as its own tensors
    head = json.loads((out / "value" / "value_head.json").read_text())
    assert head["on_adapters"] and head["hidden_size"] == sft.config.hidden_size
    from safetensors.torch import load_file

    weights = load_file(out / "value" / "value_head.safetensors")
    assert weights["score.weight"].shape == (1, sft.config.hidden_size) and weights["score.weight"].abs().sum() > 0


def test_stage_refuses_before_loading_when_the_estimate_exceeds_free_memory(run_dir, capsys, monkeypatch):
    import stages.ppo.memory

    monkeypatch.setattr(stages.ppo.memory, "available_bytes", lambda device: 20_000.0)  # an injected budget
    with pytest.raises(SystemExit) as e:
        main(argv(run_dir))
    assert e.value.code == 2
    out, err = capsys.readouterr()
    assert "memory estimate before loading" in out and "policy (fp32 + AdamW)" in out
    line = err.strip().removeprefix("error: ")
    assert "\n" not in line and "ppo needs about" in line and "ppo.check_memory=false" in line
    assert "ppo.lora.enabled=true" in line and "run.dtype=bfloat16" in line
    assert not (run_dir / "runs" / "t" / "ppo").exists()  # refused before anything was written
    assert main(argv(run_dir, "ppo.check_memory=false", "ppo.total_episodes=16")) == 0  # the way past a rough estimate


def test_stage_with_lora_over_a_bf16_base_saves_an_fp32_merged_policy(run_dir):
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(reset_partial_state=True)  # a process-wide singleton: bf16 for this run
    try:
        assert main(argv(run_dir, "run.dtype=bfloat16", "ppo.lora.enabled=true", "ppo.lora.r=4",
                         "ppo.total_episodes=16", "ppo.lr=0.01")) == 0
    finally:
        AcceleratorState._reset_state(reset_partial_state=True)
    out = run_dir / "runs" / "t" / "ppo"
    merged = AutoModelForCausalLM.from_pretrained(out, dtype="auto")
    assert merged.dtype == torch.float32  # merged into the base reloaded in fp32, not into the bf16 copy
    sft = AutoModelForCausalLM.from_pretrained(run_dir / "runs" / "t" / "sft")
    q = "model.layers.0.self_attn.q_proj.weight"
    delta = merged.state_dict()[q] - sft.state_dict()[q]
    assert delta.abs().max() > 0 and json.loads((out / "report.json").read_text())["split"] == "development"


def test_too_few_prompts_for_one_batch_are_refused_before_any_work(run_dir, capsys):
    few = run_dir / "few.jsonl"
    few.write_text("".join(json.dumps({"prompt": f"What does function number {i} do?"}) + "\n" for i in range(3)))
    with pytest.raises(SystemExit) as e:
        main(argv(run_dir, f"ppo.data={few}", "ppo.eval_data=null"))
    err = capsys.readouterr().err
    assert e.value.code == 2 and "ppo.data" in err and "ppo.batch_size" in err
    assert not (run_dir / "runs" / "t" / "ppo.partial").exists()  # nothing to resume into a crash
