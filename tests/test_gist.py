"""False-negative-aware losses against sentence-transformers itself: GISTEmbedLoss and CachedGISTEmbedLoss (values and
gradients in float64, alone, inside Matryoshka, under 2 gloo ranks with the gather), and the guide-free
positive-aware margin."""

import itertools
import sys
from unittest import mock

import pytest
import torch
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import nn

from losses import GISTEmbedLoss, MatryoshkaLoss, MultipleNegativesRankingLoss, PositiveAwareMNRL
from tests.test_losses import B, D, EmbeddingsModel, assert_same_loss_and_grads, embeddings, gloo_rank

G = 12  # the guide's embedding size: its own, not the model's


class StandIn(EmbeddingsModel):
    """A stand-in model that ST's cached losses can index (``model[0]``: its input module, no StaticEmbedding)."""

    def __getitem__(self, index: int) -> nn.Module:
        return nn.Identity()


class GuideModel(StandIn):
    """Stands in for the guide SentenceTransformer: its embeddings are the features' ``guide`` entry."""

    def forward(self, features: dict) -> dict:
        return {"sentence_embedding": features["guide"]}


@pytest.fixture(scope="module")
def st_gist(minilm_path):
    """ST's GIST losses built on stand-in models sharing one tokenizer (so ST feeds the guide the model's features)."""
    from sentence_transformers.sentence_transformer import losses
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(minilm_path)

    def build(cached: bool = False, **kwargs) -> nn.Module:
        model, guide = StandIn(D), GuideModel(G)
        for stand_in in (model, guide):
            stand_in.tokenizer, stand_in.max_seq_length = tokenizer, 128
        if cached:
            return losses.CachedGISTEmbedLoss(model, guide, mini_batch_size=3, **kwargs)
        return losses.GISTEmbedLoss(model, guide, **kwargs)

    return build


def guide_embeddings(columns: int, rows: int = B, seed: int = 1) -> list[torch.Tensor]:
    return [e.detach() for e in embeddings(columns, rows=rows, dim=G, seed=seed)]


def theirs_of(st_loss: nn.Module, guide: list[torch.Tensor], backward_hook: bool = False):
    """ST's loss called as its trainer calls it: one feature dict per column, model and guide features side by side.
    A cached loss backpropagates through a hook on its result, into the leaves' ``.grad``."""
    def call(inputs):
        features = [{"embedding": e, "guide": g} for e, g in zip(inputs, guide, strict=True)]
        return st_loss(features, None)
    if not backward_hook:
        return call

    class Hooked(torch.autograd.Function):  # lets value_and_grads read the .grad the hook fills
        @staticmethod
        def forward(ctx, *inputs):
            leaves = [i.detach().requires_grad_() for i in inputs]
            with torch.enable_grad():
                loss = call(leaves)
                loss.backward()
            ctx.grads = [leaf.grad for leaf in leaves]
            return loss.detach()

        @staticmethod
        def backward(ctx, grad):
            return tuple(g * grad for g in ctx.grads)

    return lambda inputs: Hooked.apply(*inputs)


def ours_of(loss: nn.Module, guide: list[torch.Tensor]):
    return lambda inputs: loss(*inputs, guide=guide)


OPTIONS = [dict(margin_strategy=s, margin=m, contrast_anchors=a, contrast_positives=p, temperature=t)
           for (s, m), a, p, t in itertools.product([("absolute", 0.0), ("absolute", 0.1), ("relative", 0.2)],
                                                    [True, False], [True, False], [0.05])]


@pytest.mark.parametrize("options", OPTIONS, ids=lambda o: "-".join(str(v) for v in o.values()))
@pytest.mark.parametrize("columns", [2, 3])
def test_gist_matches_sentence_transformers(st_gist, options, columns):
    inputs, guide = embeddings(columns), guide_embeddings(columns)
    assert_same_loss_and_grads(ours_of(GISTEmbedLoss("guide", **options), guide),
                               theirs_of(st_gist(**options), guide), inputs)


