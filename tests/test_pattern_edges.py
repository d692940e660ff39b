"""The edges a reader's own loop gives a pasted loss: no labelled example, a completion of length
0, a micro-batch of one token, a batch or minibatch of one. Drawn by Hypothesis over shapes and
masks: the loss is finite, and its gradient reaches what the pattern says it reaches, and only
that."""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from gallery import a2c, accumulate, distill, dpo, gan, grpo, lm, ppo, simsiam, vqvae

EDGES = settings(max_examples=25, deadline=None, derandomize=True)


@EDGES
@given(batch=st.integers(1, 9), classes=st.integers(2, 6), labelled=st.integers(0, 9),
       temperature=st.floats(0.5, 8.0), alpha=st.floats(0.0, 1.0))
def test_distill_loss_on_any_share_of_labels(batch, classes, labelled, temperature, alpha):
    torch.manual_seed(batch * 31 + labelled)
    student = torch.randn(batch, classes, requires_grad=True)
    teacher = torch.randn(batch, classes)
    labels = torch.randint(classes, (batch,))
    labels[min(labelled, batch):] = -1  # the rest unlabelled: none at all when labelled = 0
    loss = distill.distill_loss(student, teacher, labels, temperature, alpha)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(student.grad).all()


def completions(n: int, prompt_len: int, length: int, lengths: list[int]):
    """`n` sequences whose completions end (at a stop, id 0) after the given lengths."""
    seq = torch.randint(1, 7, (n, prompt_len + length))
    for i, own in enumerate(lengths):
        if own < length:
            seq[i, prompt_len + own] = 0
    return seq


@EDGES
@given(pairs=st.integers(1, 4), length=st.integers(1, 6), data=st.data())
def test_dpo_loss_with_completions_of_any_length_even_zero(pairs, length, data):
    lengths = data.draw(st.lists(st.integers(0, length), min_size=2 * pairs, max_size=2 * pairs))
    torch.manual_seed(pairs * 7 + length)
    policy = lm.CharTransformer(7, 8, 1, 2, 3 + length)
    reference = dpo.make_reference(policy)
    seq = completions(2 * pairs, 3, length, lengths)
    mask = dpo.completion_mask(seq, 3, torch.tensor([0]))
    chosen, rejected = dpo.sequence_logprobs(policy, seq, mask, 3).chunk(2)
    with torch.no_grad():
        ref_chosen, ref_rejected = dpo.sequence_logprobs(reference, seq, mask, 3).chunk(2)
    loss = dpo.dpo_loss(chosen, rejected, ref_chosen, ref_rejected, 0.1)
    loss.backward()
    assert torch.isfinite(loss)
    assert all(p.grad is None for p in reference.parameters())
    assert all(torch.isfinite(p.grad).all() for p in policy.parameters() if p.grad is not None)


@EDGES
@given(completions_=st.integers(1, 6), length=st.integers(1, 5), data=st.data())
def test_grpo_loss_with_masks_of_any_length_even_all_empty(completions_, length, data):
    mask = torch.tensor(data.draw(st.lists(
        st.lists(st.sampled_from([0.0, 1.0]), min_size=length, max_size=length),
        min_size=completions_, max_size=completions_)))
    torch.manual_seed(completions_ * 5 + length)
    logp = torch.randn(completions_, length, requires_grad=True)
    loss, clipped = grpo.grpo_loss(logp, logp.detach() + 0.1 * torch.randn_like(logp),
                                   torch.randn(completions_, length), torch.randn(completions_),
                                   0.2, 0.1, mask)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(clipped) and 0 <= float(clipped) <= 1
    assert torch.isfinite(logp.grad).all()
    assert float(logp.grad[mask == 0].abs().sum()) == 0  # padding gets no gradient


