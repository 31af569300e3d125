"""The exported model's README.md, laid out like sentence-transformers' auto-generated model cards.

A user who pushes litembed's export folder to the Hugging Face hub finds the sections and front matter an ST-trained
model has: hub metadata (tags, widget, ``model-index`` with every evaluation metric), model details, a usage snippet
that runs, evaluation tables, dataset statistics and samples, hyperparameters, training logs and citations.

The renderer is pure: the lead collects a :class:`CardData` from the run (the same checkpoint that is exported) and
:func:`render_card` turns it into markdown. Nothing here imports torch, Lightning or sentence-transformers' card code.
"""

import html
import json
import re
from dataclasses import dataclass, field, replace

import yaml

from metrics.keys import PRIMARY_METRIC

SBERT_LOSS_DOCS = "https://sbert.net/docs/package_reference/sentence_transformer/losses.html"
IR_EVALUATOR_DOCS = ("https://sbert.net/docs/package_reference/sentence_transformer/evaluation.html"
                     "#sentence_transformers.evaluation.InformationRetrievalEvaluator")
# litembed's losses compute the same values as these sentence-transformers classes, so the card links ST's docs.
ST_LOSSES = ("MultipleNegativesRankingLoss", "CachedMultipleNegativesRankingLoss",
             "MultipleNegativesSymmetricRankingLoss", "CachedMultipleNegativesSymmetricRankingLoss", "MatryoshkaLoss")
LIBRARIES = ("sentence-transformers", "open_clip")
MAX_CELL_CHARS = 500  # sample cells longer than this are cut with "…"
HIDE_LOG_ROWS = 100  # longer training logs are collapsed in <details>, as sentence-transformers does

ST_CITATION = """\
@inproceedings{reimers-2019-sentence-bert,
    title = "Sentence-BERT: Sentence Embeddings using Siamese BERT-Networks",
    author = "Reimers, Nils and Gurevych, Iryna",
    booktitle = "Proceedings of the 2019 Conference on Empirical Methods in Natural Language Processing",
    month = "11",
    year = "2019",
    publisher = "Association for Computational Linguistics",
    url = "https://arxiv.org/abs/1908.10084",
}"""
OPEN_CLIP_CITATION = """\
@software{ilharco_gabriel_2021_5143773,
  author       = {Ilharco, Gabriel and
                  Wortsman, Mitchell and
                  Wightman, Ross and
                  Gordon, Cade and
                  Carlini, Nicholas and
                  Taori, Rohan and
                  Dave, Achal and
                  Shankar, Vaishaal and
                  Namkoong, Hongseok and
                  Miller, John and
                  Hajishirzi, Hannaneh and
                  Farhadi, Ali and
                  Schmidt, Ludwig},
  title        = {OpenCLIP},
  month        = jul,
  year         = 2021,
  note         = {If you use this software, please cite it as below.},
  publisher    = {Zenodo},
  version      = {0.1},
  doi          = {10.5281/zenodo.5143773},
  url          = {https://doi.org/10.5281/zenodo.5143773}
}"""
CLIP_CITATION = """\
@misc{radford2021learning,
    title={Learning Transferable Visual Models From Natural Language Supervision},
    author={Alec Radford and Jong Wook Kim and Chris Hallacy and Aditya Ramesh and Gabriel Goh and Sandhini Agarwal and Girish Sastry and Amanda Askell and Pamela Mishkin and Jack Clark and Gretchen Krueger and Ilya Sutskever},
    year={2021},
    eprint={2103.00020},
    archivePrefix={arXiv},
    primaryClass={cs.CV}
}"""
MNRL_CITATION = """\
@misc{henderson2017efficient,
    title={Efficient Natural Language Response Suggestion for Smart Reply},
    author={Matthew Henderson and Rami Al-Rfou and Brian Strope and Yun-hsuan Sung and Laszlo Lukacs and Ruiqi Guo and Sanjiv Kumar and Balint Miklos and Ray Kurzweil},
    year={2017},
    eprint={1705.00652},
    archivePrefix={arXiv},
    primaryClass={cs.CL}
}"""
MATRYOSHKA_CITATION = """\
@misc{kusupati2024matryoshka,
    title={Matryoshka Representation Learning},
    author={Aditya Kusupati and Gantavya Bhatt and Aniket Rege and Matthew Wallingford and Aditya Sinha and Vivek Ramanujan and William Howard-Snyder and Kaifeng Chen and Sham Kakade and Prateek Jain and Ali Farhadi},
    year={2024},
    eprint={2205.13147},
    archivePrefix={arXiv},
    primaryClass={cs.LG}
}"""
GRADCACHE_CITATION = """\
@misc{gao2021scaling,
    title={Scaling Deep Contrastive Learning Batch Size under Memory Limited Setup},
    author={Luyu Gao and Yunyi Zhang and Jiawei Han and Jamie Callan},
    year={2021},
    eprint={2101.06983},
    archivePrefix={arXiv},
    primaryClass={cs.LG}
}"""
GIST_CITATION = """\
@misc{solatorio2024gistembed,
    title={GISTEmbed: Guided In-sample Selection of Training Negatives for Text Embedding Fine-tuning},
    author={Aivin V. Solatorio},
    year={2024},
    eprint={2402.16829},
    archivePrefix={arXiv},
    primaryClass={cs.LG}
}"""
NV_RETRIEVER_CITATION = """\
@misc{moreira2024nvretriever,
    title={NV-Retriever: Improving text embedding models with effective hard-negative mining},
    author={Gabriel de Souza P. Moreira and Radek Osmulski and Mengyao Xu and Ronay Ak and Benedikt Schifferer and Even Oldridge},
    year={2024},
    eprint={2407.15831},
    archivePrefix={arXiv},
    primaryClass={cs.IR}
}"""
MARGIN_MSE_CITATION = """\
@misc{hofstätter2021improving,
    title={Improving Efficient Neural Ranking Models with Cross-Architecture Knowledge Distillation},
    author={Sebastian Hofstätter and Sophia Althammer and Michael Schröder and Mete Sertkan and Allan Hanbury},
    year={2021},
    eprint={2010.02666},
    archivePrefix={arXiv},
    primaryClass={cs.IR}
}"""
DISTILL_KL_CITATION = """\
@misc{lin2020distillingdenserepresentationsranking,
    title={Distilling Dense Representations for Ranking using Tightly-Coupled Teachers},
    author={Sheng-Chieh Lin and Jheng-Hong Yang and Jimmy Lin},
    year={2020},
    eprint={2010.11386},
    archivePrefix={arXiv},
    primaryClass={cs.IR}
}"""
SIGLIP_CITATION = """\
@misc{zhai2023sigmoid,
    title={Sigmoid Loss for Language Image Pre-Training},
    author={Xiaohua Zhai and Basil Mustafa and Alexander Kolesnikov and Lucas Beyer},
    year={2023},
    eprint={2303.15343},
    archivePrefix={arXiv},
    primaryClass={cs.CV}
}"""
LORA_CITATION = """\
@misc{hu2021lora,
    title={LoRA: Low-Rank Adaptation of Large Language Models},
    author={Edward J. Hu and Yelong Shen and Phillip Wallis and Zeyuan Allen-Zhu and Yuanzhi Li and Shean Wang and Lu Wang and Weizhu Chen},
    year={2021},
    eprint={2106.09685},
    archivePrefix={arXiv},
    primaryClass={cs.CL}
}"""
# what a reader of the card must know about a loss beyond its parameters
LOSS_NOTES = {
    "SigLipLoss": "The learned `logit_scale` and `logit_bias` belong to the training loss and are not part of this "
                  "model: the bias shifts every image–text similarity by the same amount, so retrieval with this "
                  "model's cosine similarities ranks exactly as the trained logits do.",
}
CITATIONS = {  # a loss or method (CardData.methods) → its paper
    "MultipleNegativesRankingLoss": MNRL_CITATION,
    "MatryoshkaLoss": MATRYOSHKA_CITATION,
    "CachedMultipleNegativesRankingLoss": GRADCACHE_CITATION,
    "GradCache": GRADCACHE_CITATION,
    "GISTEmbedLoss": GIST_CITATION,
    "PositiveAwareMNRL": NV_RETRIEVER_CITATION,
    "MarginMSELoss": MARGIN_MSE_CITATION,
    "DistillKLDivLoss": DISTILL_KL_CITATION,
    "SigLipLoss": SIGLIP_CITATION,
    "LoRA": LORA_CITATION,
}

