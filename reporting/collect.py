"""What a model card says about a run.

At export, ``gather_facts`` records what only the live run knows (the model, its data, the configuration, the versions,
which checkpoint was exported) in ``<run>/report.json``; ``build_card`` combines that file with the run's
``metrics.csv``, so the card and the plots can be rebuilt from a run folder alone (``python -m reporting <run>``), and
every number in the card is a logged value of the exported checkpoint.
"""

import importlib.metadata
import importlib.util
import inspect
import json
import os
import platform
import random
import statistics
import subprocess
import sys
from collections import Counter

import torch
import yaml

from cli_errors import import_object
from cli_options import SECTIONS, option_defaults
from lightning_modules.lora import export_sentence
from datamodules.images import ImageLoadError, image_header
from lightning_modules.hub import hub_model_name
from metrics.keys import PRIMARY_METRIC, parse_metric_key, stage_of
from reporting.card import CardData, DatasetInfo, EvalSet, TrainingLog
from reporting.metrics_log import Evaluation, MetricsLog, read_metrics

REPORT = "report.json"
PRINT_ARCHITECTURE = ("import sys; from sentence_transformers import SentenceTransformer; "
                      "print(SentenceTransformer(sys.argv[1], device='cpu'))")
DISTRIBUTED_ENV = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "NODE_RANK", "GROUP_RANK", "MASTER_ADDR",
                   "MASTER_PORT", "TORCHELASTIC_RUN_ID")
STATS_ROWS = 1000
VERSIONS = {"litembed": "litembed", "Sentence Transformers": "sentence-transformers", "Transformers": "transformers",
            "PyTorch": "torch", "Lightning": "lightning", "Datasets": "datasets", "Tokenizers": "tokenizers",
            "open_clip": "open_clip_torch"}


