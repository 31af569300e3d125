"""`encode.py` embeds a user's file with a trained model in any form (export, checkpoint, run folder) exactly as
sentence-transformers embeds it with the export; bad input is refused, with the file, row and columns, before any
model loads."""

import os
import shutil
import subprocess
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from PIL import Image

from conftest import write_jsonl, write_pairs_dir
from encode import main
from inference.inputs import read_inputs
from inference.models import ModuleEmbedder, SentenceTransformerEmbedder, load_model
from lightning_modules.clip import CLIPEmbeddingModule
from lightning_modules.clip_backends import OpenClip, TransformersClip
from lightning_modules.text import TextEmbeddingModule
from lightning_modules.text_encoder import TextEncoder
from tests.commands import text_recipe, train_args
from tests.tiny import TINY_HF_CLIP_CONFIG, TINY_OPEN_CLIP_CFG
from train import cli_main

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TEXTS = ["How do I sort a list?", "Reading files line by line in Python", "parse an ISO date",
         "a much longer text about sending mail with attachments through an SMTP server", "zip"]


def sentence_transformer(directory):
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(directory, device="cpu")


def written(output):
    return np.load(f"{output}.npy"), pq.read_table(f"{output}.parquet").to_pydict()


@pytest.fixture(scope="module")
def text_run(tmp_path_factory, tiny_bert_dir) -> str:
    """A two-step fit of the tiny BERT: <run>/checkpoints/last.ckpt (step 2) and <run>/model exported from it."""
    tmp = tmp_path_factory.mktemp("encode-fit")
    (tmp / "data").mkdir()
    data = write_pairs_dir(tmp / "data", train=16, validation=8, test=8)
    cli = cli_main(train_args(*text_recipe(tiny_bert_dir, data), "--trainer.max_steps=2", "--checkpoint_every_n_steps=2",
                              "--test_after_fit=false", "--model.evaluate_before_training=false",
                              "--model.encoder.max_length=64", save_dir=tmp))
    run = cli.trainer.log_dir
    assert os.path.isfile(os.path.join(run, "checkpoints", "last.ckpt"))
    assert os.path.isdir(os.path.join(run, "model"))
    return run


def write_txt(path, lines) -> str:
    path.write_text("".join(line + "\n" for line in lines))
    return str(path)


