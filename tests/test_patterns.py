"""The promises every example makes to a reader who copies its pattern:

- each pattern function runs when its source is pasted alone into an empty namespace (with torch,
  nn, F, copy, contextlib, numpy as np and the other pattern functions of its file) and passes
  the same probe as the original;
- each mistake is its own function, a small diff against the pattern function it replaces;
- no pattern function and no training loop branches on `mistake`;
- the loops stay short, and measurement never switches off autograd's in-place checks on unsampled
  steps.
"""

from __future__ import annotations

import ast
import contextlib
import copy
import importlib
import inspect

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from gallery import a2c, dqn, ema, gan, lm, nets, ppo, sac, simsiam, tbptt, vqvae
from gallery.core.cli import compose
from gallery.core.probes import (
    CrossStepProbe,
    SavedTensorMeter,
    graph_saved_bytes,
    reached_parameters,
    recording,
    state_hash,
)
from gallery.core.registry import changed_lines, examples

EXAMPLES = examples()


LIBRARY = (lm,)  # what a reader copies along with a pattern that calls it: the language model's


def borrowed(example) -> list[tuple[object, str]]:
    """The library functions this example's pattern calls by name (grpo and dpo sample and score
    with gallery/lm.py's), and those they call in turn: a reader copies those along with it."""
    found: list[tuple[object, str]] = []
    todo = [(example.module, name) for name in example.pattern_functions]
    while todo:
        module, name = todo.pop()
        code = getattr(inspect.unwrap(getattr(module, name)), "__code__", None)
        for used in code.co_names if code else ():
            source = inspect.getmodule(getattr(module, used, None))
            if source in LIBRARY and used not in example.pattern_functions and inspect.isfunction(
                    getattr(source, used)) and (source, used) not in found:
                found.append((source, used))
                todo.append((source, used))
    return found[::-1]  # what is called last is defined first


def pasted(example_name: str) -> dict:
    """Every pattern function of an example (and the library functions it calls),
    executed from its source text in a bare namespace."""
    example = EXAMPLES[example_name]
    namespace = {"torch": torch, "nn": nn, "F": F, "copy": copy, "contextlib": contextlib,
                 "np": np}
    for module, name in [*borrowed(example),
                         *((example.module, name) for name in example.pattern_functions)]:
        exec(compile(inspect.getsource(getattr(module, name)), f"<pasted {name}>", "exec"),
             namespace)
    return namespace


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_the_pattern_pasted_alone_passes_the_examples_own_check_step(name, monkeypatch):
    """Every example, found through the registry: its pattern functions, pasted from their source
    into a bare namespace, take the originals' place in the example's `check_step`
    (tests/test_<name>.py: the pattern under gallery.check), which must pass with them and call
    them. A new example is held to this by name."""
    example, namespace, called = EXAMPLES[name], pasted(name), set()

    def counted(function_name, function):
        def wrapper(*args, **kwargs):
            called.add(function_name)
            return function(*args, **kwargs)
        return wrapper

    def through_module(function_name):  # so that arguments_of(module, name) still sees calls
        return lambda *args, **kwargs: getattr(example.module, function_name)(*args, **kwargs)

    for function_name in example.pattern_functions:
        function = namespace[function_name]
        if inspect.isfunction(function):  # classes (finetune's) stay themselves
            function = counted(function_name, function)
            namespace[function_name] = through_module(function_name)
        monkeypatch.setattr(example.module, function_name, function)
    pasted_names = set(example.pattern_functions)
    swap = lambda f: getattr(example.module, f.__name__) if getattr(  # noqa: E731
        f, "__name__", None) in pasted_names else f
    steps = example.module.BY_MISTAKE["none"]
    monkeypatch.setitem(example.module.BY_MISTAKE, "none",
                        type(steps)(*map(swap, steps)) if isinstance(steps, tuple) else swap(steps))
    importlib.import_module(f"tests.test_{name}").check_step("none")
    assert called, f"{name}: check_step ran none of the pasted pattern functions"


