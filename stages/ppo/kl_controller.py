"""The KL coefficient beta: fixed, or adapted towards a target KL (Ziegler et al., 2019)."""

from __future__ import annotations


class FixedKLController:
    def __init__(self, kl_coef: float):
        self.value = kl_coef

    def update(self, current_kl: float, n_episodes: int) -> None:
        pass

    def state_dict(self) -> dict:
        return {"value": self.value}

    def load_state_dict(self, state: dict) -> None:
        self.value = state["value"]


class AdaptiveKLController(FixedKLController):
    """beta *= 1 + clip(KL / target - 1, -0.2, 0.2) * episodes / horizon.

    The clipped proportional error keeps one noisy batch from swinging beta; the horizon (in
    episodes) sets how fast beta can move: e-fold in about horizon / 0.2 episodes at most.
    """

    def __init__(self, kl_coef: float, target: float, horizon: int):
        super().__init__(kl_coef)
        self.target = target
        self.horizon = horizon

    def update(self, current_kl: float, n_episodes: int) -> None:
        error = min(max(current_kl / self.target - 1.0, -0.2), 0.2)
        self.value *= 1.0 + error * n_episodes / self.horizon


def make_kl_controller(cfg) -> FixedKLController:
    if cfg.adaptive_kl:
        return AdaptiveKLController(cfg.kl_coef, cfg.target_kl, cfg.kl_horizon)
    return FixedKLController(cfg.kl_coef)