# Local paths a card must not leak; a URL's path is not a local path, so URLs are removed before these are searched.
_URL = re.compile(r"https?://[^\s)\"'<>\]]+")
_ABSOLUTE_PATH = re.compile(r"/home/|/tmp/|/usr/|/work/|site-packages|[A-Za-z]:\\|(?<![\w.])/(?:[\w.-]+/){2,}")


@dataclass
class DatasetInfo:
    """One training or evaluation dataset as the card's "Training Details" describe it.

    Attributes:
        name: what the card calls it: a hub dataset's name (``coco_captions``), a builtin's (``stdlib-docstrings``)
            or a local folder's basename (never a full path).
        hub_id: hub repository (``jxie/coco_captions``): linked to ``https://huggingface.co/datasets/<hub_id>`` and
            listed under ``datasets:`` in the front matter. None: shown unlinked.
        revision: the dataset's commit sha on the hub; shown as "at [abc1234](…/tree/<sha>)" when ``hub_id`` is set.
        size: rows used ("10,000 training samples"); None leaves the line out.
        columns: column names in the order the loss reads them, e.g. ``["anchor", "positive"]``.
        types: column → type shown in the statistics table (``string``, ``PIL.Image.Image``, ``int``).
        details: column → statistics lines, e.g. ``["min: 28 characters", "mean: 52.56 characters",
            "max: 156 characters"]`` or ``["mode: RGB", "size: 640×480 (most common)"]``; rendered as a ``<ul>``.
        samples: up to 3 rows, column → value already as a string; the renderer escapes and wraps it in ``<code>``.
        stats_rows: rows the statistics were computed on ("based on the first N samples").
        weight: a training source's share under weighted sampling (the ``weight`` of its
            ``--data.init_args.sources`` entry), as a fraction of all sources' weights; None: not sampled by weight.
        loss: a training source's own loss (``--model.init_args.source_losses``), its class names outer first, as
            ``CardData.losses``; None: the card's loss.
        loss_parameters: that loss's configuration.
    """

    name: str
    hub_id: str | None = None
    revision: str | None = None
    size: int | None = None
    columns: list[str] = field(default_factory=list)
    types: dict[str, str] = field(default_factory=dict)
    details: dict[str, list[str]] = field(default_factory=dict)
    samples: list[dict[str, str]] = field(default_factory=list)
    stats_rows: int = 1000
    weight: float | None = None
    loss: list[str] | None = None
    loss_parameters: dict = field(default_factory=dict)


