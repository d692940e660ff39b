import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call

from gallery import maml
from gallery.check import gets_grad, has_graph
from gallery.core.cli import compose
from tests.conftest import results_of, run_here, run_module

SMOKE = [*maml.EXAMPLE.smoke, "device=cpu"]


def setup(seed: int = 0):
    torch.manual_seed(seed)
    return maml.mlp(8), maml.sine_tasks(3, 5, torch.Generator().manual_seed(seed))


def meta_gradient(model, tasks, adapt_fn):
    loss = maml.meta_loss(model, tasks, maml.adapted_to(tasks, adapt_fn, model, 0.05, 1))
    grads = torch.autograd.grad(loss, list(model.parameters()), allow_unused=True)
    return torch.cat([(torch.zeros_like(p) if g is None else g).flatten()
                      for p, g in zip(model.parameters(), grads)])


def test_the_pattern_meta_gradient_is_the_exact_second_order_one():
    """Checked against torch.func, which differentiates through its own inner gradient."""
    model, tasks = setup()
    names = [n for n, _ in model.named_parameters()]

    def loss(params, x, y):
        return F.mse_loss(functional_call(model, params, (x,)), y)

    def outer(params):
        total = 0.0
        for xs, ys, xq, yq, *_ in tasks:
            inner = torch.func.grad(loss)(params, xs, ys)
            fast = {n: params[n] - 0.05 * inner[n] for n in names}
            total = total + loss(fast, xq, yq)
        return total / len(tasks)

    exact = torch.func.grad(outer)({n: p.detach() for n, p in model.named_parameters()})
    ours = meta_gradient(model, tasks, maml.adapt)
    assert torch.allclose(ours, torch.cat([exact[n].flatten() for n in names]), atol=1e-6)


def test_no_create_graph_is_first_order_maml_whatever_it_claims():
    model, tasks = setup()
    second = meta_gradient(model, tasks, maml.adapt)
    silent = meta_gradient(model, tasks, maml.adapt_no_create_graph)
    chosen = meta_gradient(model, tasks, maml.adapt_first_order)
    assert torch.equal(silent, chosen)
    assert float(F.cosine_similarity(silent, second, 0)) < 0.9999
    assert not torch.allclose(silent, second, atol=1e-5)


@pytest.mark.parametrize("mistake", ["detached_fast_weights", "deepcopy_inner_step"])
def test_no_meta_gradient_reaches_the_initialisation(mistake):
    model, tasks = setup()
    before = [p.detach().clone() for p in model.parameters()]
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(3):
        maml.meta_step(model, optimizer, tasks,
                       maml.adapted_to(tasks, maml.BY_MISTAKE[mistake], model, 0.05, 1))
    assert all(p.grad is None for p in model.parameters())
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))


def test_a_short_run_moves_the_initialisation_and_reports(tmp_path):
    s = maml.train(compose("maml", [*SMOKE, f"out_dir={tmp_path}"]))
    assert maml.EXAMPLE.check(s) is None
    assert s["meta_gradient_cosine"] == pytest.approx(1.0, abs=1e-4)
    assert set(s["adapted"]) >= {"x", "true", "support", "0 steps", "1 steps", "10 steps"}
    assert (tmp_path / "adapted.png").is_file()


def test_the_detached_run_ends_exactly_where_it_started(tmp_path):
    s = maml.train(compose("maml", [*SMOKE, "mistake=detached_fast_weights",
                                    f"out_dir={tmp_path}"]))
    assert not s["init_moved"] and s["mse_1_steps"] == s["mse_at_start"]
    assert s["meta_gradient_cosine"] == 0.0


def test_baseline_and_a_mistake_together_is_refused_naming_the_keys(tmp_path):
    proc = run_module("gallery.maml", *SMOKE, "baseline=true", "mistake=no_create_graph",
                      f"out_dir={tmp_path}/run")
    assert proc.returncode == 2
    assert "baseline=true" in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "run").exists()


def test_first_order_and_a_mistake_together_is_refused_in_one_line(tmp_path):
    """first_order=true already drops the second-order term: no_create_graph beside it would run
    first-order MAML and show nothing."""
    ran = run_here("gallery.maml", *SMOKE, "first_order=true", "mistake=no_create_graph",
                   f"out_dir={tmp_path}/run")
    assert ran.returncode == 2 and "first_order=true" in ran.stderr, ran.stderr
    assert "mistake=no_create_graph" in ran.stderr
    assert len(ran.stderr.strip().splitlines()) == 1 and not (tmp_path / "run").exists()


# --- this example's row of the check table (tests/test_check.py) ---

def check_step(mistake: str) -> None:
    """This example's meta-step under gallery.check: the pattern passes every check; each mistake
    fails with its `caught` sentence."""
    model, tasks = setup()
    optimizer = torch.optim.Adam(model.parameters())
    with results_of(torch.autograd, "grad") as inner_grads, gets_grad(initialisation=model):
        maml.meta_step(model, optimizer, tasks,
                       maml.adapted_to(tasks, maml.BY_MISTAKE[mistake], model, 0.05, 1))
    has_graph(inner_grads=inner_grads)