def test_cli_matches_sentence_transformers_on_the_export(tmp_path, text_run):
    """A subprocess, as a user runs it: blank lines skipped and counted, ids are file lines, ST's embeddings."""
    source = write_txt(tmp_path / "questions.txt", [TEXTS[0], "", *TEXTS[1:3], "   ", *TEXTS[3:]])
    output = str(tmp_path / "out" / "questions")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": ROOT}
    run = subprocess.run([sys.executable, os.path.join(ROOT, "encode.py"), "--model", os.path.join(text_run, "model"),
                          "--input", source, "--output", output, "--batch_size", "2", "--device", "cpu"],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.splitlines() == [f"Wrote 5 embeddings of dim 32 to {output}.npy (+ .parquet with ids)"]
    assert f"Skipped 2 blank line(s) of {source}" in run.stderr
    assert "Embedding texts" in run.stderr  # the progress bar
    embeddings, items = written(output)
    assert embeddings.dtype == np.float32 and embeddings.shape == (5, 32)
    assert items == {"id": [1, 3, 4, 6, 7], "text": TEXTS}
    expected = sentence_transformer(os.path.join(text_run, "model")).encode(TEXTS, normalize_embeddings=True)
    np.testing.assert_allclose(embeddings, expected, atol=1e-5, rtol=0)


def test_checkpoint_and_run_folder_embed_like_the_export(tmp_path, text_run, tiny_bert_dir):
    export = sentence_transformer(os.path.join(text_run, "model"))
    expected = export.encode(TEXTS, normalize_embeddings=True, convert_to_tensor=True)
    checkpoint = os.path.join(text_run, "checkpoints", "last.ckpt")
    from_checkpoint = load_model(checkpoint, "cpu")
    assert isinstance(from_checkpoint, ModuleEmbedder) and from_checkpoint.dim == 32
    torch.testing.assert_close(from_checkpoint.encode_texts(TEXTS, batch_size=2), expected, atol=1e-5, rtol=0)
    assert not torch.allclose(load_model(tiny_bert_dir, "cpu").encode_texts(TEXTS), expected, atol=1e-3)  # trained
    # Matryoshka: the prefix, renormalised, as sentence-transformers' truncate_dim
    torch.testing.assert_close(from_checkpoint.encode_texts(TEXTS, truncate_dim=8),
                               export.encode(TEXTS, normalize_embeddings=True, truncate_dim=8, convert_to_tensor=True),
                               atol=1e-5, rtol=0)

    assert isinstance(load_model(text_run, "cpu"), SentenceTransformerEmbedder)  # a run folder: its export first
    bare_run = tmp_path / "run"
    os.makedirs(bare_run / "checkpoints")
    shutil.copy(os.path.join(text_run, "config.yaml"), bare_run)
    shutil.copy(checkpoint, bare_run / "checkpoints")
    output = str(tmp_path / "from_run")
    main(["--model", str(bare_run), "--input", write_txt(tmp_path / "t.txt", TEXTS), "--output", output])
    embeddings, items = written(output)
    np.testing.assert_allclose(embeddings, expected.numpy(), atol=1e-5, rtol=0)
    assert items["id"] == [1, 2, 3, 4, 5]


def test_prompts_as_sentence_transformers_applies_them(tmp_path, tiny_bert_dir):
    encoder = TextEncoder(tiny_bert_dir, max_length=64, prompts={"query": "query: "})
    module = TextEmbeddingModule(encoder)
    encoder.save(str(tmp_path / "model"))
    export = sentence_transformer(str(tmp_path / "model"))
    ours = ModuleEmbedder("module", module, torch.device("cpu"))
    for prompt_name in (None, "query"):
        expected = export.encode(TEXTS, prompt_name=prompt_name, normalize_embeddings=True, convert_to_tensor=True)
        torch.testing.assert_close(ours.encode_texts(TEXTS, prompt_name=prompt_name), expected, atol=1e-5, rtol=0)
    assert not torch.allclose(ours.encode_texts(TEXTS, prompt_name="query"), ours.encode_texts(TEXTS))
    with pytest.raises(ValueError, match=r"prompt 'passage': module has the prompts \['document', 'query'\]"):
        ours.encode_texts(TEXTS, prompt_name="passage")


def write_images(folder) -> list[str]:
    """Three small PNGs, one in a subfolder; returns their paths relative to ``folder``, sorted."""
    names = ["b.png", "a.png", "sub/c.png"]
    for i, name in enumerate(names):
        os.makedirs(os.path.dirname(os.path.join(folder, name)), exist_ok=True)
        pixels = np.random.default_rng(i).integers(0, 256, (40, 48, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(os.path.join(folder, name))
    return sorted(names)


def test_clip_images_and_captions_match_sentence_transformers(tmp_path):
    torch.manual_seed(0)
    module = CLIPEmbeddingModule(TransformersClip(config=TINY_HF_CLIP_CONFIG))
    module.export(str(tmp_path / "model"))
    export = sentence_transformer(str(tmp_path / "model"))
    names = write_images(tmp_path / "images")
    # an imagefolder's metadata: passed over, as training passes over it (counted)
    write_jsonl(tmp_path / "images" / "metadata.jsonl", [{"file_name": "a.png", "caption": "a red square"}])
    output = str(tmp_path / "images_out")
    main(["--model", str(tmp_path / "model"), "--input", str(tmp_path / "images"), "--output", output,
          "--batch_size", "2"])
    embeddings, items = written(output)
    assert items == {"id": names, "file": [os.path.join(str(tmp_path / "images"), n) for n in names]}
    images = [Image.open(path).convert("RGB") for path in items["file"]]
    expected = export.encode(images, normalize_embeddings=True)
    np.testing.assert_allclose(embeddings, expected, atol=1e-4, rtol=0)

    # the module itself (what a CLIP checkpoint loads into) embeds images and captions as the export
    ours = ModuleEmbedder("module", module, torch.device("cpu"))
    np.testing.assert_allclose(ours.encode_images(items["file"], batch_size=2).numpy(), expected, atol=1e-4, rtol=0)
    captions = ["a red square", "two dogs on a beach", "x"]
    torch.testing.assert_close(ours.encode_texts(captions), export.encode(
        captions, normalize_embeddings=True, convert_to_tensor=True), atol=1e-5, rtol=0)


def test_open_clip_export_embeds_as_its_module(tmp_path):
    torch.manual_seed(0)
    module = CLIPEmbeddingModule(OpenClip(model_cfg=TINY_OPEN_CLIP_CFG))
    module.export(str(tmp_path / "model"))
    loaded = load_model(str(tmp_path / "model"), "cpu")
    ours = ModuleEmbedder("module", module, torch.device("cpu"))
    files = [str(tmp_path / "images" / name) for name in write_images(tmp_path / "images")]
    torch.testing.assert_close(loaded.encode_images(files), ours.encode_images(files), atol=1e-5, rtol=0)
    torch.testing.assert_close(loaded.encode_texts(TEXTS), ours.encode_texts(TEXTS), atol=1e-5, rtol=0)


def test_text_model_refuses_images(tmp_path, text_run, capsys):
    write_images(tmp_path / "images")
    with pytest.raises(SystemExit) as exit_info:
        main(["--model", os.path.join(text_run, "model"), "--input", str(tmp_path / "images"), "--output",
              str(tmp_path / "out")])
    assert exit_info.value.code == 2
    assert "is a text model: it cannot embed images; use a CLIP model" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--model", os.path.join(text_run, "model"), "--input", write_txt(tmp_path / "t.txt", TEXTS),
              "--output", str(tmp_path / "out"), "--truncate_dim", "64"])
    assert "truncate_dim must be in 1…32 (the embedding size of" in capsys.readouterr().err


def test_tables_columns_and_ids(tmp_path):
    rows = [{"question": t, "qid": f"q{i}", "score": i} for i, t in enumerate(TEXTS)]
    write_jsonl(tmp_path / "q.jsonl", rows)
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "q.parquet")
    (tmp_path / "q.csv").write_text("qid,question\n" + "".join(f'q{i},"{t}"\n' for i, t in enumerate(TEXTS)))
    for name in ("q.jsonl", "q.parquet", "q.csv"):
        inputs = read_inputs(str(tmp_path / name), column="question", id_column="qid")
        assert inputs.items == TEXTS and inputs.ids == [f"q{i}" for i in range(5)], name
    assert read_inputs(str(tmp_path / "q.parquet"), column="question").ids == [1, 2, 3, 4, 5]  # counting from 1
    assert read_inputs(str(tmp_path / "q.jsonl"), column="question").ids == [1, 2, 3, 4, 5]  # file lines
    write_jsonl(tmp_path / "one.jsonl", [{"text": "a", "n": 1}, {"text": "b", "n": 2}])
    assert read_inputs(str(tmp_path / "one.jsonl")).items == ["a", "b"]  # its only string column


