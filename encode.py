"""Embed a file with a trained model: ``python encode.py --model runs/demo-text/version_0/model --input questions.txt
--output out/questions`` writes ``out/questions.npy`` ((N, D) float32) and ``out/questions.parquet`` (``id`` and
``text``, or ``file`` for a folder of images), row for row. ``--model`` also takes ``pkg:<package>``, a hub name, a
checkpoint ``<run>/checkpoints/*.ckpt`` or a run folder (``inference.models.load_model``)."""

import argparse
import os
import sys

from inference.inputs import output_paths, read_inputs, save_embeddings

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True,
                        help="exported model folder, hub name, pkg:<package>, <run>/checkpoints/*.ckpt or run folder")
    parser.add_argument("--input", required=True,
                        help=".txt (one text per line), .jsonl/.json/.csv/.tsv/.parquet, or a folder of images")
    parser.add_argument("--output", required=True, help="writes <output>.npy and <output>.parquet")
    parser.add_argument("--column", help="the text column of a table (default: its only string column)")
    parser.add_argument("--id_column", help="a column of unique ids (default: the line, or row counting from 1)")
    parser.add_argument("--batch_size", type=int, default=64, help="items per forward pass")
    parser.add_argument("--truncate_dim", type=int, help="keep the first this many dimensions (Matryoshka models)")
    parser.add_argument("--prompt_name", help="prepend the model's prompt of this name, e.g. query (default: none)")
    parser.add_argument("--device", help="cpu, cuda, cuda:1… (default: cuda if available)")
    parser.add_argument("--no_normalize", action="store_true", help="skip the final L2 normalisation")
    parser.add_argument("--skip_bad_rows", action="store_true", help="skip (and count) bad rows instead of failing")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    try:  # everything about the input is checked before the model loads: errors come in seconds
        if args.batch_size < 1 or (args.truncate_dim is not None and args.truncate_dim < 1):
            raise ValueError("--batch_size and --truncate_dim must be ≥ 1")
        inputs = read_inputs(args.input, args.column, args.id_column, args.skip_bad_rows)
        if inputs.summary():
            print(inputs.summary(), file=sys.stderr)
        os.makedirs(os.path.dirname(output_paths(args.output)[0]) or ".", exist_ok=True)
        from inference.models import load_model  # torch and the model libraries load only for valid input

        embedder = load_model(args.model, args.device)
        options = dict(batch_size=args.batch_size, show_progress=True, truncate_dim=args.truncate_dim,
                       normalize=not args.no_normalize)
        if inputs.kind == "image":
            embeddings = embedder.encode_images(inputs.items, **options)
        else:
            embeddings = embedder.encode_texts(inputs.items, prompt_name=args.prompt_name, **options)
    except ValueError as err:
        sys.stderr.write(f"error: {err}\n")
        raise SystemExit(2) from None  # exit code 2 for bad input, as train.py
    npy, _ = save_embeddings(args.output, embeddings, inputs)
    print(f"Wrote {len(embeddings)} embeddings of dim {embeddings.shape[1]} to {npy} (+ .parquet with ids)")


if __name__ == "__main__":
    main()