@dataclass
class EvalSet:
    """The final retrieval metrics of one evaluation set: one column of the metrics table, one model-index result.

    Attributes:
        name: the set's name as the table and ``Datasets:`` line show it, e.g. ``dim_384``, ``shapes-eval``,
            ``test_dim_384``. The model-index ``type`` is this with whitespace as ``_``; its ``name`` has ``_`` and
            ``-`` as spaces (``dim_384`` → type ``dim_384``, name ``dim 384``), as sentence-transformers writes them.
        metrics: metric key without the set's prefix (``cosine_accuracy@1``) → value, in the order to show.
        primary: the metric whose row (or cell) is bold; must be a key of ``metrics``.
        split: ``validation`` or ``test``; validation sets come first in the table and model-index.
    """

    name: str
    metrics: dict[str, float]
    primary: str = PRIMARY_METRIC
    split: str = "validation"


@dataclass
class TrainingLog:
    """The "Training Logs" table: one row per logged step or evaluation.

    Attributes:
        columns: the columns after Epoch and Step, e.g. ``["Training Loss", "dim_384_cosine_ndcg@10"]``.
        rows: ``(epoch, step, values)``; epoch is fractional (``0.1008``) or a string such as ``"-1"`` for an
            evaluation outside training; values has one entry per column, None shown as ``-``.
        bold_row: index into ``rows`` of the saved checkpoint's row, rendered bold with a footnote; None: no bold row.
    """

    columns: list[str]
    rows: list[tuple[float | str, int | str, list[float | None]]]
    bold_row: int | None = None


@dataclass(kw_only=True)
class CardData:
    """Everything the model card shows, collected from the run by the caller. Keyword arguments only.

    Attributes:
        title: the ``# <title>`` heading and the model-index name.
        base_model: the model name the user trained from (``BAAI/bge-base-en-v1.5``); None: random initialisation.
        base_model_on_hub: link ``base_model`` to ``https://huggingface.co/<base_model>`` and put ``base_model:`` in
            the front matter; False shows it as plain code (``pkg:…`` names, open_clip tags).
        model_type: "Model Type" bullet: ``Sentence Transformer`` (text and HF CLIP) or ``open_clip``.
        library_name: ``sentence-transformers`` (loads with ``SentenceTransformer(path)``) or ``open_clip``.
        max_seq_length: tokens per text; None leaves the bullet out.
        output_dim: embedding size; None leaves the bullet out.
        similarity: "Similarity Function" bullet.
        architecture: ``str(SentenceTransformer(path))`` of the export, shown verbatim; None omits the section.
        usage_model_id: what the usage snippet loads: the export folder relative to where a reader runs it, or a
            hub id once pushed. For open_clip a plain folder is loaded as ``local-dir:<folder>``; ``hf-hub:`` and
            ``local-dir:`` ids are used as given.
        usage_sentences: texts the snippet encodes (3, as in sentence-transformers' cards).
        widget: the hub widget's examples, ``{"source_sentence": …, "sentences": [...]}`` each (sentence-transformers
            shows up to 5: ``reporting.collect.widget_examples``); none on an open_clip card.
        usage_images: image file names (relative, as a reader of the snippet opens them) or URLs for the snippet's
            image example (CLIP only); None: the image call is shown as a comment.
        clip: the model is a CLIP dual encoder (images and texts): description, image usage, CLIP citation.
        language: languages of the training data.
        license: the model's license identifier.
        train_datasets: the training datasets, in the order they were mixed.
        eval_datasets: the validation datasets.
        losses: loss class names, outer first (``["MatryoshkaLoss", "MultipleNegativesRankingLoss"]``): one
            ``loss:<Name>`` tag and citation each; the first is the one shown under each dataset.
        methods: training methods beyond the loss that have a paper (``GradCache``, ``LoRA``): cited after the
            losses.
        adapters: how adapters trained the model (LoRA's rank, targets and the share of parameters that trained),
            shown under Training Details; None for full fine-tuning.
        loss_parameters: the outer loss's configuration, shown as JSON under each dataset; with MatryoshkaLoss it
            must hold ``matryoshka_dims`` (the usage snippet truncates to the smallest).
        evaluations: the final retrieval metrics per evaluation set.
        training_log: the Training Logs table; None omits the section.
        hyperparameters: every training setting, in order (collapsed under "All Hyperparameters").
        non_default_hyperparameters: the settings the user changed from litembed's defaults.
        versions: library → version, in order (``{"Python": "3.11.9", "litembed": "0.1.0", …}``).
        plots: ``(caption, file name relative to the card)`` for the "Training Plots" section.
        hardware: "Training Hardware" bullets (``{"GPU Model": "1 x NVIDIA H100", "Hours Used": "0.137"}``).
        tags_extra: tags after the library's own (``litembed`` in place of ``generated_from_trainer``).
    """

    title: str
    base_model: str | None
    base_model_on_hub: bool
    model_type: str
    library_name: str
    max_seq_length: int | None
    output_dim: int | None
    similarity: str = "Cosine Similarity"
    architecture: str | None
    usage_model_id: str
    usage_sentences: list[str]
    widget: list[dict] = field(default_factory=list)
    usage_images: list[str] | None = None
    clip: bool = False
    language: list[str] = field(default_factory=lambda: ["en"])
    license: str = "apache-2.0"
    train_datasets: list[DatasetInfo]
    eval_datasets: list[DatasetInfo] = field(default_factory=list)
    losses: list[str]
    methods: list[str] = field(default_factory=list)
    loss_parameters: dict = field(default_factory=dict)
    adapters: str | None = None
    evaluations: list[EvalSet] = field(default_factory=list)
    training_log: TrainingLog | None = None
    hyperparameters: dict[str, object] = field(default_factory=dict)
    non_default_hyperparameters: dict[str, object] = field(default_factory=dict)
    versions: dict[str, str] = field(default_factory=dict)
    plots: list[tuple[str, str]] = field(default_factory=list)
    hardware: dict[str, str] = field(default_factory=dict)
    tags_extra: list[str] = field(default_factory=lambda: ["litembed"])


