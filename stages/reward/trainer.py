"""TRL's RewardTrainer with two InstructGPT habits: a prompt's comparisons trained together, and each
distinct answer forwarded once per batch.

K ranked answers give K(K-1)/2 pairs. TRL forwards both sides of every pair, so one prompt's batch at
K=4 runs 12 forwards for 4 distinct answers, at K=8 56 for 8. InstructGPT forwards each answer once and
takes every pair's loss from those K rewards. The loss and its gradient are the same either way (the
same rewards enter the same Bradley-Terry terms); only the repeated forwards go.
"""

from __future__ import annotations

import torch

from stages.reward.dataset import GroupedPairSampler


def forward_unique_rows(model, counts: dict | None = None):
    """A stand-in for `model` that forwards each distinct (input_ids, attention_mask) row of a batch once
    and gives every row its reward, in the batch's order. `counts` adds up rows asked for and forwarded."""

    def forward(input_ids, attention_mask, **kwargs):
        width = input_ids.shape[1]
        rows, inverse = torch.unique(torch.cat([input_ids, attention_mask], dim=1), dim=0, return_inverse=True)
        outputs = model(input_ids=rows[:, :width], attention_mask=rows[:, width:], **kwargs)
        outputs.logits = outputs.logits[inverse]
        if counts is not None:
            counts["rows"] = counts.get("rows", 0) + input_ids.shape[0]
            counts["forwarded"] = counts.get("forwarded", 0) + rows.shape[0]
        return outputs

    return forward


def make_trainer_class():
    """RewardTrainer whose training order can keep each prompt's pairs together, forwarding each
    distinct answer of a batch once."""
    from trl import RewardTrainer

    class PromptGroupedRewardTrainer(RewardTrainer):
        def __init__(self, *args, pair_groups: list[int] | None = None, **kwargs):
            self.pair_groups = pair_groups
            self.forward_counts: dict = {}  # rows the batches held, rows actually forwarded
            super().__init__(*args, **kwargs)

        def _get_train_sampler(self, train_dataset=None):
            if self.pair_groups is None:
                return super()._get_train_sampler(train_dataset)
            return GroupedPairSampler(self.pair_groups, self.args.data_seed or self.args.seed)

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            counts = self.forward_counts if model.training else None
            return super().compute_loss(forward_unique_rows(model, counts), inputs, return_outputs, num_items_in_batch)

    return PromptGroupedRewardTrainer