@pytest.mark.parametrize("options", OPTIONS[::3], ids=lambda o: "-".join(str(v) for v in o.values()))
@pytest.mark.parametrize("columns", [2, 3, 4])
def test_gist_matches_sentence_transformers_cached_gist(st_gist, options, columns):
    """CachedGISTEmbedLoss takes any number of negative columns (GISTEmbedLoss one at most)."""
    inputs, guide = embeddings(columns), guide_embeddings(columns)
    assert_same_loss_and_grads(ours_of(GISTEmbedLoss("guide", **options), guide),
                               theirs_of(st_gist(cached=True, **options), guide, backward_hook=True), inputs)


def test_gist_masks_something_in_these_tests():
    """The random guide embeddings above do mask candidates (a test where nothing is masked proves little)."""
    inputs, guide = embeddings(3), guide_embeddings(3)
    masked = GISTEmbedLoss("guide", temperature=0.05)(*inputs, guide=guide)
    unmasked = GISTEmbedLoss("guide", temperature=0.05, margin=10.0, margin_strategy="absolute")
    assert not torch.isclose(masked, unmasked(*inputs, guide=[-g for g in guide]))


def test_gist_inside_matryoshka_matches_sentence_transformers(st_gist):
    """The model's embeddings are cut to each dim; the guide's are not (ST truncates the model's output only)."""
    from sentence_transformers.sentence_transformer import losses

    inputs, guide = embeddings(3), guide_embeddings(3)
    options = dict(temperature=0.05, margin=0.05)
    gist = st_gist(**options)
    theirs = losses.MatryoshkaLoss(gist.model, gist, matryoshka_dims=[16, 8, 4])
    ours = MatryoshkaLoss(GISTEmbedLoss("guide", **options), dims=[16, 8, 4])
    assert ours.takes_guide and ours.guide == "guide"
    assert_same_loss_and_grads(ours_of(ours, guide), theirs_of(theirs, guide), inputs)


def test_positive_aware_is_gist_guided_by_the_model_itself(st_gist):
    """The guide-free loss masks with the model's own scores: ST's GIST with the model as its guide, gradients
    included (the mask carries none)."""
    for strategy, margin, columns in [("relative", 0.05, 3), ("absolute", 0.02, 2), ("relative", 0.3, 4)]:
        inputs = embeddings(columns)
        options = dict(margin_strategy=strategy, margin=margin, contrast_anchors=False, contrast_positives=False)
        theirs_loss = st_gist(cached=True, temperature=1 / 20, **options)

        def theirs(leaves):
            return theirs_of(theirs_loss, [e.detach() for e in leaves], backward_hook=True)(leaves)

        ours = PositiveAwareMNRL(scale=20, **options)
        assert_same_loss_and_grads(lambda leaves: ours(*leaves), theirs, inputs)


def test_positive_aware_without_masks_is_mnrl():
    """A margin no candidate reaches (cosines differ by at most 2) leaves InfoNCE: MultipleNegativesRankingLoss,
    values and gradients."""
    inputs = embeddings(3)
    assert_same_loss_and_grads(lambda e: PositiveAwareMNRL(scale=20, margin_strategy="absolute", margin=-2.5)(*e),
                               lambda e: MultipleNegativesRankingLoss(scale=20)(*e), inputs)


def test_positive_aware_drops_a_duplicate_answer():
    """Row 1's positive is row 0's positive too (the same passage twice in a batch): plain InfoNCE pushes row 0's
    anchor away from it as a negative; the positive-aware loss masks it and so gives row 0 a lower loss."""
    anchor, positive = (e.detach() for e in embeddings(2))
    positive[1] = positive[0]
    anchor[1] = anchor[0] + 0.01 * anchor[1]
    plain = F.cross_entropy(20 * F.normalize(anchor, dim=-1) @ F.normalize(positive, dim=-1).T, torch.arange(B),
                            reduction="none")
    loss_plain = MultipleNegativesRankingLoss(scale=20)(anchor, positive)
    loss_aware = PositiveAwareMNRL(scale=20, margin=0.05)(anchor, positive)
    torch.testing.assert_close(loss_plain, plain.mean())
    assert loss_aware < loss_plain


@pytest.mark.parametrize("kwargs, match", [
    (dict(temperature=0), "temperature must be > 0"),
    (dict(margin_strategy="percent"), "margin_strategy must be one of"),
    (dict(guide_batch_size=0), "guide_batch_size must be ≥ 1"),
])
def test_gist_rejects_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        GISTEmbedLoss("guide", **kwargs)