def render_card(card: CardData) -> str:
    """The model card (README.md) for ``card``: YAML front matter, then the sections in sentence-transformers' order.

    Args:
        card: what the run produced.

    Returns:
        The markdown text, ending in a newline.

    Raises:
        ValueError: a field is inconsistent (named in the message), or litembed's own text in the card holds an
            absolute path (see :func:`check_no_absolute_paths`).
    """
    _validate(card)
    # Sample rows and usage sentences are the user's data, quoted; a path inside them is no leak of this machine.
    # Everything else is checked on a render with that data blanked, which differs from the real one only there.
    check_no_absolute_paths(_render(_without_quoted_data(card)))
    return _render(card)


def check_no_absolute_paths(text: str) -> None:
    """Raise if ``text`` holds a local absolute path (a home, temp or venv folder, a Windows drive, ``/a/b/c``).

    URLs are removed first: ``https://huggingface.co/org/name/tree/sha`` is not a local path.

    Args:
        text: markdown to check.

    Raises:
        ValueError: naming the offending fragment with some context.
    """
    stripped = _URL.sub("<url>", text)
    match = _ABSOLUTE_PATH.search(stripped)
    if match:
        start, end = max(0, match.start() - 40), min(len(stripped), match.end() + 40)
        raise ValueError(f"the model card holds an absolute path {match.group(0)!r} in "
                         f"{stripped[start:end]!r}: pass paths relative to the export folder (or names) in CardData")


def _validate(card: CardData) -> None:
    if card.library_name not in LIBRARIES:
        raise ValueError(f"CardData.library_name must be one of {LIBRARIES}, got {card.library_name!r}")
    if "MatryoshkaLoss" in card.losses and not card.loss_parameters.get("matryoshka_dims"):
        raise ValueError("CardData.loss_parameters needs 'matryoshka_dims' when CardData.losses includes "
                         "MatryoshkaLoss (the usage snippet truncates to the smallest)")
    for ev in card.evaluations:
        if ev.primary not in ev.metrics:
            raise ValueError(f"EvalSet {ev.name!r}: primary {ev.primary!r} is not among its metrics "
                             f"{list(ev.metrics)} (metric keys carry no set prefix, e.g. 'cosine_ndcg@10')")
    log = card.training_log
    if log is not None:
        for i, (_, _, values) in enumerate(log.rows):
            if len(values) != len(log.columns):
                raise ValueError(f"TrainingLog.rows[{i}] has {len(values)} values for {len(log.columns)} columns "
                                 f"{log.columns}")
        if log.bold_row is not None and not 0 <= log.bold_row < len(log.rows):
            raise ValueError(f"TrainingLog.bold_row {log.bold_row} is not a row index (0..{len(log.rows) - 1})")


def _without_quoted_data(card: CardData) -> CardData:
    def blank(info: DatasetInfo) -> DatasetInfo:
        return replace(info, samples=[{column: "x" for column in row} for row in info.samples])

    return replace(card, usage_sentences=["x"] * len(card.usage_sentences), widget=[],
                   train_datasets=[blank(d) for d in card.train_datasets],
                   eval_datasets=[blank(d) for d in card.eval_datasets])


def _render(card: CardData) -> str:
    sections = [
        f"---\n{_front_matter(card)}---",
        f"# {card.title}",
        _description(card),
        _model_details(card),
        _usage(card),
        _evaluation(card),
        _TEMPLATE_COMMENTS_EVALUATION,
        _training_details(card),
        _citations(card),
        _TEMPLATE_COMMENTS_END,
    ]
    return "\n\n".join(s for s in sections if s) + "\n"


# ---------------------------------------------------------------------------------------------------- front matter


def ordered_evaluations(card: CardData) -> list[EvalSet]:
    """The evaluation sets in the card's order: validation sets first, then test sets, each in the given order."""
    return sorted(card.evaluations, key=lambda ev: ev.split == "test")


def _front_matter(card: CardData) -> str:
    """The hub metadata, in the key order of sentence-transformers' cards."""
    st = card.library_name == "sentence-transformers"
    tags = (["sentence-transformers", "sentence-similarity", "feature-extraction", "dense"] if st
            else ["open_clip", "clip"])
    tags += list(card.tags_extra)
    sizes = [d.size for d in card.train_datasets]
    if sizes and all(size is not None for size in sizes):
        tags.append(f"dataset_size:{sum(sizes)}")
    tags += [f"loss:{name}" for name in dict.fromkeys(card.losses)]
    meta: dict = {"language": list(card.language), "license": card.license, "tags": tags}
    if card.base_model and card.base_model_on_hub:
        meta["base_model"] = card.base_model
    if st and card.widget:
        meta["widget"] = [{"source_sentence": w["source_sentence"], "sentences": list(w["sentences"])}
                          for w in card.widget]
    hub_ids = [d.hub_id for d in card.train_datasets + card.eval_datasets if d.hub_id]
    if hub_ids:
        meta["datasets"] = list(dict.fromkeys(hub_ids))
    meta["pipeline_tag"] = "sentence-similarity" if st else "zero-shot-image-classification"
    meta["library_name"] = card.library_name
    evaluations = ordered_evaluations(card)
    if evaluations:
        meta["metrics"] = list(dict.fromkeys(key for ev in evaluations for key in ev.metrics))
        meta["model-index"] = [{"name": card.title, "results": [_model_index_result(ev) for ev in evaluations]}]
    return yaml.safe_dump(meta, sort_keys=False, allow_unicode=True)


