"""QLoRA training with TRL (notebook 03): model, pre-flight check, SFTConfig/SFTTrainer, checkpoints, adapter.

The notebook writes out the libraries' calls (from_pretrained, prepare_model_for_kbit_training, get_peft_model,
SFTConfig, SFTTrainer, trainer.train) with their arguments from this module's small functions; the CLI
(`ragcourse train`, also under `accelerate launch`) makes the same calls through ``load_model_for_training``,
``make_trainer`` and ``run_training``, which are built from those same functions.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .config import CourseConfig
from .env import checkpointing_args
from .errors import CourseError
from .hardware import Hardware, compute_dtype_name, detect_hardware

if TYPE_CHECKING:  # pragma: no cover
    from datasets import DatasetDict

# Tokens that several model families ship for padding; used when the tokenizer pads with EOS.
PAD_CANDIDATES = ("<|finetune_right_pad_id|>", "<|endoftext|>", "<pad>", "<|pad|>", "[PAD]", "<unk>")
CHECKPOINT = re.compile(r"^checkpoint-(\d+)$")
COMPLETE_MARKERS = ("trainer_state.json", "adapter_model.safetensors")  # trainer_state.json is written last


def ensure_pad_token(tokenizer: Any) -> str:
    """Make the pad token different from EOS (returns the pad token).

    If pad == EOS, the collator masks every EOS as padding and the model never learns to stop: the classic
    "it keeps talking after fine-tuning" bug. We pick an existing spare token, so no embedding resize is needed.
    """
    if tokenizer.pad_token is not None and tokenizer.pad_token_id != tokenizer.eos_token_id:
        return tokenizer.pad_token
    vocab = tokenizer.get_vocab()
    for token in PAD_CANDIDATES:
        if token in vocab and vocab[token] != tokenizer.eos_token_id:
            tokenizer.pad_token = token
            return token
    raise ValueError(
        "The tokenizer has no spare token to pad with; add one with tokenizer.add_special_tokens "
        "({'pad_token': '<|pad|>'}) and model.resize_token_embeddings(len(tokenizer))."
    )


def input_grads_for_checkpointing(cfg: CourseConfig, model: Any) -> bool:
    """With ``training.gradient_checkpointing``, make the embeddings' output require grad (notebook 03, section 4).

    The base is frozen, so nothing entering the first checkpointed block requires grad, and without this no gradient
    reaches the adapters inside it. Returns whether it switched it on.
    """
    if cfg.training.gradient_checkpointing:
        model.enable_input_require_grads()
    return cfg.training.gradient_checkpointing


def prepare_for_training(cfg: CourseConfig, model: Any) -> Any:
    """The loaded base made ready for (k-bit) training, with the LoRA adapter of ``lora.lora_config(cfg)`` attached.

    Notebook 03 (section 4) writes out these very calls.
    """
    from peft import prepare_model_for_kbit_training
    from transformers import set_seed

    from .lora import get_peft_model, lora_config

    if cfg.quantization.load_in_4bit:
        # Freezes the base and casts norms to fp32; the Trainer switches activation checkpointing on itself.
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
    input_grads_for_checkpointing(cfg, model)
    # LoRA's A matrices are initialised at random: seed here, so the notebook and `ragcourse train` start from the
    # same adapter whatever ran before in the process.
    set_seed(cfg.training.seed)
    return get_peft_model(model, lora_config(cfg))


def load_model_for_training(cfg: CourseConfig, hw: Hardware | None = None):
    """The base model (4-bit when ``quantization.load_in_4bit``) made ready for k-bit training, with LoRA attached."""
    from .models import load_causal_lm

    return prepare_for_training(cfg, load_causal_lm(cfg, hw=hw or detect_hardware()))


def optimizer_name(cfg: CourseConfig, hw: Hardware) -> str:
    """``auto``: paged 8-bit AdamW on a GPU (spikes page to CPU RAM instead of crashing), plain AdamW on CPU."""
    if cfg.training.optim != "auto":
        return cfg.training.optim
    return "paged_adamw_8bit" if hw.device == "cuda" else "adamw_torch"


def tracker(cfg: CourseConfig) -> str:
    """``training.report_to`` checked before training starts (notebook 03, section 6): ``none`` or an
    installed tracker. TensorBoard writes event files to ``<checkpoints>/runs/``: ``tensorboard --logdir`` there."""
    import importlib.util

    from .config import ConfigError

    name = cfg.training.report_to
    if name != "none" and importlib.util.find_spec(name) is None:  # each tracker's module is named as its package
        raise ConfigError(
            f"training.report_to: {name} is not installed: pip install {name} (or set training.report_to: none)."
        )
    return name


def sft_config_kwargs(
    cfg: CourseConfig, output_dir: str | Path, hw: Hardware | None = None, **overrides: Any
) -> dict[str, Any]:
    """``trl.SFTConfig``'s arguments from the course config (notebook 03, section 5): precision from the hardware,
    evaluation and early stopping on validation loss, checkpoints; ``overrides`` replace single ones."""
    hw = hw or detect_hardware()
    t = cfg.training
    dtype = compute_dtype_name(hw, cfg.model.torch_dtype)
    kwargs: dict[str, Any] = dict(
        output_dir=str(output_dir),
        num_train_epochs=t.num_train_epochs,
        max_steps=t.max_steps,
        per_device_train_batch_size=t.per_device_train_batch_size,
        per_device_eval_batch_size=t.per_device_eval_batch_size,
        gradient_accumulation_steps=t.gradient_accumulation_steps,
        learning_rate=t.learning_rate,
        lr_scheduler_type=t.lr_scheduler_type,
        warmup_steps=t.warmup_steps,
        weight_decay=t.weight_decay,
        optim=optimizer_name(cfg, hw),
        **checkpointing_args(t.gradient_checkpointing),  # the spelling of the installed transformers (env.py)
        bf16=dtype == "bfloat16" and hw.device == "cuda",
        fp16=dtype == "float16" and hw.device == "cuda",
        use_cpu=hw.device == "cpu",
        max_length=cfg.model.max_length,
        packing=t.packing,
        completion_only_loss=True,  # loss on the answer only (prompt/completion dataset form)
        logging_steps=t.logging_steps,
        eval_strategy="steps",
        eval_steps=t.eval_steps,
        save_strategy="steps",
        save_steps=t.save_steps,
        save_total_limit=t.save_total_limit,
        load_best_model_at_end=True,
        metric_for_best_model="eval_loss",
        greater_is_better=False,
        seed=t.seed,
        data_seed=t.seed,
        report_to=tracker(cfg),
        disable_tqdm=False,
        dataloader_num_workers=0,
    )
    kwargs.update(overrides)
    return kwargs


def sft_config(cfg: CourseConfig, output_dir: str | Path, hw: Hardware | None = None, **overrides: Any):
    """``SFTConfig(**sft_config_kwargs(...))``: what ``make_trainer`` and notebook 03 train with."""
    from trl import SFTConfig

    return SFTConfig(**sft_config_kwargs(cfg, output_dir, hw, **overrides))


def sft_columns(dataset: "DatasetDict") -> "DatasetDict":
    """Only ``prompt``/``completion``: with a ``messages`` column present TRL would train on whole conversations."""
    return dataset.select_columns(["prompt", "completion"])


@dataclass
class Preflight:
    """What the pre-flight check found (notebook 03, "Pre-flight")."""

    table: Any  # pandas DataFrame: token, id, carries_loss
    pad_token: str
    eos_token: str
    pad_is_eos: bool
    eos_trained: bool
    loss_tokens: int
    total_tokens: int


def preflight(trainer: Any, tokenizer: Any, index: int = 0) -> Preflight:
    """Collate one training example exactly as the trainer will and show which tokens carry loss.

    Checks that the pad token is not EOS and that the final EOS is a training target (the model learns to stop).
    """
    import pandas as pd

    row = trainer.train_dataset[index]
    batch = trainer.data_collator([row])
    ids = batch["input_ids"][0].tolist()
    labels = batch["labels"][0].tolist()
    tokens = tokenizer.convert_ids_to_tokens(ids)
    table = pd.DataFrame({"token": tokens, "id": ids, "carries_loss": [label != -100 for label in labels]})
    trained = [i for i, label in zip(ids, labels) if label != -100]
    # The template may add a newline after EOS; what matters is that the answer's closing EOS is a target.
    return Preflight(
        table,
        tokenizer.pad_token,
        tokenizer.eos_token,
        tokenizer.pad_token_id == tokenizer.eos_token_id,
        tokenizer.eos_token_id in trained[-2:],
        len(trained),
        len(ids),
    )


def complete_checkpoints(output_dir: str | Path) -> list[Path]:
    """Checkpoints a resume may use, oldest first: those whose files were all written."""
    root = Path(output_dir)
    if not root.is_dir():
        return []
    found = []
    for path in root.iterdir():
        m = CHECKPOINT.match(path.name)
        if m and path.is_dir() and all((path / f).is_file() for f in COMPLETE_MARKERS):
            found.append((int(m.group(1)), path))
    return [p for _, p in sorted(found)]


def set_aside_incomplete_checkpoints(output_dir: str | Path) -> list[Path]:
    """Rename checkpoints a killed run left half-written, so neither resume nor rotation ever uses them."""
    root = Path(output_dir)
    complete = set(complete_checkpoints(root))
    moved = []
    for path in sorted(root.glob("checkpoint-*")) if root.is_dir() else []:
        if path.is_dir() and path not in complete:
            target = root / f"incomplete-{path.name}"
            shutil.rmtree(target, ignore_errors=True)
            os.replace(path, target)
            moved.append(target)
    return moved


def last_checkpoint(output_dir: str | Path) -> Path | None:
    done = complete_checkpoints(output_dir)
    return done[-1] if done else None


def loss_curve_callback(path: str | Path | None = None, live: bool = True) -> Any:
    """A TrainerCallback that collects train/validation loss, redraws a live plot in a notebook and saves a PNG."""
    from transformers import TrainerCallback

    # Defined here so that importing ragcourse.train does not import transformers.
    class _LossCurve(TrainerCallback):
        def __init__(self, path: str | Path | None = None, live: bool = True):
            self.path, self.live = path, live
            self.train: list[tuple[int, float]] = []
            self.eval: list[tuple[int, float]] = []
            self._handle = None

        def on_log(self, args, state, control, logs=None, **kwargs):
            if not state.is_world_process_zero or not logs:
                return
            if "loss" in logs:
                self.train.append((state.global_step, float(logs["loss"])))
            if "eval_loss" in logs:
                self.eval.append((state.global_step, float(logs["eval_loss"])))
            if self.live and _in_notebook():
                self._draw()

        def on_train_end(self, args, state, control, **kwargs):
            if state.is_world_process_zero and self.path is not None:
                from .plots import loss_curve

                fig = loss_curve(self.train, self.eval, self.path)
                import matplotlib.pyplot as plt

                plt.close(fig)

        def _draw(self):
            import matplotlib.pyplot as plt
            from IPython.display import display

            from .plots import loss_curve

            fig = loss_curve(self.train, self.eval)
            if self._handle is None:
                self._handle = display(fig, display_id=True)
            else:
                self._handle.update(fig)
            plt.close(fig)

    return _LossCurve(path, live)


class NonFiniteLossError(RuntimeError):
    """Training stopped on a NaN or infinite loss; the message names the likely cause and the fix (notebook 03)."""


def non_finite_loss_message(which: str, value: float, step: int, fp16: bool) -> str:
    """What a NaN/inf ``which`` ("training" or "validation") loss at ``step`` most likely means, and what to change."""
    head = f"The {which} loss is {value} at step {step}: training stopped, nothing after this point would learn."
    if fp16:
        return (
            f"{head} Cause: fp16 compute overflowed. fp16's largest value is 65,504, and models trained in bf16 "
            f"(Qwen2.5 among them) produce activations beyond it: NaN logits, then '!!!!' answers. Fix: compute in "
            f"fp32 (model.torch_dtype: float32 and quantization.bnb_4bit_compute_dtype: float32; slower, more "
            f"memory), or train on a GPU with native bf16 (compute capability 8.0 or newer: A10G, L4, A100, "
            f"RTX 30xx/40xx), where `auto` picks bf16."
        )
    return (
        f"{head} Cause: the updates diverged (a learning rate too high for this batch) or an example carries no "
        f"answer tokens. Fix: lower training.learning_rate (or add warmup_steps), and check the dataset's "
        f"completions in notebook 01."
    )


def stop_on_non_finite_loss() -> Any:
    """A TrainerCallback that stops the run on a NaN or infinite training or validation loss (notebook 03).

    The Trainer would carry on: fp16's loss scaler skips the steps whose gradients overflow, and by default
    (``logging_nan_inf_filter``) it logs the average of the finite losses in place of a NaN one, so the log shows
    ``loss 0`` or an old value while the adapter stops learning. The callback switches that filter off when training
    begins and raises :class:`NonFiniteLossError` at the first non-finite logged loss.
    """
    import math

    from transformers import TrainerCallback

    class _StopOnNonFiniteLoss(TrainerCallback):
        def _check(self, args: Any, state: Any, values: dict[str, Any] | None) -> None:
            for key, which in (("loss", "training"), ("eval_loss", "validation")):
                value = (values or {}).get(key)
                if value is not None and not math.isfinite(float(value)):
                    raise NonFiniteLossError(
                        non_finite_loss_message(
                            which, float(value), state.global_step, bool(getattr(args, "fp16", False))
                        )
                    )

        def on_train_begin(self, args, state, control, **kwargs):
            args.logging_nan_inf_filter = False  # the Trainer reads it at every step: a NaN is logged as NaN

        def on_log(self, args, state, control, logs=None, **kwargs):
            self._check(args, state, logs)

        def on_evaluate(self, args, state, control, metrics=None, **kwargs):
            self._check(args, state, metrics)

    return _StopOnNonFiniteLoss()


def _in_notebook() -> bool:
    from .plots import can_draw_live  # Jupyter, Colab and VS Code kernels alike

    return can_draw_live()


def score_loss_positions_only() -> bool:
    """Let TRL's fused LM head skip the positions that carry no loss on every device, not only under Triton.

    TRL 1.16 computes the loss through a chunked LM-head kernel. Where Triton runs it (CUDA/XPU) only positions with a
    label are scored; elsewhere every position is, because on Neuron a changing number of positions would recompile
    the graph. A CPU has no such cost, and with the loss on the answer only (~8% of the tokens here) scoring every
    position is half of a training step (benchmarks/training_throughput.py: 2x faster, identical loss). TRL is pinned,
    so the private name is checked by a test; returns False (and changes nothing) where it is missing.
    """
    try:
        import trl.trainer.utils as trl_utils
    except ImportError:
        return False
    original = getattr(trl_utils, "_use_triton", None)
    if original is None:
        return False
    if not getattr(original, "_ragcourse", False):

        def compact(device: Any) -> bool:
            return device.type == "cpu" or original(device)

        compact._ragcourse = True  # type: ignore[attr-defined]
        compact._original = original  # type: ignore[attr-defined]  # TRL's own choice (benchmarks compare both)
        trl_utils._use_triton = compact
    return True


def trainer_callbacks(cfg: CourseConfig) -> list[Any]:
    """The course's ``TrainerCallback``s (notebook 03, section 5): early stopping on validation loss
    (``training.early_stopping_patience`` evaluations without improvement) and a stop at the first NaN/inf loss."""
    from transformers import EarlyStoppingCallback

    return [
        EarlyStoppingCallback(early_stopping_patience=cfg.training.early_stopping_patience),
        stop_on_non_finite_loss(),
    ]


def keep_adapters_fp32(trainer: Any) -> int:
    """Cast the trainable weights back to fp32 unless the run computes in bf16 (notebook 03, section 5).

    TRL casts the adapters of a quantized model to bf16 (the QLoRA paper's bf16 setting). With fp32 compute (CPU) or
    fp16 mixed precision (T4) the trainable weights must stay fp32: fp16 AMP refuses to unscale bf16 gradients, and
    a CPU has no fast bf16 path anyway. Returns how many tensors were cast.
    """
    import torch

    if trainer.args.bf16:
        return 0
    n = 0
    for param in trainer.model.parameters():
        if param.requires_grad and param.dtype != torch.float32:
            param.data = param.data.float()
            n += 1
    return n


def make_trainer(
    cfg: CourseConfig,
    model: Any,
    tokenizer: Any,
    dataset: "DatasetDict",
    output_dir: str | Path,
    callbacks: list[Any] | None = None,
    hw: Hardware | None = None,
    **overrides: Any,
):
    """``trl.SFTTrainer`` on the prompt/completion columns, with early stopping on validation loss.

    Notebook 03 (section 5) writes out these very calls.
    """
    from trl import SFTConfig, SFTTrainer

    ensure_pad_token(tokenizer)
    score_loss_positions_only()
    data = sft_columns(dataset)
    trainer = SFTTrainer(
        model=model,
        args=SFTConfig(**sft_config_kwargs(cfg, output_dir, hw, **overrides)),
        train_dataset=data["train"],
        eval_dataset=data["validation"],
        processing_class=tokenizer,
        callbacks=[*trainer_callbacks(cfg), *(callbacks or [])],
    )
    keep_adapters_fp32(trainer)
    return trainer


class ResumeRefused(CourseError, ValueError):
    """``--resume`` found checkpoints made from other inputs than this run's."""


FINGERPRINT = "fingerprint.json"


def prepare_checkpoints(trainer: Any, cfg: CourseConfig, resume: bool = False) -> Path | None:
    """Get the checkpoint folder ready for ``trainer.train()`` (notebook 03, section 6); returns the checkpoint to
    resume from, or None.

    A fresh run removes an earlier run's checkpoints and records the adapter's inputs
    (``artifacts.fingerprint(cfg, "adapter")``). With ``resume``, half-written checkpoints are set aside and the last
    *complete* one is returned, unless it was made from another dataset or other settings: that is refused with the
    reason.
    """
    from .artifacts import difference
    from .artifacts import fingerprint as inputs_of

    fingerprint = inputs_of(cfg, "adapter")

    output_dir = Path(trainer.args.output_dir)
    checkpoint = None
    if resume:
        if trainer.is_world_process_zero():  # one process renames; the others would race it for the same folders
            set_aside_incomplete_checkpoints(output_dir)
        trainer.accelerator.wait_for_everyone()
        checkpoint = last_checkpoint(output_dir)
        if checkpoint is not None:
            try:
                saved = json.loads((output_dir / FINGERPRINT).read_text())
            except (OSError, ValueError):
                saved = None
            reason = difference(saved, fingerprint) if saved is not None else "they carry no record of their inputs"
            if reason:
                raise ResumeRefused(
                    f"--resume refused: the checkpoints in {output_dir} were made from other inputs "
                    f"({reason}). Train without --resume to start over."
                )
        print(f"resuming from {checkpoint}" if checkpoint else "no complete checkpoint: starting from the beginning")
    if checkpoint is None and trainer.is_world_process_zero():
        old = sorted(output_dir.glob("*checkpoint-*"))
        if old:  # a fresh run: an earlier run's checkpoints would mix with this one's in rotation and "best" tracking
            print(f"starting fresh: removing {len(old)} checkpoint(s) of an earlier run in {output_dir}")
            for path in old:
                shutil.rmtree(path, ignore_errors=True)
        output_dir.mkdir(parents=True, exist_ok=True)
        (output_dir / FINGERPRINT).write_text(json.dumps(fingerprint, indent=2))
    return checkpoint


def run_training(trainer: Any, cfg: CourseConfig, resume: bool = False) -> Any:
    """``prepare_checkpoints`` then ``trainer.train()``, from the last complete checkpoint when ``resume``
    (``ragcourse train [--resume]``; notebook 03, section 6, writes the two calls out)."""
    checkpoint = prepare_checkpoints(trainer, cfg, resume)
    return trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)


