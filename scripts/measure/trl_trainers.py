"""`scripts/bench.py trl`: the gallery's grpo and dpo steps against TRL's GRPOTrainer and
DPOTrainer, on a model of the same size, the same text, prompts, reward and pairs, one thread.

TRL (installed with pip --target --no-deps, never a dependency) trains a GPT-2 built offline from a
`GPT2Config` of our CharTransformer's size, with a character-level tokenizer made with the
`tokenizers` library. Both sides start from the same kind of untrained model, at the same learning
rate, batch, group size, completion length, clip and beta, with TRL's defaults that would make the
comparison unfair switched to ours (bf16 off, gradient checkpointing off, dropout off, one pass per
rollout, the reference's log-probs per batch). What each side reports:

- grpo: completions per second over the steps after a warm-up (sampling, the old and reference
  log-probs, one optimizer step), and the mean reward of its last rollouts (quality);
- dpo: preference pairs per second (the reference's and the policy's log-probs, one optimizer step),
  and the share of the last batches whose implicit reward margin is positive (quality).

Step times are medians over steps; each side runs its seeds one after the other, alone."""

from __future__ import annotations

import contextlib
import io
import os
import statistics
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch

from gallery import dpo, grpo, lm
from gallery.data.text import CharVocab, load_text, text_windows
from scripts.measure.peers import TRL, peer_path

OFFLINE = {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "USE_HUB_KERNELS": "0", "TOKENIZERS_PARALLELISM": "false", "WANDB_DISABLED": "true",
           "HF_DATASETS_DISABLE_PROGRESS_BARS": "1", "HF_HUB_DISABLE_PROGRESS_BARS": "1"}
SIZE = {"d_model": 64, "layers": 2, "heads": 4}
GRPO = {"prompts": 16, "group": 8, "prompt_len": 8, "completion_len": 16, "lr": 2e-3, "clip": 0.2,
        "beta": 0.3}
DPO = {"batch_size": 32, "lr": 1e-3, "beta": 0.1}
TARGETS = "aeiou"


def site_packages(deps: Path) -> Path:
    """The peer folder under a path that contains `site-packages`: `datasets` hashes what it
    caches, and skips modules only from folders so named (otherwise it tries to pickle pyarrow)."""
    link = deps.parent / "trl-peer-site" / "site-packages"
    if not link.exists():
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(deps, target_is_directory=True)
    return link


def tiny_gpt2(vocab: CharVocab, context: int, folder: Path, d_model: int = SIZE["d_model"]) -> str:
    """A GPT-2 of our model's size and a tokenizer with one token per character, saved to disk
    (the trainers rebuild their reference from the path)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import GPT2Config, GPT2LMHeadModel, PreTrainedTokenizerFast

    chars = {c: i for i, c in enumerate(vocab.chars)}
    specials = {"<unk>": len(chars), "<eos>": len(chars) + 1, "<pad>": len(chars) + 2}
    tok = Tokenizer(models.WordLevel({**chars, **specials}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split("", behavior="isolated")
    tok.decoder = decoders.Fuse()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>",
                                        eos_token="<eos>", pad_token="<pad>")
    config = GPT2Config(vocab_size=len(chars) + 3, n_positions=context + 1,
                        n_embd=d_model, n_layer=SIZE["layers"], n_head=SIZE["heads"],
                        n_inner=2 * d_model, resid_pdrop=0.0, embd_pdrop=0.0,
                        attn_pdrop=0.0, bos_token_id=specials["<eos>"],
                        eos_token_id=specials["<eos>"], pad_token_id=specials["<pad>"])
    GPT2LMHeadModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


class StepTimes:
    """A trainer callback's worth of step times (seconds), and the logged metrics."""

    def __init__(self):
        self.times, self.logs, self._start = [], [], None

    def callback(self):
        from transformers import TrainerCallback

        outer = self

        class Timer(TrainerCallback):
            def on_step_begin(self, args, state, control, **kwargs):
                outer._start = time.perf_counter()

            def on_step_end(self, args, state, control, **kwargs):
                outer.times.append(time.perf_counter() - outer._start)

            def on_log(self, args, state, control, logs=None, **kwargs):
                outer.logs.append(dict(logs or {}))

        return Timer()