@EDGES
@given(tokens=st.integers(1, 5))
def test_token_loss_sum_of_a_micro_batch_down_to_one_token(tokens):
    torch.manual_seed(tokens)
    model = accumulate.CausalConvLM(5, 8, 3)
    inputs = torch.randint(5, (1, 5))
    targets = torch.full((1, 5), -100)
    targets[0, :tokens] = torch.randint(5, (tokens,))
    loss = accumulate.token_loss_sum(model, {"inputs": inputs, "targets": targets})
    loss.backward()
    assert torch.isfinite(loss)
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


@EDGES
@given(batch=st.integers(1, 4))
def test_simsiam_loss_and_quantize_on_a_batch_of_one_and_up(batch):
    torch.manual_seed(batch)
    encoder, predictor = torch.nn.Linear(6, 4), torch.nn.Linear(4, 4)
    loss = simsiam.simsiam_loss(encoder, predictor, torch.randn(batch, 6), torch.randn(batch, 6))
    loss.backward()
    assert torch.isfinite(loss) and all(torch.isfinite(p.grad).all()
                                        for p in encoder.parameters())
    z = torch.randn(batch, 3, 2, 2, requires_grad=True)
    codebook = torch.nn.Parameter(torch.randn(8, 3))
    z_q, codes, codebook_loss, commitment_loss = vqvae.quantize(z, codebook)
    (z_q.sum() + codebook_loss + commitment_loss).backward()
    assert codes.shape == (batch, 2, 2) and torch.isfinite(z.grad).all()
    assert torch.isfinite(codebook.grad).all()


@EDGES
@given(batch=st.integers(1, 6))
def test_ppo_loss_on_a_minibatch_of_one_and_up(batch):
    """A minibatch of one has no spread to normalise its advantage by: the loss stays finite (the
    normalised advantage is 0), where the std of one value would be NaN."""
    import warnings

    torch.manual_seed(batch)
    agent = ppo.Agent(4, 2, 8)
    obs, actions = torch.randn(batch, 4), torch.randint(2, (batch,))
    with torch.no_grad():
        old = agent.evaluate(obs, actions)[0]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # torch says the std of one has no dof
        losses = ppo.ppo_loss(agent, obs, actions, old, torch.randn(batch), torch.randn(batch),
                              0.2)
    sum(losses).backward()
    assert all(torch.isfinite(x) for x in losses)
    assert all(torch.isfinite(p.grad).all() for p in agent.parameters() if p.grad is not None)


@EDGES
@given(steps=st.integers(1, 4), envs=st.integers(1, 3), r1_gamma=st.sampled_from([0.0, 1.0]))
def test_a2c_losses_and_the_gan_steps_on_a_batch_of_one_and_up(steps, envs, r1_gamma):
    torch.manual_seed(steps * 3 + envs)
    agent = a2c.Agent(4, 2, 8)
    obs = torch.randn(steps, envs, 4)
    dist = agent.policy(obs)
    actions = dist.sample()
    batch = {"logprobs": dist.log_prob(actions), "entropies": dist.entropy(),
             "values": agent.value(obs)}
    policy_loss, value_loss, entropy = a2c.a2c_losses(batch, torch.randn(steps, envs))
    (policy_loss + value_loss - 0.01 * entropy).backward()
    assert all(torch.isfinite(x) for x in (policy_loss, value_loss, entropy))
    g, d = torch.nn.Linear(3, 2), torch.nn.Linear(2, 1)
    opt_g, opt_d = torch.optim.Adam(g.parameters()), torch.optim.Adam(d.parameters())
    fake = g(torch.randn(envs, 3))  # a batch of one when envs is 1
    d_loss = gan.discriminator_step(d, opt_d, torch.randn(envs, 2), fake, r1_gamma)
    assert torch.isfinite(d_loss) and all(p.grad is None for p in g.parameters())
    g_loss = gan.generator_step(d, opt_g, fake)
    assert torch.isfinite(g_loss) and all(torch.isfinite(p.grad).all() for p in g.parameters())
