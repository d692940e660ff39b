"""The bookkeeping around every example's training loop, written once.

    with Loop(cfg, EXAMPLE.name, stateful, device, about=cfg.env.id, by=n) as loop:
        if loop.finished_summary:               # a resumed run with nothing left to do
            return loop.finished_summary
        for start in loop:                      # units done before this iteration; loop.step:
            ...the algorithm's lines...         #   the units done once it ends
            if loop.due(cfg.log_every):
                loop.log(losses={"loss": loss}, epsilon=eps)  # losses: checked for NaN/inf
            if loop.due(cfg.eval_every, final=True):
                result = evaluate(...)
                loop.evaluated(**result)                      # kept in loop.evals, logged
                if loop.solved(result["eval_return_mean"], threshold):
                    break                                     # stop_when_solved
        return loop.summary(...)                # summary.json; leaving the block saves the last
                                                #   checkpoint of a run that stopped early

Between two iterations the loop advances the progress bar, saves a checkpoint every `ckpt_every`
units and after the last iteration (or, for a run stopped when solved, as the block ends), and stops
cleanly on SIGINT/SIGTERM (after saving one). `sampled(every)` and `Probe.crosses` say which
iterations a probe measures, so no probe arithmetic sits in a training loop. On
`resume`, entering the loop restores every object in `stateful` (models, optimizers, `Counters`),
the RNGs and the loop's own step, evaluations and first solved step.
"""

from __future__ import annotations

import contextlib
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch

from gallery.core import plots
from gallery.core.checkpoint import (
    check_fits,
    load_checkpoint,
    load_latest,
    resume_changes,
    settings,
)
from gallery.core.errors import explained
from gallery.core.run import Run, progress, resolve_out_dir, resume_source


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
        self._first_here: int | None = None  # this process's first iteration (its end step)
        # the summary of a run resumed after it had already ended; None while there is work to do
        self.finished_summary: dict | None = None
        self._saved_at: int | None = None
        self._exit = contextlib.ExitStack()
        # what a resume changed of the run ({key: [before, now]}): steps, a cadence, the device
        self.resumed_with: dict[str, list] = {}

    # what a checkpoint holds of the loop itself
    def state_dict(self) -> dict:
        return {"step": self.step, "evals": self.evals, "first_solved": self.first_solved}

    def load_state_dict(self, state: dict) -> None:
        self.step, self.evals = state["step"], state["evals"]
        self.first_solved = state["first_solved"]

    def __enter__(self) -> Loop:
        cfg = self.cfg
        out_dir = resolve_out_dir(cfg.out_dir, self.name)
        source = resume_source(out_dir, cfg.resume)
        if source is not None and source.is_file():  # not this run's: refused before anything
            state = (load_latest(source.parent, self.device)  # is written
                     if cfg.resume in (True, "true") else load_checkpoint(source, self.device))
            check_fits(self.stateful, state, source, self.name, cfg)
            finished = (Path(out_dir) / "summary.json").is_file() and cfg.resume in (True, "true")
            if not finished or state["step"] < self.total:  # a finished run: its summary, below
                self.resumed_with = resume_changes(state, cfg, source, self.total)
        with self._exit as stack:  # a failure while entering closes what was opened
            run = Run(out_dir, cfg, cfg.tensorboard, cfg.resume,
                      cfg.overwrite)
            self.run = stack.enter_context(run)
            if cfg.resume:
                self.run.restore(self.stateful, map_location=self.device)
                stopped_solved = self.first_solved is not None and self.stops_when_solved
                self.finished_summary = self.run.finished_summary(
                    self.total if stopped_solved else self.step, self.total)
            self.bar = stack.enter_context(
                progress(self.total, self.label, cfg.progress, initial=self.step))
            if self.known_errors:  # the autograd error a mistake is known for, explained
                stack.enter_context(explained(cfg.mistake, self.known_errors))
            self._exit = stack.pop_all()
        return self

    def __exit__(self, *exc: Any) -> bool | None:
        if exc[0] is None and self._first_here is not None:
            # a run that iterated here ends with its last step saved: a run stopped when solved
            # (the loop saved the others already; `save` writes once per step)
            self._exit.callback(self.save)
        return self._exit.__exit__(*exc)

    @property
    def stops_when_solved(self) -> bool:
        return bool(getattr(self.cfg, "stop_when_solved", False))

    def __iter__(self):
        """Yields the units done before each iteration; `self.step` is where it ends."""
        self._first_here = self.step + self.by
        while self.step < self.total:
            start, self.step = self.step, self.step + self.by
            yield start
            self.bar.update(self.by)
            if self.step >= self.total or (self.cfg.ckpt_every and self.due(self.cfg.ckpt_every)):
                self.save()  # every ckpt_every units, and at the end
            self.run.stop_if_asked(self.save, self.step, self.total)

    def due(self, every: int, final: bool = False) -> bool:
        """True when this iteration crossed a multiple of `every` (or, with `final`, was the
        last)."""
        crossed = every > 0 and self.step // every > (self.step - self.by) // every
        return crossed or (final and self.step >= self.total)

    def sampled(self, every: int) -> bool:
        """Whether a probe measures this iteration: this process's first, then every `every`
        units."""
        return self.step == self._first_here or self.due(every)

    def log(self, *, losses: dict[str, Any] | None = None, **metrics: Any) -> None:
        """Log `losses` and the other `metrics` at this step. A NaN or infinite value in `losses`
        stops the run (checked on log steps only: no extra device sync per step); a loss still None
        (no update yet) is left out."""
        losses = {key: float(value) for key, value in (losses or {}).items() if value is not None}
        self.run.check_finite(self.step, **losses)
        self.run.log(self.step, **losses, **metrics)
        self._show(losses)

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
        True when the run should stop there (`stop_when_solved`). It decides only: `summary` saves
        the checkpoint of a run that stopped here."""
        if self.first_solved is None and threshold is not None and score >= threshold:
            self.first_solved = self.step
            return self.stops_when_solved
        return False

    def save(self) -> None:
        """A checkpoint now (once per step: a signal right after the last one saves nothing new),
        with the example's name and config, so that a resume can say whose it is."""
        if self._saved_at != self.step:
            self.run.save(self.stateful, self.step, example=self.name,
                          config=settings(self.cfg))
            self._saved_at = self.step

    def summary(self, **values: Any) -> dict:
        """Write summary.json: which run this was, then `values`. (Leaving the `with` block saves
        the last checkpoint of a run that stopped early.)"""
        cfg = self.cfg
        resumed = {"resumed_with": self.resumed_with} if self.resumed_with else {}
        return self.run.write_summary({"example": self.name, "mistake": cfg.mistake,
                                       "seed": cfg.seed, "device": str(self.device), **values,
                                       **resumed})

    def _show(self, values: dict) -> None:
        self._shown.update({key: f"{value:.4g}" for key, value in values.items()
                            if isinstance(value, (int, float)) and value is not None})
        if self._shown:
            self.bar.set_postfix(self._shown)


def rl_results(loop: Loop, threshold: float | None) -> dict:
    """What dqn's, ppo's, a2c's and sac's summaries share, from the loop's evaluations; draws the
    run's learning_curve.png."""
    if loop.evals:
        plots.figure(loop.run.path("learning_curve.png"), plots.draw_learning_curve, loop.evals,
                     f"mistake={loop.cfg.mistake}", threshold)
    final = loop.evals[-1] if loop.evals else {}
    return {"env_id": loop.cfg.env.id, "eval_return_mean": final.get("eval_return_mean"),
            "eval_return_std": final.get("eval_return_std"), "env_steps": loop.step,
            "first_solved_step": loop.first_solved, "reward_threshold": threshold,
            "evals": loop.evals}