# --- the copy test -------------------------------------------------------------------------------

def test_pasted_gan_steps_write_no_grad_into_g_during_the_d_step():
    ns = pasted("gan")
    torch.manual_seed(0)
    g, d = nn.Sequential(nn.Linear(4, 16), nn.ReLU(),
                         nn.Linear(16, 2)), nn.Sequential(
                             nn.Linear(2, 16), nn.ReLU(), nn.Linear(16, 1))
    opt_g, opt_d = torch.optim.Adam(g.parameters()), torch.optim.Adam(d.parameters())
    real, fake = torch.randn(8, 2), g(torch.randn(8, 4))
    with recording(ns, "d_loss_fn") as built:  # the loss the step built; it returns it detached
        d_loss = ns["discriminator_step"](d, opt_d, real, fake, r1_gamma=0.1)
    assert all(p.grad is None for p in g.parameters()) and d_loss.grad_fn is None
    assert reached_parameters(built[0][0], g) == set() and reached_parameters(built[0][0], d)
    ns["generator_step"](d, opt_g, fake)
    assert all(p.grad is not None for p in g.parameters())
    d_loss, g_loss = ns["gan_step"](d, opt_d, opt_g, real, g(torch.randn(8, 4)))
    assert d_loss.grad_fn is None and g_loss.grad_fn is None


def test_pasted_dqn_functions_never_give_the_target_a_grad():
    ns = pasted("dqn")
    torch.manual_seed(0)
    online = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 2))
    target = ns["make_target"](online)
    opt = torch.optim.Adam(online.parameters(), lr=1e-2)
    before = state_hash(target)
    batch = {"obs": torch.randn(8, 4), "next_obs": torch.randn(8, 4),
             "actions": torch.randint(2, (8,)), "rewards": torch.ones(8),
             "terminated": torch.zeros(8)}
    for _ in range(3):
        ns["update"](online, target, opt, batch)
    assert all(p.grad is None and not p.requires_grad for p in target.parameters())
    assert state_hash(target) == before
    for _ in range(200):
        ns["sync_target"](target, online, tau=0.05)
    # no chain of lerps
    assert all(p.grad_fn is None and p.grad is None for p in target.parameters())
    with torch.no_grad():
        assert ns["td_target"](target, online, batch, 0.99).shape == (8,)


def test_pasted_frozen_backbone_classifier_keeps_the_backbone_hash():
    ns = pasted("finetune")
    torch.manual_seed(0)
    backbone = nn.Sequential(nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU()),
                             nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten()))
    model = ns["FrozenBackboneClassifier"](backbone, nn.Linear(4, 3))
    opt = torch.optim.SGD(ns["param_groups"](model, 0.1), lr=0.1)
    before = state_hash(backbone)
    x, y = torch.randn(16, 1, 8, 8), torch.randint(3, (16,))
    for _ in range(3):
        model.train()
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert state_hash(backbone) == before
    assert reached_parameters(loss, backbone) == set()


def test_pasted_tbptt_update_starts_every_chunk_without_a_graph():
    ns = pasted("tbptt")
    torch.manual_seed(0)
    model = tbptt.CharRNN(10, 4, 8, 1, "lstm")
    opt = torch.optim.Adam(model.parameters())
    data = torch.randint(10, (2, 41))
    state, seen = None, []
    forward = model.forward

    def spy(x, s=None):
        seen.append(s)
        return forward(x, s)

    model.forward = spy
    for i in range(4):
        chunk = (data[:, i * 10 : i * 10 + 10], data[:, i * 10 + 1 : i * 10 + 11])
        _, state = ns["tbptt_update"](model, opt, [chunk], state)
    assert seen[0] is None and all(t.grad_fn is None for s in seen[1:] for t in s)
    assert ns["detach_state"](None) is None


