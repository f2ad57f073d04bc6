"""Learning-rate schedules that update every iteration.

LAVIS 1.0.2's cosine schedule warms up in epoch 0 only and then changes the
rate once per epoch; GOAL's recipe decays it every iteration.
"""

import math

from lavis.common.registry import registry


@registry.register_lr_scheduler("goal_cosine_iter")
class IterCosineLRScheduler:
    """Linear warm-up over ``warmup_steps`` iterations, then cosine from ``init_lr`` to ``min_lr``.

    The cosine spans all ``max_epoch * iters_per_epoch`` iterations after the
    warm-up. ``step(cur_epoch, cur_step)`` takes the epoch and the iteration
    within it, as LAVIS's training loop calls it.
    """

    def __init__(self, optimizer, max_epoch, init_lr, min_lr=0.0, iters_per_epoch=None, warmup_steps=0, warmup_start_lr=-1, **kwargs):
        if iters_per_epoch is None or iters_per_epoch < 1:
            raise ValueError("goal_cosine_iter needs iters_per_epoch >= 1; use runner_goal, which passes it")
        self.optimizer = optimizer
        self.total_steps = int(max_epoch) * int(iters_per_epoch)
        self.iters_per_epoch = int(iters_per_epoch)
        self.init_lr = float(init_lr)
        self.min_lr = float(min_lr)
        self.warmup_steps = int(warmup_steps or 0)
        self.warmup_start_lr = float(warmup_start_lr) if warmup_start_lr is not None and warmup_start_lr >= 0 else 0.0

    def lr_at(self, global_step: int) -> float:
        if global_step < self.warmup_steps:
            fraction = global_step / self.warmup_steps
            return self.warmup_start_lr + fraction * (self.init_lr - self.warmup_start_lr)
        decay_steps = max(1, self.total_steps - self.warmup_steps)
        progress = min(1.0, (global_step - self.warmup_steps) / decay_steps)
        return self.min_lr + 0.5 * (self.init_lr - self.min_lr) * (1.0 + math.cos(math.pi * progress))

    def step(self, cur_epoch: int, cur_step: int) -> float:
        lr = self.lr_at(cur_epoch * self.iters_per_epoch + cur_step)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        return lr
