"""sentence-transformers' trainer (ST 6.2 ``SentenceTransformerTrainer``) on the CLIP demo recipe with the image tower
frozen: the "st" run of bench/locked_tower.py.

The same work as ``train.py fit --config configs/demo/clip.yaml --model.init_args.lock_image true``, every value read
from that recipe: the same initial weights of its random-init CLIP (``build_model`` seeds as the recipe does and saves
with litembed's exporter, which ST loads as any CLIP directory), the same 2,500 training pairs (the datamodule's own
generation and split of ``builtin:shapes``), columns (image, caption) with the image as the anchor,
``MultipleNegativesRankingLoss`` with CLIP's learnable temperature (clamped to 100 as litembed does), batches of 64
without duplicates (``BatchSamplers.NO_DUPLICATES``), fused AdamW at lr 5e-4 with weight decay 0.1, cosine schedule
after 10 % warmup, gradient norm clipped at 1, seed 42, fp32 on the CPU without DataLoader workers (litembed's CPU
default). The vision transformer and projection are frozen as an ST user freezes them (``requires_grad_(False)``, eval
mode), so ST decodes, preprocesses and embeds every image of every batch. No evaluation, no checkpoint, nothing saved.
What still differs: HF's Trainer puts the frozen tower back in train mode at every step (CLIP has no dropout or batch
norm, so the values are the same) and decays the logit scale (litembed decays no scalar); the process imports Lightning
for litembed's data split (about 0.6 s).

Training pairs/s is measured as litembed's ``TrainingLog`` callback measures it: rows of the last 20 steps per
wall-clock second at every 10th step (the recipe's ``log_every_n_steps``), reset at each epoch start. Prints one JSON
line: the median of those rates, ST's own ``train_samples_per_second`` (the whole ``train()`` call) and, every 10th
step, the mean loss since the previous one (what litembed logs as ``train/loss``).

    python bench/st_clip.py /tmp/clip-init --epochs 3    # builds the model into /tmp/clip-init first if it is missing
"""

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from collections import deque

import torch
import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
RECIPE = os.path.join(ROOT, "configs", "demo", "clip.yaml")
WINDOW = 20  # steps per rate, as callbacks.training_log.TrainingLog


def recipe() -> dict:
    with open(RECIPE) as f:
        return yaml.safe_load(f)


def build_model(directory: str) -> None:
    """Save the recipe's random-init CLIP where ``SentenceTransformer(directory)`` loads it: seeded as ``train.py fit``
    seeds it, so its weights are the ones litembed starts from."""
    from lightning_modules.clip_backends import TransformersClip

    config = recipe()
    torch.manual_seed(config["seed_everything"])
    TransformersClip(**config["model"]["init_args"]["encoder"]["init_args"]).save(directory)


def training_pairs(data_args: dict):
    """The training split litembed fits on: the datamodule's generation and validation carve, loss columns only.

    Args:
        data_args: the recipe's ``data.init_args`` (``ImageCaptionDataModule``'s arguments).
    """
    from datamodules.loading import load_splits
    from datamodules.splits import pick_splits
    from datamodules.image_captions import ImageCaptionDataModule

    dm = ImageCaptionDataModule(**data_args)
    h = dm.hparams
    train, _, _ = pick_splits(load_splits(h.dataset, dm.builtins(), h.data_files), h.dataset, h.train_split,
                              h.val_split, h.test_split, h.val_size, h.max_train_rows, h.max_eval_rows, h.seed)
    return train.select_columns(dm.columns)  # (image, caption): the image is the anchor, decoded to PIL on access


