"""gallery.check on real code: timm's ModelEmaV2 and ModelEmaV3 and vector-quantize-pytorch's
VectorQuantize (their real classes, test dependencies that scripts/test.sh installs), and steps of
the same shape as pytorch/examples' dcgan and word_language_model, CleanRL's dqn and ppo and the
SimSiam reference (those are scripts, not packages: written here in our own words).

Every correct step passes every check that applies to it; every mistake fails with one sentence
naming the module or tensor; a check handed nothing to check raises."""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from gallery.check import (
    bounded_memory,
    constant,
    disjoint,
    finite,
    frozen,
    gets_grad,
    no_grad_reaches,
    optimizer_covers,
    runs_in_train_mode,
    unchanged,
    updated,
)

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from timm.utils import ModelEmaV2, ModelEmaV3
    from timm.utils.model import freeze as timm_freeze
    from vector_quantize_pytorch import VectorQuantize


# --- timm's EMA -----------------------------------------------------------------------------------

class Attention(nn.Module):
    """A block with a constant integer index table among its buffers, as relative-position
    attention keeps one: nothing ever changes it, and an EMA copies it all the same."""

    def __init__(self, width: int):
        super().__init__()
        self.proj = nn.Linear(width, width)
        self.register_buffer("position_index", torch.arange(width).flip(0))

    def forward(self, x):
        return self.proj(x[:, self.position_index])


def timm_like_model(zero_head: bool = True) -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.BatchNorm1d(16), nn.ReLU(), Attention(16),
                          nn.Linear(16, 3))
    if zero_head:  # zero-initialised last layer: every earlier grad is exactly zero on step one
        nn.init.zeros_(model[4].weight)
        nn.init.zeros_(model[4].bias)
    return model


def train_step(model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
    model.train()
    x, y = torch.randn(16, 8), torch.randint(3, (16,))
    optimizer.zero_grad(set_to_none=True)
    F.cross_entropy(model(x), y).backward()
    optimizer.step()


EMAS = {
    "v2 default decay": lambda m: ModelEmaV2(m),
    "v2 decay 0.9998": lambda m: ModelEmaV2(m, decay=0.9998),
    "v3 default": lambda m: ModelEmaV3(m),
    "v3 warm-up": lambda m: ModelEmaV3(m, use_warmup=True),
    "v3 exclude_buffers": lambda m: ModelEmaV3(m, exclude_buffers=True),
}


@pytest.mark.parametrize("frozen_stem", [False, True], ids=["all-trainable", "frozen-stem"])
@pytest.mark.parametrize("kind", sorted(EMAS))
def test_timm_ema_passes_every_check(kind, frozen_stem):
    """A tiny learning rate and a decay near 1 keep most EMA values bit for bit where they were;
    the zero head makes the first step's other grads zero; the frozen stem never moves; the index
    table and BatchNorm's integer counter only get copied. Each is written, so each passes."""
    model = timm_like_model()
    if frozen_stem:
        model[0].requires_grad_(False)
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-6)
    ema = EMAS[kind](model)
    disjoint(ema=ema.module, model=model)
    same_value = 0
    for step in range(3):
        with no_grad_reaches(ema=ema.module), unchanged(ema=ema.module):
            train_step(model, optimizer)  # the student's step leaves the EMA alone
        before = {k: v.clone() for k, v in ema.module.state_dict().items()}
        with updated(ema=ema.module):
            ema.update(model, step=step) if isinstance(ema, ModelEmaV3) else ema.update(model)
        same_value += sum(torch.equal(before[k], v) for k, v in ema.module.state_dict().items())
    assert same_value > 0, "the premise: some EMA tensors keep their exact value, yet pass"


class WindowAttention(nn.Module):
    """Swin's shape of buffer: a relative-position index, integer and non-persistent (not in the
    state dict), which no EMA writes."""

    def __init__(self, width: int):
        super().__init__()
        self.proj = nn.Linear(width, width)
        self.register_buffer("relative_position_index", torch.arange(width).flip(0),
                             persistent=False)

    def forward(self, x):
        return self.proj(x[:, self.relative_position_index])