def save_adapter(
    trainer: Any,
    tokenizer: Any,
    cfg: CourseConfig,
    target: Path | None = None,
    loss_png: Path | None = None,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Adapter + tokenizer (with chat template) + loss history + manifest, written atomically."""
    from .artifacts import atomic_dir, write_manifest

    target = target or cfg.artifact_dir("adapter")
    if not trainer.is_world_process_zero():
        return target
    with atomic_dir(target) as tmp:
        trainer.model.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        history = [h for h in trainer.state.log_history]
        (tmp / "log_history.json").write_text(json.dumps(history, indent=2))
        if loss_png is not None and Path(loss_png).is_file():
            shutil.copy(loss_png, tmp / "loss_curve.png")
        write_manifest(
            tmp,
            cfg,
            "adapter",
            best_checkpoint=trainer.state.best_model_checkpoint,
            best_eval_loss=trainer.state.best_metric,
            global_step=trainer.state.global_step,
            num_processes=trainer.args.world_size,
            **(extra or {}),
        )
    return target


def losses(log_history: list[dict[str, Any]]) -> tuple[list[tuple[int, float]], list[tuple[int, float]]]:
    """(step, train loss) and (step, validation loss) pairs from ``trainer.state.log_history``."""
    train = [(h["step"], h["loss"]) for h in log_history if "loss" in h]
    evals = [(h["step"], h["eval_loss"]) for h in log_history if "eval_loss" in h]
    return train, evals


def train(cfg: CourseConfig, dataset: "DatasetDict", resume: bool = False, live_plot: bool = False) -> Path:
    """The whole of notebook 03 without the teaching: model, trainer, training on ``dataset``, saved adapter.

    ``pipeline.ensure(cfg, "adapter")`` calls it with a current dataset; under ``accelerate launch`` every process does.
    """
    from .models import load_tokenizer

    hw = detect_hardware()
    tokenizer = load_tokenizer(cfg)
    model = load_model_for_training(cfg, hw)
    plot_path = cfg.output_dir / "plots" / "loss_curve.png"
    curve = loss_curve_callback(plot_path, live=live_plot)
    trainer = make_trainer(cfg, model, tokenizer, dataset, cfg.output_dir / "checkpoints", callbacks=[curve], hw=hw)
    run_training(trainer, cfg, resume=resume)
    return save_adapter(trainer, tokenizer, cfg, loss_png=plot_path)