def train(model_dir: str, epochs: int, dataset: str | None = None) -> dict:
    """Fit the CLIP in ``model_dir`` with ST's trainer, its image tower frozen, as the recipe fits it.

    Args:
        model_dir: a directory ``build_model`` wrote.
        epochs: passes over the training pairs.
        dataset: the recipe's data from elsewhere (``--data.init_args.dataset``), e.g. an imagefolder of JPEG files.

    Returns:
        ``pairs_per_s`` (median rate), ``train_samples_per_second`` (ST's), ``losses`` (every 10th step's window
        mean), ``steps``.
    """
    from sentence_transformers import (SentenceTransformer, SentenceTransformerTrainer,
                                       SentenceTransformerTrainingArguments)
    from sentence_transformers.base.sampler import BatchSamplers
    from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss
    from transformers import TrainerCallback

    from lightning_modules.clip import MAX_LOGIT_SCALE

    class LearnedTemperatureLoss(MultipleNegativesRankingLoss):
        """ST's loss with CLIP's ``logit_scale.exp()`` as its scale (litembed's ``learn_logit_scale``); it also
        notes the batch's rows and loss for ``Log``."""

        rows, value = 0, None

        def compute_loss_from_embeddings(self, embeddings, labels):
            logit_scale = self.model[0].model.logit_scale
            with torch.no_grad():  # litembed clamps after each step; here before the next use, the same values
                logit_scale.clamp_(0, MAX_LOGIT_SCALE)
            self.scale, self.rows = logit_scale.exp(), embeddings[0].shape[0]
            loss = super().compute_loss_from_embeddings(embeddings, labels)
            self.value = loss.detach()
            return loss

    class Log(TrainerCallback):
        """Every ``every``-th step: the rate of the last ``WINDOW`` steps and the mean loss of the steps since the
        last one, as litembed logs them."""

        def __init__(self, loss: LearnedTemperatureLoss, every: int) -> None:
            self.loss, self.every, self.rates, self.losses = loss, every, [], []
            self.times: deque[tuple[float, int]] = deque(maxlen=WINDOW + 1)
            self.window_sum, self.window_steps = 0.0, 0  # summed on the device: no sync per step

        def on_epoch_begin(self, args, state, control, **kwargs) -> None:
            self.times.clear()

        def on_step_end(self, args, state, control, **kwargs) -> None:
            self.times.append((time.perf_counter(), self.loss.rows))
            self.window_sum, self.window_steps = self.window_sum + self.loss.value, self.window_steps + 1
            if state.global_step % self.every:
                return
            self.losses.append(float(self.window_sum) / self.window_steps)
            self.window_sum, self.window_steps = 0.0, 0
            if len(self.times) > 1:
                self.rates.append(sum(n for _, n in list(self.times)[1:]) / (self.times[-1][0] - self.times[0][0]))

    config = recipe()
    seed, module, data = config["seed_everything"], config["model"]["init_args"], config["data"]["init_args"]
    data = {**data, **({"dataset": dataset} if dataset else {})}
    model = SentenceTransformer(model_dir, device="cpu")
    clip = model[0].model  # the HF CLIPModel inside ST's multimodal Transformer module
    for tower in (clip.vision_model, clip.visual_projection):
        tower.requires_grad_(False).eval()
    loss = LearnedTemperatureLoss(model)
    log = Log(loss, config["trainer"]["log_every_n_steps"])
    with tempfile.TemporaryDirectory() as out:
        args = SentenceTransformerTrainingArguments(
            output_dir=out, num_train_epochs=epochs, per_device_train_batch_size=data["batch_size"],
            learning_rate=module["lr"], weight_decay=module["weight_decay"], lr_scheduler_type=module["lr_schedule"],
            warmup_steps=module["warmup_ratio"],  # transformers 5: a float below 1 is a ratio of all steps
            max_grad_norm=config["trainer"]["gradient_clip_val"], optim="adamw_torch_fused", seed=seed,
            batch_sampler=BatchSamplers.NO_DUPLICATES, dataloader_num_workers=0, use_cpu=True,
            eval_strategy="no", save_strategy="no", report_to="none", disable_tqdm=True,
            logging_steps=config["trainer"]["log_every_n_steps"])
        trainer = SentenceTransformerTrainer(model=model, args=args, train_dataset=training_pairs(data), loss=loss,
                                             callbacks=[log])
        metrics = trainer.train().metrics
    return {"pairs_per_s": statistics.median(log.rates), "losses": log.losses, "steps": trainer.state.global_step,
            "train_samples_per_second": metrics["train_samples_per_second"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("model_dir", help="the recipe's random-init CLIP (built here first if missing)")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--dataset", help="the data litembed's run reads (--data.init_args.dataset); default the recipe's")
    args = parser.parse_args()
    if not os.path.isdir(args.model_dir):
        build_model(args.model_dir)
    print(json.dumps(train(args.model_dir, args.epochs, args.dataset)), flush=True)


if __name__ == "__main__":
    main()