def test_missing_or_ambiguous_column_lists_the_columns(tmp_path):
    write_jsonl(tmp_path / "q.jsonl", [{"question": "a", "answer": "b", "n": 1}])
    with pytest.raises(ValueError, match=r"--column 'text': .*q.jsonl has no such column; its columns are "
                                         r"\['question', 'answer', 'n'\]"):
        read_inputs(str(tmp_path / "q.jsonl"), column="text")
    with pytest.raises(ValueError, match=r"pass --column to name the text column; the string columns are "
                                         r"\['question', 'answer'\]"):
        read_inputs(str(tmp_path / "q.jsonl"))
    with pytest.raises(ValueError, match=r"--id_column 'id': .*no such column"):
        read_inputs(str(tmp_path / "q.jsonl"), column="question", id_column="id")
    with pytest.raises(ValueError, match=r"--column does not apply to a \.txt file"):
        read_inputs(write_txt(tmp_path / "t.txt", ["a"]), column="text")


def test_bad_rows_are_named_by_line_or_skipped_and_counted(tmp_path):
    path = tmp_path / "q.jsonl"
    path.write_text('{"text": "fine"}\n\n{"text": ""}\n{"text": 5}\n{"other": "x"}\nnot json\n{"text": "also fine"}\n')
    with pytest.raises(ValueError, match=r"pass --column .* the string columns are \['text', 'other'\]"):
        read_inputs(str(path))  # a bad value does not hide the text column
    with pytest.raises(ValueError) as err:
        read_inputs(str(path), column="text")
    message = str(err.value)
    assert message.startswith(f"--input {path}: 4 bad row(s): line 3: column 'text' is empty; line 4: column 'text' "
                              f"holds int 5, not a text; line 5: no value in column 'text'; line 6: not valid "
                              f"JSON")
    assert message.endswith("Fix or remove them, or pass --skip_bad_rows to skip them")
    inputs = read_inputs(str(path), column="text", skip_bad_rows=True)
    assert inputs.items == ["fine", "also fine"] and inputs.ids == [1, 7]
    assert len(inputs.skipped) == 4 and inputs.blank_lines == 1
    assert inputs.summary().startswith(f"Skipped 1 blank line(s) of {path}; skipped 4 bad row(s) (--skip_bad_rows): "
                                       f"line 3: column 'text' is empty")

    write_jsonl(tmp_path / "many.jsonl", [{"text": ""}] * 12 + [{"text": "ok"}])
    with pytest.raises(ValueError, match=r"12 bad row\(s\): line 1: .*line 10: column 'text' is empty; and 2 more\."):
        read_inputs(str(tmp_path / "many.jsonl"))
    write_jsonl(tmp_path / "dup.jsonl", [{"text": "a", "id": 1}, {"text": "b", "id": 1}])
    with pytest.raises(ValueError, match=r"--id_column 'id': ids must be unique; 1 id\(s\) of .* repeat: \[1\]"):
        read_inputs(str(tmp_path / "dup.jsonl"), id_column="id")


