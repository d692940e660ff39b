"""scripts/bench.py's bookkeeping (its measurements live in scripts/measure/, one module each;
the benches themselves are timed by hand, never in a test)."""

from __future__ import annotations

import importlib
import importlib.util
import sys

from tests.conftest import ROOT


def load(name: str):
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault(name, module)
    spec.loader.exec_module(module)
    return module


def test_a_partial_sb3_run_replaces_only_its_algorithms_rows_and_keeps_speed_rows_first():
    bench = importlib.import_module("scripts.measure.sb3")
    speed = {name: {"setting": f"{name}: speed", "gallery_speed_over_sb3": i}
             for i, name in enumerate(("dqn", "ppo", "a2c", "sac"))}
    solve = {name: {"setting": f"{name}: solve", "gallery_seconds_to_solve": i}
             for i, name in enumerate(("dqn", "ppo", "sac"))}
    old = [speed["dqn"], speed["ppo"], solve["dqn"], solve["ppo"]]
    new_sac = [{**speed["sac"], "gallery_speed_over_sb3": 9.0}, solve["sac"]]
    merged = bench.merge_rows(old, [speed["a2c"], *new_sac])
    assert [r["setting"] for r in merged] == ["dqn: speed", "ppo: speed", "a2c: speed",
                                              "sac: speed", "dqn: solve", "ppo: solve",
                                              "sac: solve"]
    again = bench.merge_rows(merged, [{**speed["dqn"], "gallery_speed_over_sb3": 7.0}])
    assert len(again) == len(merged)
    assert [r["gallery_speed_over_sb3"] for r in again if r["setting"] == "dqn: speed"] == [7.0]


def test_the_sb3_peer_runs_the_algorithms_the_bench_compares_and_on_their_envs():
    bench, peer = importlib.import_module("scripts.measure.sb3"), load("sb3_peer")
    assert set(bench.SB3_SPEED) == set(peer.ZOO)
    for name, (env_id, threshold, _every) in bench.SB3_SOLVE.items():
        assert peer.ZOO[name][1] == env_id and peer.THRESHOLD[env_id] == threshold