def _model_index_result(ev: EvalSet) -> dict:
    dataset_type = re.sub(r"\s+", "_", ev.name.strip())
    return {
        "task": {"type": "information-retrieval", "name": "Information Retrieval"},
        "dataset": {"name": re.sub(r"[_\-]", " ", dataset_type), "type": dataset_type, "split": ev.split},
        # plain floats: a numpy or torch scalar would dump as a tagged object the hub cannot read
        "metrics": [{"type": key, "value": float(value), "name": key.replace("_", " ").title()}
                    for key, value in ev.metrics.items()],
    }


# ---------------------------------------------------------------------------------------------------- model details


def _base_model_markdown(card: CardData) -> str | None:
    if card.base_model is None:
        return None
    if card.base_model_on_hub:
        return f"[{card.base_model}](https://huggingface.co/{card.base_model})"
    return f"`{card.base_model}`"


def _dataset_link(info: DatasetInfo) -> str:
    return f"[{info.name}](https://huggingface.co/datasets/{info.hub_id})" if info.hub_id else info.name


def _join(items: list[str]) -> str:
    """``a``, ``a and b``, ``a, b and c`` as sentence-transformers' cards list names."""
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def _description(card: CardData) -> str:
    library = ("a [sentence-transformers](https://www.SBERT.net)" if card.library_name == "sentence-transformers"
               else "an [open_clip](https://github.com/mlfoundations/open_clip)")
    base = _base_model_markdown(card)
    origin = f" finetuned from {base}" if base else " trained from random initialisation"
    datasets = ""
    if card.train_datasets:
        plural = "s" if len(card.train_datasets) > 1 else ""
        datasets = f" on the {_join([_dataset_link(d) for d in card.train_datasets])} dataset{plural}"
    space = f"{card.output_dim}-dimensional dense vector space" if card.output_dim else "dense vector space"
    if card.clip:
        use = (f"It maps images and texts to a shared {space} and can be used for text-to-image and image-to-text "
               "retrieval, zero-shot image classification, semantic search, clustering, and more.")
    else:
        use = (f"It maps sentences & paragraphs to a {space} and can be used for semantic textual similarity, "
               "semantic search, paraphrase mining, text classification, clustering, and more.")
    return f"This is {library} model{origin}{datasets} with litembed (PyTorch Lightning). {use}"


def _model_details(card: CardData) -> str:
    bullets = [f"- **Model Type:** {card.model_type}"]
    base = _base_model_markdown(card)
    bullets.append(f"- **Base model:** {base}" if base else "- **Base model:** none (random initialisation)")
    if card.max_seq_length is not None:
        bullets.append(f"- **Maximum Sequence Length:** {card.max_seq_length} tokens")
    if card.output_dim is not None:
        bullets.append(f"- **Output Dimensionality:** {card.output_dim} dimensions")
    bullets.append(f"- **Similarity Function:** {card.similarity}")
    if card.train_datasets:
        plural = "s" if len(card.train_datasets) > 1 else ""
        bullets.append(f"- **Training Dataset{plural}:**")
        bullets += [f"    - {_dataset_link(d)}" for d in card.train_datasets]
    plural = "s" if len(card.language) > 1 else ""
    bullets.append(f"- **Language{plural}:** {', '.join(card.language)}")
    bullets.append(f"- **License:** {card.license}")
    if card.library_name == "sentence-transformers":
        sources = ["- **Documentation:** [Sentence Transformers Documentation](https://sbert.net)",
                   "- **Repository:** [Sentence Transformers on GitHub]"
                   "(https://github.com/huggingface/sentence-transformers)",
                   "- **Hugging Face:** [Sentence Transformers on Hugging Face]"
                   "(https://huggingface.co/models?library=sentence-transformers)"]
    else:
        sources = ["- **Repository:** [OpenCLIP on GitHub](https://github.com/mlfoundations/open_clip)",
                   "- **Hugging Face:** [OpenCLIP on Hugging Face](https://huggingface.co/models?library=open_clip)"]
    sources.append("- **Trained with:** litembed")
    parts = ["## Model Details", "### Model Description", "\n".join(bullets), "### Model Sources", "\n".join(sources)]
    if card.architecture is not None:
        parts += ["### Full Model Architecture", f"```\n{card.architecture.strip()}\n```"]
    return "\n\n".join(parts)


# ---------------------------------------------------------------------------------------------------- usage


def _usage(card: CardData) -> str:
    if card.library_name == "sentence-transformers":
        heading, install, code = ("### Direct Usage (Sentence Transformers)", "pip install -U sentence-transformers",
                                  _st_snippet(card))
        intro = "First install the Sentence Transformers library:"
    else:
        heading, install, code = ("### Direct Usage (open_clip)", "pip install -U open_clip_torch",
                                  _open_clip_snippet(card))
        intro = "First install the open_clip library:"
    parts = ["## Usage", heading, intro, f"```bash\n{install}\n```",
             f"Then you can load this model and run inference.\n```python\n{code}\n```"]
    if card.library_name == "sentence-transformers":  # these placeholders name sentence-transformers' usage
        parts.append(_TEMPLATE_COMMENTS_ST_USAGE)
    return "\n\n".join([*parts, _TEMPLATE_COMMENTS_OUT_OF_SCOPE])