def common_args(folder: Path, steps: int, seed: int, lr: float, batch: int) -> dict:
    return {"output_dir": str(folder / "out"), "max_steps": steps, "seed": seed,
            "learning_rate": lr, "per_device_train_batch_size": batch, "bf16": False,
            "gradient_checkpointing": False, "disable_dropout": True, "report_to": "none",
            "logging_steps": 1, "save_strategy": "no", "use_cpu": True, "lr_scheduler_type":
            "constant", "warmup_steps": 0, "dataloader_num_workers": 0, "disable_tqdm": True,
            "adam_beta1": 0.9, "adam_beta2": 0.999, "weight_decay": 0.0, "max_grad_norm": 1e9}


def trl_grpo(model_path: str, prompts: list[str], steps: int, seed: int, folder: Path,
             completion_len: int = GRPO["completion_len"]) -> dict:
    from datasets import Dataset
    from trl import GRPOConfig, GRPOTrainer

    def vowel_share(completions, **_):
        return [sum(c in TARGETS for c in text) / max(len(text), 1) for text in completions]

    timer = StepTimes()
    args = GRPOConfig(**common_args(folder, steps, seed, GRPO["lr"],
                                    GRPO["prompts"] * GRPO["group"]),
                      num_generations=GRPO["group"], max_completion_length=completion_len,
                      beta=GRPO["beta"], epsilon=GRPO["clip"], num_iterations=1,
                      loss_type="grpo", scale_rewards="group", temperature=1.0, top_p=1.0,
                      mask_truncated_completions=False)
    trainer = GRPOTrainer(model=model_path, reward_funcs=vowel_share, args=args,
                          train_dataset=Dataset.from_dict({"prompt": prompts}),
                          callbacks=[timer.callback()])
    trainer.train()
    rewards = [log["reward"] for log in timer.logs if "reward" in log]
    return {"step_seconds": timer.times, "reward": statistics.mean(rewards[-5:])}


def ours_grpo(vocab: CharVocab, ids: torch.Tensor, steps: int, seed: int,
              completion_len: int = GRPO["completion_len"], d_model: int = SIZE["d_model"]
              ) -> dict:
    torch.manual_seed(seed)
    policy = lm.CharTransformer(len(vocab), d_model, SIZE["layers"], SIZE["heads"],
                                GRPO["prompt_len"] + completion_len)
    reference = grpo.make_reference(policy)
    optimizer = torch.optim.Adam(policy.parameters(), lr=GRPO["lr"])
    targets, generator = vocab.encode(TARGETS), torch.Generator().manual_seed(seed)
    times, rewards = [], []
    for _ in range(steps):
        start = time.perf_counter()
        prompts = text_windows(ids, GRPO["prompts"], GRPO["prompt_len"], generator)
        batch = grpo.rollout(policy, reference, prompts, GRPO["group"], completion_len, targets)
        grpo.grpo_update(policy, optimizer, batch, GRPO["clip"], GRPO["beta"], 1,
                         GRPO["prompt_len"])
        times.append(time.perf_counter() - start)
        rewards.append(float(batch["rewards"].mean()))
    return {"step_seconds": times, "reward": statistics.mean(rewards[-5:])}


def preference_data(vocab: CharVocab, ids: torch.Tensor, n: int, seed: int) -> dict:
    """dpo's own pairs, sampled from an untrained CharTransformer (both sides train on them)."""
    torch.manual_seed(seed)
    cfg = dpo.DpoConfig(prompt_len=GRPO["prompt_len"], completion_len=GRPO["completion_len"])
    model = lm.CharTransformer(len(vocab), SIZE["d_model"], SIZE["layers"], SIZE["heads"],
                                 cfg.prompt_len + cfg.completion_len)
    prompts = text_windows(ids, n, cfg.prompt_len, torch.Generator().manual_seed(seed))
    return dpo.preference_pairs(model, prompts, cfg, vocab.encode(cfg.stop_chars),
                                vocab.encode(TARGETS))