def gather_facts(trainer, module, datamodule, run_dir: str, export_dir: str, exported_step: int,
                 checkpoint: str | None, fit_seconds: float | None, options: dict) -> dict:
    """Everything the card needs that ``metrics.csv`` does not hold, as JSON-ready values (no absolute paths).
    Called on rank 0 alone: nothing here may be a collective (``trainer.log_dir`` is one; the caller passes it in).
    ``exported_step``: the optimizer steps the exported weights took (the validation logged at that step evaluated
    them, if one did); ``options``: ``title``, ``model_id``, ``language``, ``license``, ``usage_images``
    (``--export.*``)."""
    encoder = module.encoder
    clip = is_clip(type(module))
    library = export_library(export_dir)  # written before the facts are gathered
    losses = _losses(module.loss)
    steps_per_epoch = max(1, -(-trainer.num_training_batches // trainer.accumulate_grad_batches)) if (
        trainer.num_training_batches not in (None, float("inf"))) else None
    # a mixture's sources, each a datamodule of its own (datamodules.mixture), else the one dataset
    parts = dict(getattr(datamodule, "sources", None) or {None: datamodule})
    weighted = None not in parts and datamodule.hparams.get("sampling") == "weighted"
    weights = {name: part.mixture_weight for name, part in parts.items()} if weighted else {}
    trains, evals, widget = [], [], None
    for name, part in parts.items():
        heads = {split: part.head(split, STATS_ROWS) for split in ("train", "validation", "test")}
        infos = {split: _dataset_info(part, split, head, source_name=name) for split, head in heads.items()}
        if infos["train"]:
            if weights:
                infos["train"]["weight"] = weights[name] / sum(weights.values())
            if name in getattr(module, "source_losses", {}):  # the source's own loss
                infos["train"]["loss"] = _losses(module.source_losses[name])
                infos["train"]["loss_parameters"] = _shown(module.loss_parameters(name))
            trains.append(infos["train"])
        # both may come from one dataset: say which split
        evals += [{**info, "name": f"{info['name']} ({split})"} for split in ("validation", "test")
                  if (info := infos[split])]
        if widget is None:  # sentence-transformers': the (first) evaluation data, else the training data
            widget_split = "validation" if infos["validation"] else "train"
            widget = widget_examples(heads[widget_split][0], infos[widget_split]) if infos[widget_split] else []
    train = trains[0] if trains else None
    return {
        **_model_facts(getattr(encoder, "name", None), clip, library, losses, options),
        "max_seq_length": getattr(encoder, "max_length", None) or getattr(
            getattr(encoder, "processor", None), "max_length", None),
        "output_dim": encoder.embedding_dim,
        "similarity": "Cosine Similarity",
        "architecture": _architecture(export_dir) if library == "sentence-transformers" else None,
        "usage_sentences": _usage_sentences(evals[0] if evals else train),
        "widget": widget or [],
        "train_datasets": trains,
        "eval_datasets": evals,
        "losses": losses,
        "methods": _methods(module.gradcache_chunk_size) + (["LoRA"] if getattr(encoder, "adapter_summary", None)
                                                            else []),
        "adapters": (f"{encoder.adapter_summary}. {export_sentence(options.get('adapters', 'merged'))}"
                     if getattr(encoder, "adapter_summary", None) else None),
        "loss_parameters": _shown(module.loss_parameters()),
        "hyperparameters": _hyperparameters(os.path.join(run_dir, "config.yaml")),
        "versions": _versions(clip),
        "hardware": _hardware(trainer, fit_seconds),
        "steps_per_epoch": steps_per_epoch,
        "exported_step": exported_step,
        "checkpoint": os.path.relpath(checkpoint, run_dir) if checkpoint else None,
        "export_dir": os.path.relpath(export_dir, run_dir),
        "usage_path": _usage_path(export_dir),
        "monitor": getattr(trainer.checkpoint_callback, "monitor", None),
    }


def _model_facts(given: str | None, clip: bool, library: str, losses: list[str], options: dict) -> dict:
    """The card's title, hub metadata and base model, from the name the user gave the base model."""
    hub_id = hub_model_name(given)
    base_name = hub_id or (os.path.basename(os.path.normpath(given)) if given else None)
    return {
        "title": options.get("title") or f"{base_name or 'A ' + ('CLIP' if clip else 'text') + ' model'} fine-tuned "
                 f"with litembed" + (" (Matryoshka)" if "MatryoshkaLoss" in losses else ""),
        "model_id": options.get("model_id"),
        "language": options.get("language") or ["en"],
        "license": options.get("license") or "apache-2.0",
        "usage_images": options.get("usage_images") or None,
        "base_model": hub_id or base_name,
        "base_model_on_hub": hub_id is not None,
        "model_type": "open_clip" if library == "open_clip" else "Sentence Transformer",
        "library_name": library,
        "clip": clip,
    }


def _usage_path(export_dir: str) -> str:
    """The usage snippet's path when no --export.model_id names a hub repository: relative to the working folder."""
    return os.path.relpath(export_dir) if not os.path.relpath(export_dir).startswith("..") else "path/to/model"


def facts_from_run_folder(run_dir: str) -> dict:
    """The facts ``gather_facts`` records, as far as a run folder without ``report.json`` still holds them (the card
    step failed before writing it, the process was killed after the export, or the file was deleted): the model, loss,
    card options and hyperparameters from ``config.yaml``; the library, dimension and architecture from the export.
    What only the training process knew is left out and named under ``"not_recorded"``; with no record of which
    validation evaluated the exported weights, the card shows the test metrics (those of the exported weights) alone.

    Raises:
        ValueError: ``run_dir`` is not a run folder (no ``config.yaml``), or it holds no export.
    """
    config_path = os.path.join(run_dir, "config.yaml")
    if not os.path.isfile(config_path):
        raise ValueError(f"{run_dir} is not a run folder: it holds neither {REPORT} nor config.yaml. A run folder is "
                         f"what train.py fit writes (runs/<name>/version_<n>): config.yaml, metrics.csv, {REPORT} and "
                         f"the exported model (model/); pass one")
    with open(config_path) as f:
        config = yaml.safe_load(f) or {}
    model = config.get("model") or {}
    args = model.get("init_args") or {}
    # --export.*; a run of an earlier version had --card.* and --model.init_args.export_dir
    export = config.get("export") or {**(config.get("card") or {}), "dirpath": args.get("export_dir")}
    if export.get("dirpath") is None:
        raise ValueError(f"{run_dir} exported no model (--export.dirpath null): there is no card to write; pass the "
                         f"folder of a fit run that exported (runs/<name>/version_<n>)")
    export_dir = os.path.join(run_dir, export["dirpath"])  # an absolute dirpath stays itself
    if not os.path.isdir(export_dir):
        raise ValueError(f"{run_dir} holds no export {export_dir} and no {REPORT}: the fit did not reach its export "
                         f"(stopped, failed or --trainer.fast_dev_run); there is no card to write; pass the folder of "
                         f"a fit run that exported (runs/<name>/version_<n>), or finish this one with train.py fit "
                         f"--ckpt_path {run_dir}")
    from inference.models import load_model  # torch and the model libraries, for this rebuild only

    library = export_library(export_dir)
    clip = is_clip(import_object(model["class_path"])) if model.get("class_path") else False
    encoder = (args.get("encoder") or {}).get("init_args") or {}
    loss = _instantiate(args.get("loss"))
    losses = _losses(loss) if loss is not None else []
    not_recorded = ["the datasets' statistics and samples", "the versions", "the hardware and hours",
                    "which validation evaluated the exported weights"] + ([] if losses else ["the loss (the default)"])
    if encoder.get("model_name_or_path") is None:
        not_recorded.append("the base model's name")
    return {
        **_model_facts(encoder.get("model_name_or_path"), clip, library, losses, export),
        "max_seq_length": encoder.get("max_length"),
        "output_dim": load_model(export_dir, "cpu").dim,
        "similarity": "Cosine Similarity",
        "architecture": _architecture(export_dir) if library == "sentence-transformers" else None,
        "usage_sentences": [],
        "widget": [],
        "train_datasets": [],
        "eval_datasets": [],
        "losses": losses,
        "methods": _methods(args.get("gradcache_chunk_size")),
        "loss_parameters": _shown(loss.get_config_dict()) if hasattr(loss, "get_config_dict") else {},
        "hyperparameters": _hyperparameters(config_path),
        "versions": {},
        "hardware": {},
        "steps_per_epoch": None,
        "exported_step": None,
        "checkpoint": None,
        "export_dir": os.path.relpath(export_dir, run_dir),
        "usage_path": _usage_path(export_dir),
        "monitor": _monitor(config.get("trainer") or {}),
        "not_recorded": not_recorded,
    }


def _instantiate(node):
    """A ``class_path``/``init_args`` node of ``config.yaml`` as the object it configured (nested ones too)."""
    if not (isinstance(node, dict) and "class_path" in node):
        return node
    arguments = {key: _instantiate(value) for key, value in (node.get("init_args") or {}).items()}
    return import_object(node["class_path"])(**arguments)


def _methods(gradcache_chunk_size: int | None) -> list[str]:
    """The training methods beyond the loss that the card cites (``CardData.methods``)."""
    return ["GradCache"] if gradcache_chunk_size is not None else []


def export_library(export_dir: str) -> str:
    """Which library loads the export, from its format: sentence-transformers' folders have ``modules.json``."""
    return "sentence-transformers" if os.path.isfile(os.path.join(export_dir, "modules.json")) else "open_clip"


def is_clip(module_class: type) -> bool:
    """A CLIP dual encoder (images and texts): the card describes both towers and cites CLIP."""
    from lightning_modules.clip import CLIPEmbeddingModule

    return issubclass(module_class, CLIPEmbeddingModule)


def _monitor(trainer: dict) -> str | None:
    """The metric the configured checkpoint callback chose the exported weights by, if one did."""
    callbacks = trainer.get("callbacks") or []
    for callback in callbacks if isinstance(callbacks, list) else [callbacks]:
        monitor = (callback.get("init_args") or {}).get("monitor") if isinstance(callback, dict) else None
        if monitor:
            return monitor
    return None


def build_card(run_dir: str, facts: dict | None = None, log: MetricsLog | None = None,
               plots: list[str] = ()) -> CardData:
    """The card of the model exported from ``run_dir``: ``report.json`` + the metrics the run logged."""
    if facts is None:
        with open(os.path.join(run_dir, REPORT)) as f:
            facts = json.load(f)
    log = log or read_metrics(run_dir)
    primary = _primary(facts.get("monitor"))
    # the validation logged at the exported weights' step is the one that evaluated them
    exported = next((e for e in reversed(log.evaluations) if not e.base and e.step == facts["exported_step"]), None)
    evaluations = _eval_sets(log, exported, primary)
    hyper = facts["hyperparameters"]
    return CardData(
        title=facts["title"], base_model=facts["base_model"], base_model_on_hub=facts["base_model_on_hub"],
        model_type=facts["model_type"], library_name=facts["library_name"], clip=facts["clip"],
        max_seq_length=facts["max_seq_length"], output_dim=facts["output_dim"], similarity=facts["similarity"],
        architecture=facts["architecture"], usage_model_id=facts["model_id"] or facts["usage_path"],
        language=facts["language"], license=facts["license"],
        usage_sentences=facts["usage_sentences"], widget=facts.get("widget", []),
        usage_images=facts.get("usage_images"),
        train_datasets=[DatasetInfo(**d) for d in facts["train_datasets"]],
        eval_datasets=[DatasetInfo(**d) for d in facts["eval_datasets"]],
        losses=facts["losses"], methods=facts.get("methods", []), loss_parameters=facts["loss_parameters"],
        adapters=facts.get("adapters"), evaluations=evaluations,
        training_log=_training_log(log, exported, facts["steps_per_epoch"], primary),
        hyperparameters=hyper["all"], non_default_hyperparameters=hyper["non_default"],
        versions=facts["versions"], plots=[(_plot_caption(p), os.path.relpath(p, os.path.join(
            run_dir, facts["export_dir"]))) for p in plots],
        hardware=facts["hardware"],
    )


def _losses(loss) -> list[str]:
    """Class names, outer first: a MatryoshkaLoss names the loss it wraps too (tags ``loss:…``, citations)."""
    names = [type(loss).__name__]
    inner = getattr(loss, "loss", None)
    return names + (_losses(inner) if inner is not None else [])


def _primary(monitor: str | None) -> str:
    """The metric shown in bold and in the training log: the one the best checkpoint was chosen by (the bge seed's
    map@100), else nDCG@10."""
    if monitor and stage_of(monitor) == "val":
        try:
            return parse_metric_key(monitor).metric
        except ValueError:  # a validation value that is no retrieval metric (a loss): the card's default
            pass
    return PRIMARY_METRIC


def _eval_sets(log: MetricsLog, exported: Evaluation | None, primary: str) -> list[EvalSet]:
    """One set per evaluation task (and Matryoshka dim) of the exported weights' validation, then the test sets."""
    sets = []
    for stage, metrics in (("validation", exported.metrics if exported else {}), ("test", log.test)):
        grouped: dict[str, dict[str, float]] = {}
        for key, value in metrics.items():
            parsed = parse_metric_key(key)
            grouped.setdefault(parsed.set_name, {})[parsed.metric] = value
        order = [parse_metric_key(k).set_name for k in log.primary_keys(primary)]  # largest dim first, task order
        for name, values in sorted(grouped.items(), key=lambda item: order.index(item[0]) if item[0] in order
                                   else len(order)):
            values = dict(sorted(values.items(), key=lambda item: _metric_order(item[0])))
            label = name or ("eval" if stage == "validation" else "test")
            if stage == "test" and any(s.name == label for s in sets):
                label = f"test {label}"
            sets.append(EvalSet(name=label, metrics=values, primary=primary, split=stage))
    return sets


def _metric_order(metric: str) -> tuple:
    """sentence-transformers' order: accuracy, precision, recall at 1, 3, 5, 10, then nDCG, MRR, MAP."""
    name, _, k = metric.partition("@")
    family = name.split("_")[-1]
    order = ("accuracy", "precision", "recall", "ndcg", "mrr", "map")
    return (order.index(family) if family in order else len(order), int(k) if k.isdigit() else 0, metric)


def _training_log(log: MetricsLog, exported: Evaluation | None, steps_per_epoch: int | None,
                  primary: str) -> TrainingLog:
    """sentence-transformers' "Training Logs" table: the base model and the test as ``-1`` rows, a row per logged
    step with the training loss and each validation set's primary metric, the exported checkpoint's row in bold."""
    val_keys = log.primary_keys(primary)
    test_keys = [k for k in log.test if parse_metric_key(k).metric == primary]
    columns = ["Training Loss"] + val_keys + [f"test {k}" if k in val_keys else k for k in test_keys]
    width = len(columns) - 1
    steps: dict[int, list] = {}
    for point in log.train:
        row = steps.setdefault(point.step, [None] * (width + 1))
        row[0] = point.loss
    rows = []
    base = [e for e in log.evaluations if e.base]
    if base:
        rows.append(("-1", "-1", [None] + [base[0].metrics.get(k) for k in val_keys] + [None] * len(test_keys)))
    for evaluation in log.evaluations:
        if not evaluation.base:
            row = steps.setdefault(evaluation.step, [None] * (width + 1))
            for i, key in enumerate(val_keys):
                row[1 + i] = evaluation.metrics.get(key)
    bold = None
    for step in sorted(steps):
        epoch = round(step / steps_per_epoch, 4) if steps_per_epoch else "-"
        if exported is not None and step == exported.step:
            bold = len(rows)
        rows.append((epoch, step, steps[step][:1 + len(val_keys)] + [None] * len(test_keys)))
    if test_keys:
        rows.append(("-1", "-1", [None] * (1 + len(val_keys)) + [log.test[k] for k in test_keys]))
    return TrainingLog(columns=columns, rows=rows, bold_row=bold)


def _dataset_info(datamodule, split: str, head: tuple[list[dict], int | None] | None,
                  source_name: str | None = None) -> dict | None:
    """Name, size, columns, statistics of the first rows and three samples of one split (``DatasetInfo`` fields);
    ``head``: ``datamodule.head(split, STATS_ROWS)``; ``source_name``: the name of a mixture's source, which names the
    dataset first (``qa (stdlib-docstrings)``)."""
    if head is None:
        return None
    rows, size = head
    source = datamodule.hparams.dataset
    hub_id = None
    if source.startswith("builtin:"):
        name = source.removeprefix("builtin:")
    elif os.path.exists(source):
        name = os.path.basename(os.path.normpath(source))
    else:
        hub_id, name = source, source.split("/")[-1]
    if source_name is not None:
        name = source_name if name == source_name else f"{source_name} ({name})"
    image_column = datamodule.hparams.get("image_column")
    base_dir = getattr(datamodule, "base_dir", None)
    columns = datamodule.split_columns(split)
    types, details, shown = {}, {}, {}
    for column in columns:
        values = [row[column] for row in rows]
        if column == image_column:
            all_headers = [_image_header(v, base_dir) for v in values]
            headers = [h for h in all_headers if h is not None]
            unreadable = len(all_headers) - len(headers)
            formats = Counter(h[0] for h in headers)
            types[column] = f"image ({', '.join(formats) or 'unreadable'})"
            modes, sizes = Counter(h[1] for h in headers), Counter(h[2] for h in headers)
            details[column] = [f"unreadable (skipped in training): {unreadable} of {len(all_headers)}"] if (
                unreadable) else []
            if headers:
                (w, h), count = sizes.most_common(1)[0]
                details[column] += [f"mode: {', '.join(f'{m} ({n})' for m, n in modes.most_common())}",
                                    f"most common size: {w}×{h} ({count} of {len(headers)})",
                                    f"width: {min(s[0] for s in sizes)}–{max(s[0] for s in sizes)} px",
                                    f"height: {min(s[1] for s in sizes)}–{max(s[1] for s in sizes)} px"]
            shown[column] = [f"<{h[0]} image mode={h[1]} size={h[2][0]}x{h[2][1]}>" if h else "<unreadable image>"
                             for h in all_headers[:3]]
        elif all(isinstance(v, str) for v in values):
            lengths = [len(v) for v in values]
            types[column] = "string"
            details[column] = [f"min: {min(lengths)} characters", f"mean: {statistics.fmean(lengths):.2f} characters",
                               f"max: {max(lengths)} characters"] if lengths else []
            shown[column] = values[:3]
        else:
            types[column] = type(values[0]).__name__ if values else "unknown"
            shown[column] = [str(v) for v in values[:3]]
    return {"name": name, "hub_id": hub_id, "revision": None, "size": size, "columns": columns, "types": types,
            "details": details, "samples": [{c: shown[c][i] for c in columns} for i in range(min(3, len(rows)))],
            "stats_rows": len(rows)}


def _image_header(value, base_dir: str | None) -> tuple[str, str, tuple[int, int]] | None:
    """An image's (format, mode, size), or None for one that cannot be read: training skips it
    (``--data.init_args.on_bad_image skip``), and the card counts it instead of failing on it."""
    try:
        return image_header(value, base_dir=base_dir)
    except (ImageLoadError, OSError):
        return None


def widget_examples(rows: list[dict], info: dict, examples: int = 5, texts: int = 4, seed: int = 0) -> list[dict]:
    """The hub widget's examples by sentence-transformers' rule (``set_widget_examples``): the ``examples`` rows whose
    texts are shortest together (rows with an empty text skipped), each filled up to ``texts`` texts from the
    shortest rows left (their second text, the first may be another query), the first text as the source and the rest
    shuffled. Only text columns count: a CLIP run's widget compares captions, as the hub's sentence-similarity widget
    (text only) does for sentence-transformers' CLIP cards. ST samples 1000 random rows; these are the split's first
    ``STATS_ROWS`` (a stream has no random access), and the shuffle is seeded, so a card is reproducible."""
    columns = [c for c in info["columns"] if info["types"][c] == "string"]
    candidates = [[row[c] for c in columns] for row in rows]
    candidates = sorted((t for t in candidates if t and all(t)), key=lambda t: sum(len(s) for s in t))
    targets, backups = candidates[:examples], candidates[examples:][::-1]
    rng, widget = random.Random(seed), []
    for sentences in targets:
        sentences = list(sentences)
        while len(sentences) < texts and backups:
            backup = backups.pop()
            sentences.append(backup[0] if len(backup) == 1 else backup[1])
        if len(sentences) >= texts:
            widget.append({"source_sentence": sentences[0], "sentences": rng.sample(sentences[1:], len(sentences) - 1)})
    return widget


def _usage_sentences(info: dict | None) -> list[str]:
    """Three texts from the data for the usage snippet: a query and passages, or captions."""
    if not info:
        return []
    texts = [v for row in info["samples"] for c, v in row.items() if info["types"][c] == "string"]
    return list(dict.fromkeys(texts))[:3]


def _architecture(export_dir: str) -> str | None:
    """What ``print(SentenceTransformer(path))`` shows, from the export itself, loaded in a fresh CPU process: not in
    the training process, whose distributed context sentence-transformers and transformers would join (rank 0 alone
    loads here, so a collective of theirs would wait for ranks that never come), nor on its device. None without
    sentence-transformers, or when the export does not load (the error is printed)."""
    if importlib.util.find_spec("sentence_transformers") is None:
        return None
    env = {k: v for k, v in os.environ.items() if k not in DISTRIBUTED_ENV}
    done = subprocess.run([sys.executable, "-c", PRINT_ARCHITECTURE, export_dir], capture_output=True, text=True,
                          env={**env, "CUDA_VISIBLE_DEVICES": ""})
    if done.returncode != 0:
        print(f"sentence-transformers could not load the export {export_dir}:\n{done.stderr[-2000:]}", file=sys.stderr)
        return None
    return done.stdout.strip()


def _hyperparameters(config_path: str) -> dict:
    """The run's configuration (``config.yaml``) flattened to ``section.argument`` keys, and the values that differ
    from the defaults of the classes the configuration names."""
    if not os.path.isfile(config_path):
        return {"all": {}, "non_default": {}}
    with open(config_path) as f:
        config = yaml.safe_load(f) or {}
    flat: dict[str, object] = {}
    changed: dict[str, object] = {}
    defaults = option_defaults()
    from lightning.pytorch import Trainer
    for key, value in config.items():
        if key == "trainer":
            _flatten("trainer", value, _signature_defaults(Trainer), flat, changed)
        elif isinstance(value, dict):
            _flatten(key, value, _class_defaults(SECTIONS[key]) if key in SECTIONS else {}, flat, changed)
        else:
            flat[key] = _shown(value)
            if key not in defaults or defaults[key] != value:
                changed[key] = flat[key]
    return {"all": flat, "non_default": changed}


def _flatten(prefix: str, value, defaults: dict, flat: dict, changed: dict) -> None:
    if isinstance(value, dict) and "class_path" in value:
        flat[prefix] = value["class_path"]
        changed[prefix] = value["class_path"]
        _flatten(prefix, value.get("init_args") or {}, _class_defaults(value["class_path"]), flat, changed)
        return
    for key, item in value.items():
        name = f"{prefix}.{key}"
        if isinstance(item, dict) and "class_path" in item:
            _flatten(name, item, {}, flat, changed)
            continue
        if isinstance(item, list) and any(isinstance(i, dict) and "class_path" in i for i in item):
            item = [i["class_path"] if isinstance(i, dict) and "class_path" in i else i for i in item]
        flat[name] = _shown(item)
        if key not in defaults or _comparable(defaults[key]) != _comparable(item):
            changed[name] = flat[name]


def _comparable(value):
    """YAML has no tuples: a default ``(0.9, 0.999)`` equals the configured ``[0.9, 0.999]``."""
    return [_comparable(v) for v in value] if isinstance(value, (list, tuple)) else value


def _class_defaults(class_path: str) -> dict:
    try:
        cls = import_object(class_path)
    except (ImportError, AttributeError):
        return {}
    defaults: dict = {}
    for klass in reversed(cls.__mro__):  # a subclass's **kwargs reach its bases' arguments
        if "__init__" in vars(klass):
            defaults.update(_signature_defaults(klass))
    return defaults


def _signature_defaults(cls) -> dict:
    try:
        parameters = inspect.signature(cls.__init__).parameters.values()
    except (TypeError, ValueError):
        return {}
    return {p.name: p.default for p in parameters if p.default is not inspect.Parameter.empty}


def _shown(value):
    """A configuration value as the card shows it: paths outside the working folder (absolute, or ``../``) are the
    training machine's and become their last part."""
    if isinstance(value, str) and (os.path.isabs(value) or value.startswith("..")):
        return f"…/{os.path.basename(os.path.normpath(value))}"
    if isinstance(value, list):
        return [_shown(v) for v in value]
    if isinstance(value, dict):
        return {k: _shown(v) for k, v in value.items()}
    return value


def _versions(clip: bool) -> dict[str, str]:
    versions = {"Python": platform.python_version()}
    for label, package in VERSIONS.items():
        if package == "open_clip_torch" and not clip:
            continue
        try:
            versions[label] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            continue
    return versions


def _hardware(trainer, fit_seconds: float | None) -> dict[str, str]:
    hardware = {"Accelerator": f"{trainer.num_devices} x "
                               f"{torch.cuda.get_device_name() if trainer.strategy.root_device.type == 'cuda' else 'CPU'}"
                               f" ({trainer.num_nodes} node{'s' if trainer.num_nodes > 1 else ''})",
                "CPU Model": _cpu_model(), "Precision": str(trainer.precision)}
    if fit_seconds is not None:
        hardware["Hours Used"] = f"{fit_seconds / 3600:.3f} (this fit process)"
    return hardware


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _plot_caption(path: str) -> str:
    return {"training_loss.png": "Training loss and learning rate",
            "evaluation.png": "Validation nDCG@10 per step"}.get(os.path.basename(path), os.path.basename(path))