def test_timm_ema_v3_on_a_swin_shaped_block_passes_updated():
    """The false alarm issue 52 names: an integer, non-persistent index is not state an average
    moves. Named on its own, it is still required to be written."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.BatchNorm1d(16), WindowAttention(16),
                          nn.Linear(16, 3))
    ema = ModelEmaV3(model, decay=0.9)
    train_step(model, torch.optim.SGD(model.parameters(), lr=0.1))
    with updated(ema=ema.module), finite(ema=ema.module):
        ema.update(model, step=1)
    with pytest.raises(AssertionError, match=r"^updated: the block left index as they were"):
        with updated(index=ema.module[2].relative_position_index):
            ema.update(model, step=2)


def test_timm_freeze_passes_frozen_optimizer_covers_and_train_mode_outside_the_backbone():
    """timm's own freeze(): the stem's parameters stop requiring grad and its BatchNorm2d becomes
    FrozenBatchNorm2d (buffers only). A fine-tuning step then leaves the stem as it was."""
    torch.manual_seed(0)
    model = nn.Sequential()
    model.stem = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU())
    model.head = nn.Sequential(nn.Flatten(), nn.Linear(8 * 6 * 6, 3))
    timm_freeze(model, ["stem"])
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad],
                                  weight_decay=0.05)
    x, y = torch.randn(4, 3, 8, 8), torch.randint(3, (4,))
    with frozen(stem=model.stem), optimizer_covers(optimizer, model=model), \
            runs_in_train_mode(model=model, ignore=["stem"]), finite(model=model):
        for _ in range(3):
            optimizer.zero_grad(set_to_none=True)
            F.cross_entropy(model(x), y).backward()
            optimizer.step()
    everything = torch.optim.AdamW(model.parameters(), weight_decay=0.05)  # the stem included
    optimizer_covers(everything, model=model)  # its grads are None: AdamW leaves it alone
    for p in model.stem.parameters():
        p.grad = torch.zeros_like(p)  # a stale zero grad, as zero_grad(set_to_none=False) leaves
    with pytest.raises(AssertionError, match=r"^optimizer_covers: model \(stem.0.weight, "
                                             r"stem.0.bias\): frozen, yet with a grad"):
        optimizer_covers(everything, model=model)


def test_an_ema_that_skips_the_buffers_fails_next_to_timms_that_copies_them():
    model = timm_like_model(zero_head=False)
    ema = ModelEmaV3(model, decay=0.99)
    train_step(model, torch.optim.SGD(model.parameters(), lr=0.1))
    with updated(ema=ema.module):
        ema.update(model)
    with pytest.raises(AssertionError, match=r"^updated: the block left ema \(1.running_mean "
                                             r"\(buffer\), 1.running_var \(buffer\)\) as they "
                                             r"were: the parameters were written and these "
                                             r"buffers were not"):
        with updated(ema=ema.module), torch.no_grad():
            for e, m in zip(ema.module.parameters(), model.parameters()):
                e.lerp_(m, 0.01)  # the mistake: parameters only


def test_a_timm_ema_aliased_to_its_model_fails_disjoint():
    model = timm_like_model()
    ema = ModelEmaV2(model)
    ema.module = model  # the mistake: the EMA is the model itself
    with pytest.raises(AssertionError, match=r"^disjoint: ema and model share 12 tensors"):
        disjoint(ema=ema.module, model=model)


# --- vector-quantize-pytorch --------------------------------------------------------------------

def vq_autoencoder(**vq_kwargs):
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        vq = VectorQuantize(dim=8, codebook_size=16, **vq_kwargs)
    return nn.Linear(12, 8), vq, nn.Linear(8, 12)


def test_vq_ema_codebook_is_updated_by_a_forward_and_has_no_grad_to_check():
    encoder, vq, decoder = vq_autoencoder()  # the EMA codebook: buffers, no parameter
    vq.train()
    x = torch.randn(4, 10, 12)
    vq(encoder(x))  # the first call initialises the codebook (k-means) and sets `initted`
    with updated(codebook=vq, ignore=["*initted", "zero"]):  # a flag and a constant, never written
        quantized, _, commitment = vq(encoder(x))
    recon = F.mse_loss(decoder(quantized), x)
    gets_grad(encoder=encoder, loss=recon)  # the straight-through estimator reaches the encoder
    gets_grad(encoder=encoder, loss=commitment)
    with pytest.raises(ValueError, match=r"^gets_grad: codebook has nothing to check \(it has no "
                                         r"parameters, only 5 buffers"):
        gets_grad(codebook=vq)
    with updated(codebook=vq):  # the same without ignore=: a bool flag and a non-persistent
        vq(encoder(x))              # buffer are not state an average moves, so they are excused
    with pytest.raises(AssertionError, match=r"^updated: the block left initted as they were"):
        with updated(initted=vq._codebook.initted):  # named on its own, it must be written
            vq(encoder(x))


def test_vq_learnable_codebook_gets_grad_from_its_loss_and_not_from_a_decoder_without_st():
    encoder, vq, decoder = vq_autoencoder(learnable_codebook=True, ema_update=False)
    x = torch.randn(4, 10, 12)
    quantized, indices, commitment = vq(encoder(x))
    recon = F.mse_loss(decoder(quantized), x)
    gets_grad(codebook=vq, loss=commitment)
    gets_grad(encoder=encoder, loss=recon)
    with gets_grad(encoder=encoder, codebook=vq):
        (recon + commitment).backward(retain_graph=True)
    codes = vq.codebook[indices]  # the mistake: the decoder reads the codes, no straight-through
    with pytest.raises(AssertionError, match=r"^gets_grad: the loss \(MseLossBackward0\) gives no "
                                             r"non-zero grad to encoder \(weight, bias\)"):
        gets_grad(encoder=encoder, loss=F.mse_loss(decoder(codes), x))


# --- pytorch/examples' dcgan and word_language_model, in our own words -------------------------

def test_dcgan_shaped_loop_passes_and_its_third_iteration_without_detach_fails():
    """before=opt_d judges every D step in the block, not only the first one."""
    torch.manual_seed(0)
    net_g = nn.Sequential(nn.Linear(4, 16), nn.ReLU(), nn.Linear(16, 6), nn.Tanh())
    net_d = nn.Sequential(nn.Linear(6, 16), nn.LeakyReLU(0.2), nn.Linear(16, 1))
    opt_d = torch.optim.Adam(net_d.parameters(), lr=2e-4, betas=(0.5, 0.999))
    opt_g = torch.optim.Adam(net_g.parameters(), lr=2e-4, betas=(0.5, 0.999))
    bce = nn.BCEWithLogitsLoss()

    def iteration(detach: bool):
        real = torch.randn(8, 6)
        net_d.zero_grad()
        bce(net_d(real), torch.ones(8, 1)).backward()
        fake = net_g(torch.randn(8, 4))
        bce(net_d(fake.detach() if detach else fake), torch.zeros(8, 1)).backward()
        opt_d.step()
        net_g.zero_grad()
        bce(net_d(fake), torch.ones(8, 1)).backward()  # D's grads too: zeroed next iteration
        opt_g.step()

    with no_grad_reaches(generator=net_g, before=opt_d):
        for _ in range(3):
            iteration(detach=True)
    with pytest.raises(AssertionError, match=r"^no_grad_reaches: a backward before Adam.step\(\) "
                                             r"wrote a grad into generator"):
        with no_grad_reaches(generator=net_g, before=opt_d):
            for i in range(3):
                iteration(detach=i < 2)


def word_language_model():
    torch.manual_seed(0)
    encoder, rnn, decoder = nn.Embedding(20, 8), nn.LSTM(8, 16, 2), nn.Linear(16, 20)
    model = nn.ModuleList([encoder, rnn, decoder])
    data = torch.randint(20, (200, 4))  # (time, batch), as that example batches its corpus
    state = {"hidden": None, "i": 0, "total": 0.0}

    def repackage(hidden):
        return tuple(h.detach() for h in hidden)

    def batch(keep_loss=False, repackage_hidden=True):
        i = state["i"] % 150
        x, y = data[i:i + 10], data[i + 1:i + 11]
        hidden = state["hidden"]
        if hidden is not None and repackage_hidden:
            hidden = repackage(hidden)
            constant(hidden=hidden)
        model.zero_grad()
        output, hidden = rnn(encoder(x), hidden)
        loss = F.cross_entropy(decoder(output).view(-1, 20), y.reshape(-1))
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 0.25)
        for p in model.parameters():
            p.data.add_(p.grad, alpha=-20.0)  # that example's plain SGD, through .data
        state["hidden"], state["i"] = hidden, i + 10
        state["total"] += loss if keep_loss else loss.item()

    return model, batch


def test_word_language_model_shaped_loop_is_bounded_and_its_loss_log_leak_is_not():
    model, batch = word_language_model()
    with updated(model):  # writes through .data: seen because the values move
        batch()
    bounded_memory(batch, steps=5)
    model, batch = word_language_model()
    with pytest.raises(AssertionError, match=r"^bounded_memory: the autograd nodes kept alive grew "
                                             r"from [\d,]+ to [\d,]+ over 4 calls of leaky"):
        def leaky():
            batch(keep_loss=True)  # total_loss += loss, while backward runs every batch
        bounded_memory(leaky, steps=5)


# --- CleanRL's dqn and ppo, in our own words ----------------------------------------------------

def q_net():
    return nn.Sequential(nn.Linear(4, 32), nn.ReLU(), nn.Linear(32, 2))


def test_cleanrl_dqn_shaped_update_and_sync_pass():
    """Its target network still requires grad (it is never given to the optimizer and is read
    under no_grad), and the sync writes through .data: both are correct and pass."""
    torch.manual_seed(0)
    q_network, target_network = q_net(), q_net()
    target_network.load_state_dict(q_network.state_dict())
    optimizer = torch.optim.Adam(q_network.parameters(), lr=1e-3)
    disjoint(q_network=q_network, target_network=target_network)
    obs, next_obs = torch.randn(16, 4), torch.randn(16, 4)
    actions, rewards, dones = torch.randint(2, (16, 1)), torch.randn(16), torch.zeros(16)
    with unchanged(target=target_network), no_grad_reaches(target=target_network):
        with torch.no_grad():
            target_max = target_network(next_obs).max(1).values
            td_target = rewards + 0.99 * target_max * (1 - dones)
        constant(td_target=td_target)
        old_val = q_network(obs).gather(1, actions).squeeze(1)
        loss = F.mse_loss(td_target, old_val)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    gets_grad(q_network=q_network, loss=F.mse_loss(td_target, q_network(obs).gather(1, actions)
                                                    .squeeze(1)))
    with updated(target=target_network):
        for t, q in zip(target_network.parameters(), q_network.parameters()):
            t.data.copy_(1.0 * q.data + (1.0 - 1.0) * t.data)
    target_network = q_network  # the mistake, named
    with pytest.raises(AssertionError, match=r"^disjoint: q_network and target_network share 4 "
                                             r"tensors"):
        disjoint(q_network=q_network, target_network=target_network)


def test_cleanrl_ppo_shaped_rollout_and_update_pass():
    torch.manual_seed(0)
    critic = nn.Sequential(nn.Linear(4, 32), nn.Tanh(), nn.Linear(32, 1))
    actor = nn.Sequential(nn.Linear(4, 32), nn.Tanh(), nn.Linear(32, 2))
    optimizer = torch.optim.Adam([*critic.parameters(), *actor.parameters()], lr=2.5e-4, eps=1e-5)
    obs = torch.randn(32, 4)
    with torch.no_grad():  # the rollout
        dist = torch.distributions.Categorical(logits=actor(obs))
        actions = dist.sample()
        logprobs, values = dist.log_prob(actions), critic(obs).squeeze(1)
        returns = torch.randn(32)
        advantages = returns - values
    constant(logprobs=logprobs, values=values, advantages=advantages, returns=returns)
    dist = torch.distributions.Categorical(logits=actor(obs))
    ratio = (dist.log_prob(actions) - logprobs).exp()
    pg_loss = torch.max(-advantages * ratio, -advantages * ratio.clamp(0.8, 1.2)).mean()
    v_loss = 0.5 * (critic(obs).squeeze(1) - returns).pow(2).mean()
    gets_grad(actor=actor, loss=pg_loss)
    gets_grad(critic=critic, loss=v_loss)
    with pytest.raises(AssertionError, match=r"^gets_grad: the loss \(MeanBackward0\) gives no "
                                             r"non-zero grad to critic"):
        gets_grad(critic=critic, loss=pg_loss)  # the actor's loss does not train the critic
    with gets_grad(actor=actor, critic=critic):
        optimizer.zero_grad()
        (pg_loss + 0.5 * v_loss - 0.01 * dist.entropy().mean()).backward()
        optimizer.step()


# --- the SimSiam reference, in our own words ---------------------------------------------------

def test_simsiam_shaped_step_passes_with_its_frozen_bias():
    """The reference freezes the bias of the projector's last linear layer (a BatchNorm without
    affine follows it); that bias is not expected to learn, and gets_grad skips it."""
    torch.manual_seed(0)
    encoder = nn.Sequential(nn.Linear(16, 32), nn.BatchNorm1d(32), nn.ReLU(), nn.Linear(32, 8),
                            nn.BatchNorm1d(8, affine=False))
    encoder[3].bias.requires_grad_(False)
    predictor = nn.Sequential(nn.Linear(8, 4), nn.BatchNorm1d(4), nn.ReLU(), nn.Linear(4, 8))
    optimizer = torch.optim.SGD([p for p in [*encoder.parameters(), *predictor.parameters()]
                                 if p.requires_grad], lr=0.05, momentum=0.9)
    x1, x2 = torch.randn(16, 16), torch.randn(16, 16)
    with gets_grad(encoder=encoder, predictor=predictor):
        z1, z2 = encoder(x1), encoder(x2)
        p1, p2 = predictor(z1), predictor(z2)
        targets = (z1.detach(), z2.detach())
        constant(targets=targets)
        loss = -(F.cosine_similarity(p1, targets[1]).mean()
                 + F.cosine_similarity(p2, targets[0]).mean()) * 0.5
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with pytest.raises(AssertionError, match=r"^constant: targets\[0\] \(grad_fn="):
        constant(targets=(encoder(x1), encoder(x2)))  # the mistake: no stop-gradient


def test_copy_made_with_deepcopy_is_disjoint_and_an_assignment_is_not():
    online = timm_like_model()
    disjoint(online, copy.deepcopy(online))
    with pytest.raises(AssertionError, match=r"^disjoint: Sequential and Sequential#1 share"):
        disjoint(online, online)