def test_unreadable_images_are_named_or_skipped(tmp_path):
    names = write_images(tmp_path)
    (tmp_path / "broken.png").write_bytes(b"\x89PNG not really")
    with pytest.raises(ValueError, match=r"1 unreadable or non-image file\(s\): broken.png \(.*broken.png\): not an image"):
        read_inputs(str(tmp_path))
    inputs = read_inputs(str(tmp_path), skip_bad_rows=True)
    assert inputs.ids == names and len(inputs.skipped) == 1
    assert "Skipped 1 bad row(s) (--skip_bad_rows): broken.png" in inputs.summary()


def test_an_image_folder_reads_what_training_reads_and_reports_what_it_skips(tmp_path, capsys):
    """GIF and TIFF files train (HF's imagefolder reads them), so they embed; a file that is not an image is a bad row;
    an imagefolder's metadata and hidden files are passed over as training passes over them, and counted."""
    names = write_images(tmp_path / "photos")
    pixels = np.random.default_rng(7).integers(0, 256, (40, 48, 3), dtype=np.uint8)
    Image.fromarray(pixels).convert("P").save(tmp_path / "photos" / "d.gif")
    Image.fromarray(pixels).save(tmp_path / "photos" / "sub" / "e.tiff")
    write_jsonl(tmp_path / "photos" / "metadata.jsonl", [{"file_name": "a.png", "caption": "a"}])
    (tmp_path / "photos" / ".DS_Store").write_bytes(b"\0")
    (tmp_path / "photos" / "notes.txt").write_text("not an image")
    with pytest.raises(SystemExit):
        main(["--model", "m", "--input", str(tmp_path / "photos"), "--output", str(tmp_path / "out")])
    assert ("1 unreadable or non-image file(s): notes.txt: not an image file; the image files read are .jpg/.png/"
            ".webp/.gif/.tiff/.bmp/… (the image files training reads from a folder). Fix or remove them, or pass "
            "--skip_bad_rows to skip them") in capsys.readouterr().err
    inputs = read_inputs(str(tmp_path / "photos"), skip_bad_rows=True)
    assert inputs.ids == sorted(names + ["d.gif", "sub/e.tiff"])
    assert inputs.summary() == (f"Skipped 2 metadata or hidden file(s) of {tmp_path / 'photos'}: .DS_Store, "
                                f"metadata.jsonl; skipped 1 bad row(s) (--skip_bad_rows): notes.txt: not an image "
                                f"file; the image files read are .jpg/.png/.webp/.gif/.tiff/.bmp/… (the image files "
                                f"training reads from a folder)")


def test_input_errors_come_before_the_model_loads(tmp_path, capsys):
    write_jsonl(tmp_path / "q.jsonl", [{"question": "a"}])
    with pytest.raises(SystemExit):  # the model does not exist either: the input's error is the one reported
        main(["--model", str(tmp_path / "no-model"), "--input", str(tmp_path / "q.jsonl"), "--column", "text",
              "--output", str(tmp_path / "out")])
    assert "--column 'text'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--model", "m", "--input", str(tmp_path / "missing.txt"), "--output", str(tmp_path / "out")])
    assert f"--input {tmp_path / 'missing.txt'}: no such file or folder" in capsys.readouterr().err
    assert not os.path.exists(tmp_path / "out.npy")


def test_load_model_says_what_it_accepts(tmp_path):
    with pytest.raises(ValueError, match=r"--model '.*no/such/model': no such file or folder .*accepted: an exported"):
        load_model(str(tmp_path / "no" / "such" / "model"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match=r"the folder holds no model .*modules.json"):
        load_model(str(tmp_path / "empty"))
    (tmp_path / "weights.bin").write_bytes(b"")
    with pytest.raises(ValueError, match=r"is a file but not a Lightning checkpoint \(\.ckpt\)"):
        load_model(str(tmp_path / "weights.bin"))
    os.makedirs(tmp_path / "elsewhere")
    (tmp_path / "elsewhere" / "x.ckpt").write_bytes(b"")
    with pytest.raises(ValueError, match=r"rebuilt from its run's config.yaml, and .* does not exist"):
        load_model(str(tmp_path / "elsewhere" / "x.ckpt"))
    with pytest.raises(ValueError, match=r"'no-such-model' is neither a local path nor in the Hugging Face cache, .*"
                                         r"Accepted: an exported model directory"):
        load_model("no-such-model")  # HF_HUB_OFFLINE=1 (conftest)
    with pytest.raises(ValueError, match=r"package 'not_a_package' is not installed"):
        load_model("pkg:not_a_package")