def _matryoshka_dim(card: CardData) -> int | None:
    if "MatryoshkaLoss" not in card.losses:
        return None
    return min(int(d) for d in card.loss_parameters["matryoshka_dims"])


def _dim_comment(n: int, dim: int | None) -> str:
    return f"# [{n}, {dim if dim is not None else '?'}]"


def _is_url(name: str) -> bool:
    return name.startswith(("http://", "https://"))


def _image_lines(images: list[str]) -> list[str]:
    """Imports and an ``images`` list of PIL images: files opened by name, URLs fetched (any library version)."""
    imports = ["from PIL import Image", *(["from urllib.request import urlopen"] if any(map(_is_url, images)) else [])]
    opened = [f"    Image.open(urlopen({i!r}))," if _is_url(i) else f"    Image.open({i!r})," for i in images]
    return [*imports, "", "images = [", *opened, "]"]


def _st_snippet(card: CardData) -> str:
    n = len(card.usage_sentences)
    lines = [
        "from sentence_transformers import SentenceTransformer",
        "",
        "# The exported folder; once pushed, the 🤗 Hub id loads the same way",
        f"model = SentenceTransformer({card.usage_model_id!r})",
        "# Run inference",
        "sentences = [",
        *(f"    {s!r}," for s in card.usage_sentences),
        "]",
        "embeddings = model.encode(sentences)",
        "print(embeddings.shape)",
        _dim_comment(n, card.output_dim),
        "",
        "# Get the similarity scores for the embeddings",
        "similarities = model.similarity(embeddings, embeddings)",
        "print(similarities.shape)",
        f"# [{n}, {n}]",
    ]
    dim = _matryoshka_dim(card)
    if dim is not None:
        lines += [
            "",
            f"# Trained with MatryoshkaLoss: the first {dim} dimensions are an embedding on their own",
            f"small_model = SentenceTransformer({card.usage_model_id!r}, truncate_dim={dim})",
            "small_embeddings = small_model.encode(sentences)",
            "print(small_embeddings.shape)",
            _dim_comment(n, dim),
        ]
    if card.clip:
        lines += ["", "# Images go through the same encode call, as PIL images"]
        if card.usage_images:
            lines += [
                *_image_lines(card.usage_images),
                "image_embeddings = model.encode(images)",
                "print(image_embeddings.shape)",
                _dim_comment(len(card.usage_images), card.output_dim),
                "# Caption-image similarities: one row per sentence, one column per image",
                "print(model.similarity(embeddings, image_embeddings).shape)",
                f"# [{n}, {len(card.usage_images)}]",
            ]
        else:
            lines += [
                "# from PIL import Image",
                '# image_embeddings = model.encode([Image.open("photo.jpg")])',
                "# print(model.similarity(embeddings, image_embeddings))",
            ]
    return "\n".join(lines)


def _open_clip_snippet(card: CardData) -> str:
    model_id = card.usage_model_id
    if not model_id.startswith(("hf-hub:", "local-dir:")):
        model_id = f"local-dir:{model_id}"
    n = len(card.usage_sentences)
    images = card.usage_images or []
    lines = [
        "import open_clip",
        "import torch",
        "",
        "# The exported folder (open_clip_config.json + weights); once pushed, use 'hf-hub:<user>/<repo>'",
        f"model, _, preprocess = open_clip.create_model_and_transforms({model_id!r})",
        f"tokenizer = open_clip.get_tokenizer({model_id!r})",
        "model.eval()",
        "# Run inference",
        "sentences = [",
        *(f"    {s!r}," for s in card.usage_sentences),
        "]",
        "with torch.no_grad():",
        "    embeddings = model.encode_text(tokenizer(sentences), normalize=True)",
        "print(embeddings.shape)",
        _dim_comment(n, card.output_dim),
        "",
        "# Cosine similarities (the embeddings are normalised)",
        "similarities = embeddings @ embeddings.T",
        "print(similarities.shape)",
        f"# [{n}, {n}]",
    ]
    if images:
        lines += [
            "",
            *_image_lines(images),
            "pixels = torch.stack([preprocess(image) for image in images])",
            "with torch.no_grad():",
            "    image_embeddings = model.encode_image(pixels, normalize=True)",
            "print(image_embeddings.shape)",
            _dim_comment(len(images), card.output_dim),
            "# Caption-image similarities: one row per sentence, one column per image",
            "print((embeddings @ image_embeddings.T).shape)",
            f"# [{n}, {len(images)}]",
        ]
    else:
        lines += [
            "",
            "# Images: preprocess PIL images, then encode_image",
            "# from PIL import Image",
            '# image_embeddings = model.encode_image(preprocess(Image.open("photo.jpg")).unsqueeze(0), normalize=True)',
        ]
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------- tables