def test_gist_rejects_bad_inputs():
    inputs, guide = embeddings(3), guide_embeddings(3)
    with pytest.raises(ValueError, match="2 guide embeddings for 3 columns"):
        GISTEmbedLoss("guide")(*inputs, guide=guide[:2])
    with pytest.raises(ValueError, match="needs \\(anchor, positive"):
        GISTEmbedLoss("guide")(inputs[0], guide=guide[:1])
    with pytest.raises(ValueError, match="column 1 has shape"):
        PositiveAwareMNRL()(inputs[0], inputs[1][:4])


def _distributed_worker(rank: int, directory: str) -> None:
    rows = slice(rank * B, (rank + 1) * B)
    with gloo_rank(rank, 2, directory) as results:
        for name, loss in [("gist", GISTEmbedLoss("guide", temperature=0.05, margin=0.05,
                                                  gather_across_devices=True)),
                           ("aware", PositiveAwareMNRL(gather_across_devices=True, contrast_positives=True))]:
            inputs = [e.detach()[rows].requires_grad_() for e in embeddings(3, rows=2 * B)]
            guide = [g[rows] for g in guide_embeddings(3, rows=2 * B)]
            value = loss(*inputs, guide=guide) if name == "gist" else loss(*inputs)
            value.backward()
            results[name] = value.detach(), [e.grad for e in inputs]


def _st_gist_on_rank(st_loss, inputs: list[torch.Tensor], guide: list[torch.Tensor], rank: int) -> torch.Tensor:
    """ST's GIST as rank ``rank`` of 2 computes it with the gather: its rows, the gather handing back whole columns."""
    local = [column[rank * B:(rank + 1) * B] for column in inputs]
    local_guide = [column[rank * B:(rank + 1) * B] for column in guide]
    full = {id(view): column for view, column in zip(local + local_guide, inputs + guide)}
    module = sys.modules[type(st_loss).__module__]
    features = [{"embedding": e, "guide": g} for e, g in zip(local, local_guide)]
    with mock.patch.object(module, "all_gather_with_grad", lambda t: full[id(t)]), \
            mock.patch.object(module, "get_rank", lambda: rank):
        return st_loss(features, None)


def test_gist_gathered_across_two_ranks_equals_sentence_transformers(st_gist, tmp_path):
    """2 gloo ranks: each rank's loss, and its rows' gradients of both ranks' losses, equal ST's GIST on that rank
    (the guide-free loss: ST's GIST with the model as its own guide)."""
    mp.spawn(_distributed_worker, args=(str(tmp_path),), nprocs=2)
    results = [torch.load(tmp_path / f"rank{rank}.pt") for rank in range(2)]
    inputs = embeddings(3, rows=2 * B)
    for name, st_loss, guide in [
            ("gist", st_gist(temperature=0.05, margin=0.05, gather_across_devices=True),
             guide_embeddings(3, rows=2 * B)),
            ("aware", st_gist(temperature=1 / 20, margin_strategy="relative", margin=0.05, contrast_anchors=False,
                              gather_across_devices=True), [e.detach() for e in inputs])]:
        rank_losses = [_st_gist_on_rank(st_loss, inputs, guide, rank) for rank in range(2)]
        grads = torch.autograd.grad(sum(rank_losses), inputs)
        for rank in range(2):
            loss, rank_grads = results[rank][name]
            torch.testing.assert_close(loss, rank_losses[rank].detach(), rtol=0, atol=1e-6)
            for rank_grad, grad in zip(rank_grads, grads, strict=True):
                torch.testing.assert_close(rank_grad, grad[rank * B:(rank + 1) * B], rtol=0, atol=1e-6)


# ---- whole fits: the guide loaded, its table built once and looked up, the card, the refusals ----

from tests.commands import NO_EXPORT, logged_rows, text_recipe, train_args  # noqa: E402
from train import cli_main  # noqa: E402

GIST = ["--model.loss.loss=losses.GISTEmbedLoss", "--model.loss.loss.temperature=0.05"]