def test_pasted_ppo_functions_keep_the_rollout_and_the_advantages_free_of_graphs():
    import gymnasium as gym

    ns = pasted("ppo")
    torch.manual_seed(0)
    agent = ppo.Agent(4, 2, 16)
    envs = gym.make_vec("CartPole-v1", num_envs=2, vectorization_mode="sync",
                        vector_kwargs={"autoreset_mode": gym.vector.AutoresetMode.SAME_STEP},
                        max_episode_steps=5)
    obs = torch.as_tensor(envs.reset(seed=0)[0], dtype=torch.float32)
    # crosses a time limit: the bootstrap path runs too
    batch, obs = ns["rollout"](agent, envs, obs, 8, 0.99)
    assert all(t.grad_fn is None for t in batch.values()) and batch["dones"].sum() >= 2
    advantages, returns = ns["gae"](batch, agent.value(obs), 0.99, 0.95)
    assert advantages.grad_fn is None and returns.grad_fn is None
    before = state_hash(agent.critic)
    ns["ppo_update"](agent, torch.optim.Adam(agent.parameters()), batch, advantages, returns,
                     epochs=3, minibatch_size=4, clip=0.2, vf_coef=0.0)
    assert state_hash(agent.critic) == before  # no value loss: nothing else reaches the critic


def test_pasted_a2c_functions_give_the_actor_a_constant_advantage_and_the_critic_a_fixed_target():
    import gymnasium as gym

    ns = pasted("a2c")
    torch.manual_seed(0)
    agent = a2c.Agent(4, 2, 16)
    envs = gym.make_vec("CartPole-v1", num_envs=2, vectorization_mode="sync",
                        vector_kwargs={"autoreset_mode": gym.vector.AutoresetMode.SAME_STEP},
                        max_episode_steps=5)
    obs = torch.as_tensor(envs.reset(seed=0)[0], dtype=torch.float32)
    batch, obs = ns["rollout"](agent, envs, obs, 8, 0.99)  # crosses a time limit: bootstraps
    assert batch["values"].grad_fn is not None and batch["dones"].sum() >= 2
    _, returns = ns["gae"](batch, agent.value(obs), 0.99, 0.95)
    assert returns.grad_fn is None
    policy_loss, value_loss, entropy = ns["a2c_losses"](batch, returns)
    assert reached_parameters(policy_loss, agent.critic) == set()
    before = state_hash(agent.critic)
    ns["a2c_update"](agent, torch.optim.Adam(agent.parameters()), policy_loss, value_loss,
                     entropy, vf_coef=0.0, ent_coef=0.0)
    assert state_hash(agent.critic) == before  # no value loss: nothing else reaches the critic


def test_pasted_ema_functions_keep_the_teacher_frozen_and_its_buffers_current():
    ns = pasted("ema")
    torch.manual_seed(0)
    student = ema.classifier(64, 16, 10)
    teacher = ns["make_ema"](student)
    x, y = torch.randn(40, 1, 8, 8), torch.randint(10, (8,))
    optimizer = torch.optim.Adam(student.parameters())
    ns["mean_teacher_step"](student, teacher, optimizer, x[:8], y, x[8:], 1.0, lambda v: v)
    ns["sync_target"](teacher, student, tau=0.1)
    assert all(p.grad is None and p.grad_fn is None for p in teacher.parameters())
    assert all(torch.equal(t, s) for t, s in zip(teacher.buffers(), student.buffers()))