def markdown_table(header: list[str], rows: list[list[str]], centered: bool = False, indent: str = "") -> str:
    """A padded markdown table like sentence-transformers' (transformers' ``make_markdown_table``).

    Args:
        header: column titles.
        rows: cells, already formatted and escaped.
        centered: centre every column (``|:---:|``, the training logs) instead of left-aligning (``|:----|``).
        indent: prefix of every line (two spaces nest a table in a bullet).

    Returns:
        The table's lines joined by newlines.
    """
    widths = [max([len(h), *(len(row[i]) for row in rows)]) for i, h in enumerate(header)]

    def line(cells: list[str]) -> str:
        return "".join(f"| {c}{' ' * (w - len(c))} " for c, w in zip(cells, widths)) + "|"

    align = "".join(f"|:{'-' * w}:" if centered else f"|:{'-' * (w + 1)}" for w in widths) + "|"
    return "\n".join(indent + text for text in [line(header), align, *(line(row) for row in rows)])


def format_metric(value: float) -> str:
    """A metric as sentence-transformers' cards show it: rounded to 4 decimals, without trailing zeros (0.799)."""
    return str(round(float(value), 4))


def format_log_value(value: float | int | str | None) -> str:
    """A training-log cell: floats with more than 4 decimals as ``.4f`` (0.8840), others as written, None as ``-``."""
    if value is None:
        return "-"
    if isinstance(value, float):
        text = str(value)
        return f"{value:.4f}" if "." in text and len(text.split(".")[1]) > 4 else text
    return str(value)


def escape_cell(value: str, code: bool = False) -> str:
    """Make ``value`` safe inside a table cell: HTML escaped, ``|`` escaped, newlines as spaces, cut at 500 chars.

    Args:
        value: the text.
        code: wrap in ``<code>`` (sample values, column names).
    """
    text = str(value)
    if len(text) > MAX_CELL_CHARS:
        text = text[:MAX_CELL_CHARS] + "…"
    text = html.escape(" ".join(text.splitlines()), quote=False).replace("|", "\\|")
    return f"<code>{text}</code>" if code else text


# ---------------------------------------------------------------------------------------------------- evaluation


def _evaluation(card: CardData) -> str:
    evaluations = ordered_evaluations(card)
    if not evaluations:
        return ""
    names = [f"`{ev.name}`" for ev in evaluations]
    plural = "s" if len(evaluations) > 1 else ""
    lines = [
        f"* Dataset{plural}: {_join(names)}",
        "* Evaluated with litembed's retrieval evaluator (the metrics of sentence-transformers' "
        f"[<code>InformationRetrievalEvaluator</code>]({IR_EVALUATOR_DOCS}), proven equal in litembed's tests)",
    ]
    return "\n\n".join(["## Evaluation", "### Metrics", "#### Information Retrieval", "\n".join(lines),
                        _metrics_table(evaluations)])


def _metrics_table(evaluations: list[EvalSet]) -> str:
    """One row per metric, one column per set; the primary metric's row bold, or its cells where sets differ."""
    keys = list(dict.fromkeys(key for ev in evaluations for key in ev.metrics))
    shared_primary = len({ev.primary for ev in evaluations}) == 1
    header = ["Metric", *([ev.name for ev in evaluations] if len(evaluations) > 1 else ["Value"])]
    rows = []
    for key in keys:
        cells = []
        for ev in evaluations:
            cell = format_metric(ev.metrics[key]) if key in ev.metrics else "-"
            cells.append(f"**{cell}**" if key == ev.primary else cell)
        bold_name = shared_primary and key == evaluations[0].primary
        rows.append([f"**{key}**" if bold_name else key, *cells])
    return markdown_table(header, rows)


# ---------------------------------------------------------------------------------------------------- training


def _training_details(card: CardData) -> str:
    parts = ["## Training Details"]
    for kind, datasets in (("training", card.train_datasets), ("evaluation", card.eval_datasets)):
        if datasets:
            plural = "s" if len(datasets) > 1 else ""
            parts.append(f"### {kind.title()} Dataset{plural}")
            parts += [_dataset_section(info, kind, card) for info in datasets]
    if card.adapters:
        parts.append(f"### Adapters\n\n{card.adapters}")
    if card.hyperparameters or card.non_default_hyperparameters:
        parts.append(_hyperparameters(card))
    if card.plots:
        parts.append("### Training Plots\n\n" + "\n\n".join(f"![{caption}]({file})" for caption, file in card.plots))
    if card.training_log is not None and card.training_log.rows:
        parts.append(_training_log(card.training_log))
    if card.hardware:
        parts.append("### Training Hardware\n" + "\n".join(f"- **{k}**: {v}" for k, v in card.hardware.items()))
    if card.versions:
        parts.append("### Framework Versions\n" + "\n".join(f"- {k}: {v}" for k, v in card.versions.items()))
    return "\n\n".join(parts)


def _dataset_section(info: DatasetInfo, kind: str, card: CardData) -> str:
    lines = [f"#### {info.name}", ""]
    dataset = f"* Dataset: {_dataset_link(info)}"
    if info.hub_id and info.revision:
        dataset += f" at [{info.revision[:7]}](https://huggingface.co/datasets/{info.hub_id}/tree/{info.revision})"
    lines.append(dataset)
    if info.size is not None:
        lines.append(f"* Size: {info.size:,} {kind} samples")
    if info.weight is not None:
        lines.append(f"* Sampling weight: {info.weight:.1%} of the batches (weighted sampling)")
    if info.columns:
        lines.append(f"* Columns: {_join([f'<code>{escape_cell(c)}</code>' for c in info.columns])}")
    if info.types or info.details:
        rows_used = info.stats_rows if info.size is None else min(info.stats_rows, info.size)
        lines.append(f"* Approximate statistics based on the first {rows_used} samples:")
        lines.append(_stats_table(info))
    if info.samples:
        lines.append("* Samples:")
        columns = info.columns or list(info.samples[0])
        rows = [[escape_cell(sample.get(c, ""), code=True) for c in columns] for sample in info.samples[:3]]
        lines.append(markdown_table([escape_cell(c) for c in columns], rows, indent="  "))
    if info.loss:
        lines.append(_loss_line(info.loss[0], info.loss_parameters))
    elif card.losses:
        lines.append(_loss_line(card.losses[0], card.loss_parameters))
    return "\n".join(lines)