def pair_texts(vocab: CharVocab, pairs: dict) -> dict:
    """The pairs as TRL reads them: the prompt, and each completion up to its stop, as text."""
    p = GRPO["prompt_len"]
    text = lambda seq, mask: vocab.decode(seq[p:][mask.bool()].tolist())  # noqa: E731
    return {"prompt": [vocab.decode(s[:p].tolist()) for s in pairs["chosen"]],
            "chosen": [text(s, m) for s, m in zip(pairs["chosen"], pairs["chosen_mask"])],
            "rejected": [text(s, m) for s, m in zip(pairs["rejected"], pairs["rejected_mask"])]}


def trl_dpo(model_path: str, texts: dict, steps: int, seed: int, folder: Path) -> dict:
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    timer = StepTimes()
    args = DPOConfig(**common_args(folder, steps, seed, DPO["lr"], DPO["batch_size"]),
                     beta=DPO["beta"], loss_type=["sigmoid"], precompute_ref_log_probs=False,
                     max_length=GRPO["prompt_len"] + GRPO["completion_len"] + 2)
    trainer = DPOTrainer(model=model_path, args=args, train_dataset=Dataset.from_dict(texts),
                         callbacks=[timer.callback()])
    trainer.train()
    accuracies = [log["rewards/accuracies"] for log in timer.logs if "rewards/accuracies" in log]
    return {"step_seconds": timer.times, "accuracy": statistics.mean(accuracies[-5:])}


def ours_dpo(vocab: CharVocab, pairs: dict, steps: int, seed: int) -> dict:
    torch.manual_seed(seed)
    context = GRPO["prompt_len"] + GRPO["completion_len"]
    policy = lm.CharTransformer(len(vocab), SIZE["d_model"], SIZE["layers"], SIZE["heads"],
                                  context)
    reference = dpo.make_reference(policy)
    optimizer = torch.optim.Adam(policy.parameters(), lr=DPO["lr"])
    generator = torch.Generator().manual_seed(seed)
    times, accuracies = [], []
    for _ in range(steps):
        start = time.perf_counter()
        batch = dpo.batch_of(pairs, DPO["batch_size"], generator)
        dpo.dpo_step(policy, reference, optimizer, batch, DPO["beta"], GRPO["prompt_len"])
        times.append(time.perf_counter() - start)
        with torch.no_grad():
            ref = dpo.reference_logprobs(reference, batch, GRPO["prompt_len"])
            mine = dpo.reference_logprobs(policy, batch, GRPO["prompt_len"])
        accuracies.append(float(((mine[0] - ref[0]) > (mine[1] - ref[1])).float().mean()))
    return {"step_seconds": times, "accuracy": statistics.mean(accuracies[-5:])}


def median_after(times: list[float], warmup: int) -> float:
    return statistics.median(times[warmup:])


# grpo again with longer completions on a wider model: where the cached sampler's saving grows
LONG = {"completion_len": 64, "d_model": 128}