def test_pasted_sac_functions_train_each_network_only_from_its_own_loss():
    ns = pasted("sac")
    torch.manual_seed(0)
    actor = sac.Actor(3, 1, 16, np.array([-2.0]), np.array([2.0]))
    critics = nn.ModuleList([sac.Critic(3, 1, 16) for _ in range(2)])
    temperature = sac.Temperature()
    targets = ns["make_targets"](critics)
    actor_opt, critic_opt, alpha_opt = ns["make_optimizers"](actor, critics, temperature, 1e-2)
    batch = {"obs": torch.randn(16, 3), "next_obs": torch.randn(16, 3),
             "actions": torch.rand(16, 1) * 4 - 2, "rewards": -torch.rand(16),
             "terminated": torch.zeros(16)}
    ns["critic_step"](critics, targets, actor, critic_opt, batch, 0.2, 0.99)
    assert all(p.grad is None for p in [*targets.parameters(), *actor.parameters()])
    before = state_hash(critics)
    ns["actor_alpha_step"](actor, critics, temperature, actor_opt, alpha_opt, batch["obs"], -1.0)
    assert state_hash(critics) == before and temperature.log_alpha.grad is not None
    ns["sync_target"](targets, critics, 0.5)
    assert all(p.grad_fn is None and p.grad is None for p in targets.parameters())


def test_pasted_sync_target_averages_parameters_and_copies_batchnorm_buffers_alike():
    """One function for both examples: a hard copy and a Polyak step handle BatchNorm's running
    statistics alike (copied: an average of two running means is not a running mean, and the counter
    is an int)."""
    assert dqn.sync_target is sac.sync_target is nets.sync_target
    sync = pasted("sac")["sync_target"]
    torch.manual_seed(0)
    online = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
    online(torch.randn(16, 3))  # the running statistics move
    for tau in (1.0, 0.25):
        target = nn.Sequential(nn.Linear(3, 4), nn.BatchNorm1d(4))
        before = [p.clone() for p in target.parameters()]
        sync(target, online, tau)
        for b, t, o in zip(before, target.parameters(), online.parameters()):
            torch.testing.assert_close(t, b + tau * (o - b))
        for name, buffer in target.named_buffers():
            assert torch.equal(buffer, dict(online.named_buffers())[name]), (tau, name)
        assert all(p.grad_fn is None for p in target.parameters())


def test_frozen_and_eval_mode_give_every_flag_and_mode_back_even_when_the_block_raises():
    net = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2))
    net[1].weight.requires_grad_(False)  # a mixed module: each parameter gets its own flag back
    with pytest.raises(RuntimeError, match="inside"):
        with nets.frozen(net):
            assert not any(p.requires_grad for p in net.parameters())
            raise RuntimeError("raised inside the block")
    assert [p.requires_grad for p in net.parameters()] == [True, True, False, True]
    head = nn.Linear(2, 2).eval()
    with pytest.raises(RuntimeError, match="inside"):
        with nets.eval_mode(net, head):
            assert not net.training and not head.training
            raise RuntimeError("raised inside the block")
    assert net.training and not head.training


def test_pasted_simsiam_loss_trains_the_encoder_only_through_the_predictions():
    ns = pasted("simsiam")
    torch.manual_seed(0)
    encoder = nn.Sequential(nn.Linear(6, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 8))
    predictor = nn.Sequential(nn.Linear(8, 4), nn.ReLU(), nn.Linear(4, 8))
    x = torch.randn(32, 6)
    x1, x2 = x + 0.1 * torch.randn_like(x), x + 0.1 * torch.randn_like(x)
    assert simsiam.target_branch_grad_share(ns["simsiam_loss"], encoder, predictor, x1, x2) < 1e-6
    loss = ns["simsiam_loss"](encoder, predictor, x1, x2)
    assert -1 <= float(loss.detach()) <= 1 and reached_parameters(loss, predictor)
    assert abs(float(ns["output_std"](torch.randn(2000, 8))) * 8**0.5 - 1) < 0.05
    labels = torch.arange(4).repeat(25)
    assert ns["knn_accuracy"](torch.eye(4)[labels], labels, torch.eye(4)[labels], labels,
                              k=5) == 1.0


# --- the mistakes are small diffs ----------------------------------------------------------------