def _stats_table(info: DatasetInfo) -> str:
    columns = info.columns or list(dict.fromkeys([*info.types, *info.details]))

    def bullet_list(items: list[str]) -> str:
        return "<ul><li>" + "</li><li>".join(escape_cell(i) for i in items) + "</li></ul>" if items else ""

    rows = [["type", *(escape_cell(info.types.get(c, "")) for c in columns)]]
    if info.details:
        rows.append(["details", *(bullet_list(info.details.get(c, [])) for c in columns)])
    return markdown_table(["", *(escape_cell(c) for c in columns)], rows, indent="  ")


def _loss_line(name: str, parameters: dict) -> str:
    shown = f"[<code>{name}</code>]({SBERT_LOSS_DOCS}#{name.lower()})" if name in ST_LOSSES else f"<code>{name}</code>"
    note = f"\n\n  {LOSS_NOTES[name]}" if name in LOSS_NOTES else ""
    if not parameters:
        return f"* Loss: {shown}{note}"
    config = json.dumps(parameters, indent=4, ensure_ascii=False)
    block = "\n".join("  " + line for line in f"```json\n{config}\n```".splitlines())
    return f"* Loss: {shown} with these parameters:\n{block}{note}"


def _hyperparameters(card: CardData) -> str:
    parts = ["### Training Hyperparameters"]
    if card.non_default_hyperparameters:
        parts.append("#### Non-Default Hyperparameters\n\n"
                     + "\n".join(f"- `{k}`: {v}" for k, v in card.non_default_hyperparameters.items()))
    if card.hyperparameters:
        parts.append("#### All Hyperparameters\n<details><summary>Click to expand</summary>\n\n"
                     + "\n".join(f"- `{k}`: {v}" for k, v in card.hyperparameters.items()) + "\n\n</details>")
    return "\n\n".join(parts)


def _training_log(log: TrainingLog) -> str:
    rows = []
    for i, (epoch, step, values) in enumerate(log.rows):
        cells = [format_log_value(epoch), format_log_value(step), *(format_log_value(v) for v in values)]
        rows.append([f"**{c}**" for c in cells] if i == log.bold_row else cells)
    table = markdown_table(["Epoch", "Step", *log.columns], rows, centered=True)
    if log.bold_row is not None:
        table += "\n* The bold row denotes the saved checkpoint."
    if "Training Loss" in log.columns:  # what a reader of one step's loss would misread (an outlier batch)
        table += "\n* Training Loss is the mean over the optimizer steps since the previous row."
    if len(rows) > HIDE_LOG_ROWS:
        table = f"<details><summary>Click to expand</summary>\n\n{table}\n\n</details>"
    return f"### Training Logs\n{table}"


# ---------------------------------------------------------------------------------------------------- citations


def _citations(card: CardData) -> str:
    """BibTeX for the library, CLIP, each loss and each method; those sharing a paper share one entry ("A and B")."""
    cited: dict[str, list[str]] = {}  # citation → names, in first-seen order
    if card.library_name == "sentence-transformers":
        cited[ST_CITATION] = ["Sentence Transformers"]
    else:
        cited[OPEN_CLIP_CITATION] = ["OpenCLIP"]
    if card.clip:
        cited.setdefault(CLIP_CITATION, []).append("CLIP")
    for name in dict.fromkeys([*card.losses, *card.methods]):
        if name in CITATIONS:
            cited.setdefault(CITATIONS[name], []).append(name)
    entries = [f"#### {_join(names)}\n```bibtex\n{citation}\n```" for citation, names in cited.items()]
    return "\n\n".join(["## Citation", "### BibTeX", *entries])


# The placeholders sentence-transformers' cards carry as HTML comments, for the author to fill in before publishing.
_TEMPLATE_COMMENTS_ST_USAGE = """\
<!--
### Direct Usage (Transformers)

<details><summary>Click to see the direct usage in Transformers</summary>

</details>
-->

<!--
### Downstream Usage (Sentence Transformers)

You can finetune this model on your own dataset.

<details><summary>Click to expand</summary>

</details>
-->"""
_TEMPLATE_COMMENTS_OUT_OF_SCOPE = """\
<!--
### Out-of-Scope Use

*List how the model may foreseeably be misused and address what users ought not to do with the model.*
-->"""
_TEMPLATE_COMMENTS_EVALUATION = """\
<!--
## Bias, Risks and Limitations

*What are the known or foreseeable issues stemming from this model? You could also flag here known failure cases or weaknesses of the model.*
-->

<!--
### Recommendations

*What are recommendations with respect to the foreseeable issues? For example, filtering explicit content.*
-->"""
_TEMPLATE_COMMENTS_END = """\
<!--
## Glossary

*Clearly define terms in order to be accessible across audiences.*
-->

<!--
## Model Card Authors

*Lists the people who create the model card, providing recognition and accountability for the detailed work that goes into its construction.*
-->

<!--
## Model Card Contact

*Provides a way for people who have updates to the Model Card, suggestions, or questions, to contact the Model Card authors.*
-->"""