@pytest.fixture(scope="module")
def triplets_dir(tmp_path_factory) -> str:
    """(anchor, positive, negative) rows where a negative is another row's positive, plus a validation split."""
    from conftest import qa_rows, write_jsonl

    directory = tmp_path_factory.mktemp("triplets")
    rows = qa_rows(41)
    write_jsonl(directory / "train.jsonl", [{**r, "negative": rows[i + 1]["positive"]}
                                            for i, r in enumerate(rows[:40])])
    write_jsonl(directory / "validation.jsonl", qa_rows(16, offset=1000))
    return str(directory)


def test_a_guided_fit_trains_exports_and_names_its_guide(tmp_path, tiny_bert_dir, no_dropout_bert, triplets_dir,
                                                         caplog):
    """GIST alone (no Matryoshka): its parameters, the guide's path among them, are on the card, which must hold no
    local path (the export refuses one): the guide shows as its folder's name."""
    recipe = [f for f in text_recipe(tiny_bert_dir, triplets_dir) if not f.startswith("--model.loss")]
    cli_main(train_args(*recipe, "--model.loss=losses.GISTEmbedLoss", "--model.loss.temperature=0.05",
                        f"--model.loss.guide={no_dropout_bert}", "--data.columns=[anchor, positive, negative]",
                        "--data.test_split=null", "--trainer.logger.name=gist", save_dir=tmp_path))
    # 40 anchors, 41 passages (a row's negative is the next row's positive)
    assert f"guide {no_dropout_bert}: 81 distinct training texts embedded once" in caplog.text
    run_dir = tmp_path / "gist" / "version_0"
    trained = [float(row["train/loss"]) for row in logged_rows(run_dir) if row.get("train/loss")]
    assert len(trained) >= 5 and all(value == value for value in trained)
    card = (run_dir / "model" / "README.md").read_text()
    assert "<code>GISTEmbedLoss</code>" in card and "@misc{solatorio2024gistembed," in card
    assert '"guide": "…/bert-no-dropout0"' in card and '"margin_strategy": "absolute"' in card
    from sentence_transformers import SentenceTransformer

    assert SentenceTransformer(str(run_dir / "model")).encode(["a query"]).shape == (1, 32)


def test_the_table_holds_what_the_guide_computes_for_the_batch(tiny_bert_dir, no_dropout_bert, triplets_dir):
    """The looked-up guide embeddings of a training batch are the guide's embeddings of its texts as the model reads
    them (prompts included), and the streamed path (tokens decoded, then embedded) gives the same here."""
    from datamodules.contract import DataNeeds
    from datamodules.pairs import PairDataModule
    from inference.models import load_model
    from lightning_modules.guide import Guides
    from lightning_modules.text_encoder import TextEncoder

    encoder = TextEncoder(tiny_bert_dir, max_length=64, prompts={"query": "query: "})
    data = PairDataModule(dataset=triplets_dir, columns=["anchor", "positive", "negative"], batch_size=8,
                          num_workers=0, test_split=None, prompts={"negative": "passage: "})
    data.connect(DataNeeds(encoder.processor))
    data.setup("fit")
    guides = Guides()
    guides.build({None: (no_dropout_bert, 16)}, data, torch.device("cpu"), 0, 1)
    batch = next(iter(data.train_dataloader()))
    looked_up = guides.embeddings(no_dropout_bert, batch, encoder.processor.tokenizer, torch.device("cpu"))
    texts = data.training_texts()
    position = {row: i for i, row in enumerate(texts.rows)}
    guide = load_model(no_dropout_bert, device="cpu")
    for c, prompt in enumerate(["query: ", "", "passage: "]):
        rows = [texts.columns[c][position[r]] for r in batch["rows"]]
        assert all(text.startswith(prompt) for text in rows)
        torch.testing.assert_close(looked_up[c], guide.encode_texts(rows), rtol=0, atol=1e-5)
    guides.tables[no_dropout_bert, None] = None  # as for streamed data: decoded from the batch's tokens
    decoded = guides.embeddings(no_dropout_bert, batch, encoder.processor.tokenizer, torch.device("cpu"))
    for ours, theirs in zip(decoded, looked_up, strict=True):
        torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-5)


