"""The bookkeeping around every example's training loop, written once.

    with Loop(cfg, "dqn", stateful, device, about=cfg.env.id, by=n) as loop:
        if loop.finished:                       # a resumed run with nothing left to do
            return loop.finished
        for step in loop:                       # step: the units done once this iteration ends
            ...the algorithm's lines...
            if loop.due(cfg.log_every):
                loop.log({"loss": loss}, epsilon=eps)     # the losses are checked for NaN/inf
            if loop.due(cfg.eval_every, final=True):
                loop.evaluated(**evaluate(...))           # kept in loop.evals, logged, on the bar
        return loop.summary(...)                # summary.json

Between two iterations the loop advances the progress bar, saves a checkpoint every `ckpt_every`
units and after the last iteration, and stops cleanly on SIGINT/SIGTERM (after saving one). On
`resume`, entering the loop restores every object in `stateful` (models, optimizers, `Counters`),
the RNGs and the loop's own step, evaluations and first solved step.
"""

from __future__ import annotations

import contextlib
from types import SimpleNamespace
from typing import Any

import torch

from gallery.core.errors import explained
from gallery.core.run import Run, progress, resolve_out_dir


class Counters(SimpleNamespace):
    """Plain values a checkpoint keeps beside the models: `tally = Counters(updates=0)`, then
    `tally.updates += 1`. Tensors are saved detached: a checkpoint holds data, never a graph."""

    def state_dict(self) -> dict:
        return {name: _detached(value) for name, value in vars(self).items()}

    def load_state_dict(self, state: dict) -> None:
        vars(self).update(state)


def _detached(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.detach()
    if isinstance(value, (list, tuple)):
        return type(value)(_detached(v) for v in value)
    return value


class Loop:
    """One run's loop: its step, its cadences, its evaluations, its checkpoints and its summary.

    `by` is how many units (env steps, chunks, optimizer steps) one iteration does; `unit` names
    the step in each evaluation row. The progress bar shows the logged losses and the first value
    of the latest evaluation."""

    def __init__(self, cfg: Any, name: str, stateful: dict[str, Any], device: torch.device,
                 about: str = "", total: int | None = None, by: int = 1, unit: str = "step",
                 known_errors: dict | None = None):
        self.cfg, self.name, self.device = cfg, name, device
        # the loop's own counters ride in every checkpoint
        self.stateful = {**stateful, "loop": self}
        self.total = cfg.steps if total is None else total
        self.by, self.unit, self._shown = by, unit, {}
        self.label = f"{name} {about} mistake={cfg.mistake}"
        self.known_errors = known_errors
        self.step, self.evals, self.first_solved = 0, [], None
        self.finished: dict | None = None
        self._saved_at: int | None = None
        self._exit = contextlib.ExitStack()

    # what a checkpoint holds of the loop itself
    def state_dict(self) -> dict:
        return {"step": self.step, "evals": self.evals, "first_solved": self.first_solved}

    def load_state_dict(self, state: dict) -> None:
        self.step, self.evals = state["step"], state["evals"]
        self.first_solved = state["first_solved"]

    def __enter__(self) -> Loop:
        cfg = self.cfg
        with self._exit as stack:  # a failure while entering closes what was opened
            run = Run(resolve_out_dir(cfg.out_dir, self.name), cfg, cfg.tensorboard, cfg.resume,
                      cfg.overwrite)
            self.run = stack.enter_context(run)
            if cfg.resume:
                self.run.restore(self.stateful, map_location=self.device)
                stopped_solved = self.first_solved is not None and self.stops_when_solved
                self.finished = self.run.finished(self.total if stopped_solved else self.step,
                                                  self.total)
            self.bar = stack.enter_context(
                progress(self.total, self.label, cfg.progress, initial=self.step))
            if self.known_errors:  # the autograd error a mistake is known for, explained
                stack.enter_context(explained(cfg.mistake, self.known_errors))
            self._exit = stack.pop_all()
        return self

    def __exit__(self, *exc: Any) -> bool | None:
        return self._exit.__exit__(*exc)

    @property
    def stops_when_solved(self) -> bool:
        return bool(getattr(self.cfg, "stop_when_solved", False))

    def __iter__(self):
        while self.step < self.total:
            self.step += self.by
            yield self.step
            self.bar.update(self.by)
            if self.step >= self.total or (self.cfg.ckpt_every and self.due(self.cfg.ckpt_every)):
                self.save()  # every ckpt_every units, and at the end
            self.run.stop_if_asked(self.save, self.step, self.total)

    def due(self, every: int, final: bool = False) -> bool:
        """True when this iteration crossed a multiple of `every` (or, with `final`, was the
        last)."""
        crossed = every > 0 and self.step // every > (self.step - self.by) // every
        return crossed or (final and self.step >= self.total)

    def log(self, finite: dict[str, Any] | None = None, **metrics: Any) -> None:
        """Log the losses in `finite` and the other `metrics` at this step. A NaN or infinite loss
        stops the run (checked on log steps only: no extra device sync per step)."""
        finite = {key: float(value) for key, value in (finite or {}).items()}
        self.run.check_finite(self.step, **finite)
        self.run.log(self.step, **finite, **metrics)
        self._show(finite)

    def evaluated(self, **values: Any) -> dict:
        """Keep an evaluation in `evals` (every checkpoint holds them), log it, show it on the
        bar."""
        row = {self.unit: self.step, **values}
        self.evals.append(row)
        self.run.log(self.step, **values)
        self._show(dict(list(values.items())[:1]))
        return row

    def solved(self, score: float, threshold: float | None) -> bool:
        """Eval-until-solved: the first step `score` reaches `threshold` is kept as `first_solved`;
        True when the run should stop there (`stop_when_solved`)."""
        if self.first_solved is None and threshold is not None and score >= threshold:
            self.first_solved = self.step
            if self.stops_when_solved:
                self.save()  # the run ends here: its last checkpoint
                return True
        return False

    def save(self) -> None:
        """A checkpoint now (once per step: a signal right after the last one saves nothing new)."""
        if self._saved_at != self.step:
            self.run.save(self.stateful, self.step)
            self._saved_at = self.step

    def summary(self, **values: Any) -> dict:
        """Write summary.json: which run this was, then `values`. (The loop saved its last
        checkpoint when it ended, before any work the summary does.)"""
        cfg = self.cfg
        return self.run.write_summary({"example": self.name, "mistake": cfg.mistake,
                                       "seed": cfg.seed, "device": str(self.device), **values})

    def _show(self, values: dict) -> None:
        self._shown.update({key: f"{value:.4g}" for key, value in values.items()
                            if isinstance(value, (int, float)) and value is not None})
        if self._shown:
            self.bar.set_postfix(self._shown)