def test_pasted_quantize_and_vq_step_train_the_codebook_and_pass_the_identity_to_the_encoder():
    ns = pasted("vqvae")
    torch.manual_seed(0)
    model = vqvae.VQVAE(1, 8, 4, 16, stages=1)
    z = model.encoder(torch.randn(8, 1, 8, 8))
    z_q, codes, codebook_loss, commitment_loss = ns["quantize"](z, model.codebook)
    (grad,) = torch.autograd.grad(z_q.sum(), z, retain_graph=True)
    assert torch.equal(grad, torch.ones_like(z))  # straight through: the identity's gradient
    assert reached_parameters(codebook_loss, model.encoder) == set()  # sg[z]
    assert reached_parameters(commitment_loss, {"codebook": model.codebook}) == set()  # sg[e]
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    before = model.codebook.detach().clone()
    x = torch.randn(8, 1, 8, 8)
    z_q, _, codebook_loss, commitment_loss = ns["quantize"](model.encoder(x), model.codebook)
    ns["vq_step"](model, optimizer, x, z_q, codebook_loss, commitment_loss)
    assert not torch.equal(model.codebook, before) and model.codebook.grad is not None
    assert ns["code_usage"](codes, 16)[1] > 0


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_every_mistake_variant_is_a_small_diff_of_a_pattern_function(name):
    example = EXAMPLES[name]
    for key, mistake in example.mistakes.items():
        assert mistake.variants, f"{name} mistake={key} names no variant"
        for variant in mistake.variants:
            diff = example.diff(variant)
            assert 1 <= changed_lines(diff) <= 8, "\n".join(diff)
            assert "MISTAKE" in inspect.getsource(getattr(example.module, variant))


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_no_pattern_function_or_loop_branches_on_the_mistake(name):
    example = EXAMPLES[name]
    for function in example.pattern_functions:
        assert "mistake" not in inspect.getsource(getattr(example.module, function))
    train = ast.parse(inspect.getsource(example.module.train))
    loops = [node for node in ast.walk(train) if isinstance(node, (ast.For, ast.While))]
    assert loops, "train() has a training loop"
    for loop in loops:
        assert "mistake ==" not in ast.unparse(loop) and "mistake !=" not in ast.unparse(loop)


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_the_example_reads_in_one_sitting(name):
    module = EXAMPLES[name].module
    lines = inspect.getsource(module).splitlines()
    declared = next(i for i, line in enumerate(lines) if line.startswith("EXAMPLE = "))
    # What a reader reads, top to bottom, up to the EXAMPLE: "around 400" at the 100 columns
    # pyproject sets. The EXAMPLE below it is a declaration the gallery reads (its gate, its
    # mistakes' checks, its README row), kept apart from the reading count but held short too: a
    # gate's criteria, each a sentence beside the predicate that decides it, fill most of it.
    assert declared <= 430, f"{name}: {declared} lines before its EXAMPLE"
    assert len(lines) - declared <= 100, f"{name}: its EXAMPLE runs {len(lines) - declared} lines"
    assert len(inspect.getsource(module.train).splitlines()) <= 50  # at most about 50


# --- measurement stays off the hot path ----------------------------------------------------------

def test_graph_walk_counts_the_same_bytes_as_the_saved_tensor_meter():
    torch.manual_seed(0)
    model = tbptt.CharRNN(20, 4, 8, 1, "lstm", dropout=0.2)
    x = torch.randint(20, (3, 6))
    with SavedTensorMeter() as meter:
        logits, state = model(x)
        loss = F.cross_entropy(logits.reshape(-1, 20), x.reshape(-1))
    assert graph_saved_bytes(loss) == meter.live > 0
    loss.backward()
    assert graph_saved_bytes(loss) == 0  # freed by backward