def bench_trl(device: torch.device, seeds: tuple[int, ...] = (0, 1, 2), grpo_steps: int = 25,
              dpo_steps: int = 60, warmup: int = 3, long_steps: int = 15) -> list[dict]:
    deps = peer_path("trl", TRL)
    if deps is None:
        return [{"setting": "trl", "skipped": "TRL would not install (pip needs the index)"}]
    os.environ.update(OFFLINE)
    sys.path.insert(0, str(site_packages(deps)))
    torch.set_num_threads(1)
    import transformers
    import trl

    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    text = load_text("pydoc")
    vocab = CharVocab.build(text)
    ids = vocab.encode(text)
    context = GRPO["prompt_len"] + GRPO["completion_len"]
    runs: dict[str, list[dict]] = {"trl_grpo": [], "ours_grpo": [], "trl_dpo": [], "ours_dpo": [],
                                   "trl_grpo_long": [], "ours_grpo_long": []}
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings(), \
            contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        for seed in seeds:
            folder = Path(tmp) / f"seed{seed}"
            torch.manual_seed(seed)
            model_path = tiny_gpt2(vocab, context, folder / "model")
            windows = text_windows(ids, GRPO["prompts"] * (grpo_steps + 1), GRPO["prompt_len"],
                                   torch.Generator().manual_seed(seed))
            prompts = [vocab.decode(w.tolist()) for w in windows]
            runs["trl_grpo"].append(trl_grpo(model_path, prompts, grpo_steps, seed, folder))
            runs["ours_grpo"].append(ours_grpo(vocab, ids, grpo_steps, seed))
            pairs = preference_data(vocab, ids, 2048, seed)
            runs["trl_dpo"].append(trl_dpo(model_path, pair_texts(vocab, pairs), dpo_steps, seed,
                                           folder))
            runs["ours_dpo"].append(ours_dpo(vocab, pairs, dpo_steps, seed))
            long_path = tiny_gpt2(vocab, GRPO["prompt_len"] + LONG["completion_len"],
                                  folder / "long", LONG["d_model"])
            runs["trl_grpo_long"].append(trl_grpo(long_path, prompts, long_steps, seed, folder,
                                                  LONG["completion_len"]))
            runs["ours_grpo_long"].append(ours_grpo(vocab, ids, long_steps, seed, **LONG))
    per_step = {k: statistics.median(median_after(r["step_seconds"], warmup) for r in rows)
                for k, rows in runs.items()}
    completions = GRPO["prompts"] * GRPO["group"]
    where = (f"TRL {trl.__version__}, transformers {transformers.__version__}; a GPT-2 and our "
             f"CharTransformer of the same size, {SIZE['layers']} layers, {SIZE['heads']} heads, "
             f"from untrained weights; pydoc text; 1 thread; seeds "
             f"{', '.join(map(str, seeds))}; medians of step times after {warmup} warm-up steps")

    def grpo_row(key: str, length: int, steps: int, d_model: int) -> dict:
        return {
            "label": "grpo" if key == "grpo" else f"grpo, {length} characters, d_model {d_model}",
            "setting": f"grpo: {GRPO['prompts']} prompts x {GRPO['group']} completions of "
                       f"{length} characters per step, one pass, {steps} steps, d_model "
                       f"{d_model}; " + where,
            "peer": f"TRL {trl.__version__} GRPOTrainer",
            "trl_completions_per_sec": completions / per_step[f"trl_{key}"],
            "gallery_completions_per_sec": completions / per_step[f"ours_{key}"],
            "speed_gallery_over_trl": per_step[f"trl_{key}"] / per_step[f"ours_{key}"],
            "trl_reward_last_5_steps": statistics.mean(r["reward"] for r in runs[f"trl_{key}"]),
            "gallery_reward_last_5_steps": statistics.mean(r["reward"]
                                                           for r in runs[f"ours_{key}"])}

    return [
        grpo_row("grpo", GRPO["completion_len"], grpo_steps, SIZE["d_model"]),
        {"setting": f"dpo: {DPO['batch_size']} pairs per step, the reference per batch, "
                    f"{dpo_steps} steps, d_model {SIZE['d_model']}; " + where,
         "peer": f"TRL {trl.__version__} DPOTrainer",
         "trl_pairs_per_sec": DPO["batch_size"] / per_step["trl_dpo"],
         "gallery_pairs_per_sec": DPO["batch_size"] / per_step["ours_dpo"],
         "speed_gallery_over_trl": per_step["trl_dpo"] / per_step["ours_dpo"],
         "trl_accuracy_last_5_steps": statistics.mean(r["accuracy"] for r in runs["trl_dpo"]),
         "gallery_accuracy_last_5_steps": statistics.mean(r["accuracy"]
                                                          for r in runs["ours_dpo"])},
        grpo_row("grpo_long", LONG["completion_len"], long_steps, LONG["d_model"]),
    ]