@pytest.mark.slow  # a whole fit (or two); the default suite's guided fit and table test stay
def test_a_streamed_guided_fit_embeds_each_batch(tmp_path, tiny_bert_dir, no_dropout_bert, triplets_dir, caplog):
    cli_main(train_args(*text_recipe(tiny_bert_dir, triplets_dir), *GIST,
                        f"--model.loss.loss.guide={no_dropout_bert}", "--data.columns=[anchor, positive, negative]",
                        "--data.test_split=null", "--data.streaming=true", "--data.max_train_rows=40",
                        "--trainer.logger.name=streamed", NO_EXPORT, save_dir=tmp_path))
    assert "the training data streams, so the guide embeds each batch" in caplog.text
    trained = [float(row["train/loss"]) for row in logged_rows(tmp_path / "streamed" / "version_0")
               if row.get("train/loss")]
    assert trained and all(value == value for value in trained)


def test_a_positive_aware_fit_trains(tmp_path, tiny_bert_dir, triplets_dir):
    cli_main(train_args(*text_recipe(tiny_bert_dir, triplets_dir), "--model.loss.loss=losses.PositiveAwareMNRL",
                        "--data.columns=[anchor, positive, negative]", "--data.test_split=null",
                        "--trainer.logger.name=aware", save_dir=tmp_path))
    run_dir = tmp_path / "aware" / "version_0"
    card = (run_dir / "model" / "README.md").read_text()
    assert '"loss": "PositiveAwareMNRL"' in card and "@misc{moreira2024nvretriever," in card


def test_gist_without_a_guide_is_refused_naming_the_flag(capsys, tiny_bert_dir, triplets_dir):
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["fit", *text_recipe(tiny_bert_dir, triplets_dir), *GIST, "--trainer.fast_dev_run=1", NO_EXPORT])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2
    assert ("GISTEmbedLoss needs a guide model to screen each batch for false negatives: set "
            "--model.init_args.loss.init_args.loss.init_args.guide to a model litembed loads") in err, err


@pytest.mark.slow  # a whole fit (or two); the default suite's guided fit and table test stay
def test_a_guided_fit_with_gradcache_equals_the_plain_guided_fit(no_dropout_bert, tiny_bert_dir, triplets_dir):
    """CachedGISTEmbedLoss's promise: GradCache chunks change the memory, not the weights (the guide's embeddings
    are looked up for the whole batch either way)."""
    from tests.test_gradcache import fit_text

    guided = [*GIST, f"--model.loss.loss.guide={tiny_bert_dir}", "--data.columns=[anchor, positive, negative]"]
    plain = fit_text(no_dropout_bert, triplets_dir, *guided)
    cached = fit_text(no_dropout_bert, triplets_dir, *guided, "--model.gradcache_chunk_size=3")
    assert cached.trainer.global_step == plain.trainer.global_step > 0
    plain_weights = dict(plain.model.named_parameters())
    for name, value in cached.model.named_parameters():
        assert torch.allclose(value, plain_weights[name], rtol=0, atol=1e-5), name


@pytest.mark.slow  # a whole fit (or two); the default suite's guided fit and table test stay
def test_a_mixture_guides_the_source_whose_loss_is_gist(tmp_path, tiny_bert_dir, no_dropout_bert, triplets_dir,
                                                       pairs_dir, caplog):
    """A GIST loss for one source of a mixture: only that source's texts get a table; the other trains with MNRL."""
    import json

    sources = {"triplets": {"dataset": triplets_dir, "columns": ["anchor", "positive", "negative"],
                            "test_split": None},
               "pairs": {"dataset": pairs_dir, "test_split": None}}
    gist = {"triplets": {"class_path": "losses.GISTEmbedLoss",
                         "init_args": {"guide": no_dropout_bert, "temperature": 0.05}}}
    cli_main(train_args(*text_recipe(tiny_bert_dir, triplets_dir), f"--data.sources={json.dumps(sources)}",
                        f"--model.source_losses={json.dumps(gist)}", "--trainer.logger.name=mix", NO_EXPORT,
                        save_dir=tmp_path))
    assert f"source 'triplets': guide {no_dropout_bert}: 81 distinct training texts" in caplog.text
    assert "source 'pairs': guide" not in caplog.text
    rows = logged_rows(tmp_path / "mix" / "version_0")
    assert any(row.get("train/triplets_loss") for row in rows) and any(row.get("train/pairs_loss") for row in rows)