def test_autograd_inplace_check_is_on_during_a_pattern_run(tmp_path, monkeypatch):
    """On an unsampled chunk the meter's hooks are off, so tampering with a saved tensor raises."""
    forward, calls = tbptt.CharRNN.forward, []

    def tamper_on_chunk_2(self, x, state=None):
        out = forward(self, x, state)
        calls.append(1)
        if torch.is_grad_enabled() and len(calls) == 2:
            with torch.no_grad():
                self.out.weight.add_(0.0)  # an in-place change to a weight the forward saved
        return out

    monkeypatch.setattr(tbptt.CharRNN, "forward", tamper_on_chunk_2)
    cfg = compose("tbptt", [f"out_dir={tmp_path}", "device=cpu", "steps=3", "hidden=16", "embed=8",
                            "batch_size=4", "bptt_len=8", "probe_every=10", "eval_every=3"])
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        tbptt.train(cfg)
    # The control: the same tampering under the saved-tensor meter goes unnoticed. That is why the
    # meter runs on sampled chunks only.
    torch.manual_seed(0)
    model = tbptt.CharRNN(10, 4, 8, 1, "lstm")
    x = torch.randint(10, (2, 5))
    with SavedTensorMeter():
        logits, _ = model(x)
        with torch.no_grad():
            model.out.weight.add_(0.0)
        logits.sum().backward()


def test_cross_step_probe_measures_the_gan_d_step_through_hooks_only():
    torch.manual_seed(0)
    g, d = nets.mlp(4, 2, 16, 2, sn=False), nets.mlp(2, 1, 16, 2, sn=False)
    opt_g, opt_d = torch.optim.Adam(g.parameters()), torch.optim.Adam(d.parameters())
    results = {}
    for mistake in ("none", "retain_graph"):
        probe = CrossStepProbe(torch.device("cpu"), opt_d, g, prefix="d_step", into="g")
        with probe.step(sampled=True):
            gan.BY_MISTAKE[mistake](d, opt_d, opt_g, torch.randn(8, 2), g(torch.randn(8, 4)))
        results[mistake] = dict(probe.record)
        # all removed
        assert not any(h for h in (g._forward_hooks, opt_d._optimizer_step_post_hooks))
    assert results["none"]["g_grad_norm_after_d_step"] == 0.0
    assert not results["none"]["d_step_reaches_g"]
    assert results["retain_graph"]["g_grad_norm_after_d_step"] > 0
    assert results["retain_graph"]["d_step_reaches_g"]
    assert results["retain_graph"]["d_step_saved_bytes"] > results["none"]["d_step_saved_bytes"]


def test_the_gallery_uses_public_torch_api_only():
    """Copyable code stays on public API: no `torch._foreach_*`, `torch._C` or the like."""
    from pathlib import Path

    package = Path(dqn.__file__).parent
    found = [f"{path.relative_to(package)}:{number}" for path in sorted(package.rglob("*.py"))
             for number, line in enumerate(path.read_text().splitlines(), 1) if "torch._" in line]
    assert len(list(package.rglob("*.py"))) > 20 and not found, found


@pytest.mark.parametrize("name", sorted(EXAMPLES))
def test_a_pattern_function_has_the_signature_a_user_would_write(name):
    """No pattern function takes a function as a default argument (a hook for a mistake to swap
    in: the loop composes the steps instead, and a mistake replaces a whole one), and none takes a
    parameter it never uses."""
    import textwrap

    example, found = EXAMPLES[name], []
    for function_name in example.pattern_functions:
        function = inspect.unwrap(getattr(example.module, function_name))
        if not inspect.isfunction(function):
            continue  # a class (finetune's): its methods are torch's protocol
        for parameter in inspect.signature(function).parameters.values():
            if callable(parameter.default) and parameter.default is not inspect.Parameter.empty:
                found.append(f"{function_name}({parameter.name}={parameter.default.__name__})")
        tree = ast.parse(textwrap.dedent(inspect.getsource(function)))
        used = {node.id for node in ast.walk(tree.body[0]) if isinstance(node, ast.Name)}
        found += [f"{function_name}: {p} is never used"
                  for p in inspect.signature(function).parameters if p not in used]
    assert not found, f"{name}: {found}"
