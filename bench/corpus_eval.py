"""Retrieval evaluation at corpus scale: litembed's metrics vs sentence-transformers' InformationRetrievalEvaluator.

Both score the same given embeddings (no model: ST's evaluator gets a stub whose ``encode_query`` returns the query
embeddings, and the corpus embeddings as ``corpus_embeddings``, so it runs only its scoring and metrics). Each run
is a fresh process (peak memory is per process), alternating ST, litembed, ST, litembed… after one uncounted warm-up
pair of smaller size; each figure is the median over rounds, each ratio the median of the rounds' ratios.

    python bench/corpus_eval.py                                  # 10,000 × 1,000,000, D = 384, 2 rounds
    python bench/corpus_eval.py --queries 2000 --corpus 200000   # a quicker look
    python bench/corpus_eval.py --shards 2 --threads 1           # + litembed sharded over 2 gloo processes

Memory: peak RSS (VmHWM) during the scoring − RSS at its start, the embeddings loaded (the scoring's own working
memory; the peak is reset through /proc/self/clear_refs).
``--shards N`` runs litembed's sharded path: N processes (gloo), each holding all queries and 1/N of the corpus,
merging top-k lists, against the same code in one process, at ``--threads`` threads per process.
"""

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def reset_peak() -> float:
    """Reset this process's peak RSS to its current RSS (Linux ``clear_refs``); returns that RSS in MB."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    return rss_mb("VmRSS")


def rss_mb(field: str) -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field):
                return int(line.split()[1]) / 1024
    raise RuntimeError(field)


def make_data(path: str, n_queries: int, n_corpus: int, dim: int, seed: int = 0) -> None:
    """Float32 embeddings where each query's relevant doc is a noisy copy of it (a realistic, non-trivial top-k)."""
    if os.path.exists(path):
        return
    rng = np.random.default_rng(seed)
    corpus = rng.standard_normal((n_corpus, dim), dtype=np.float32)
    relevant = rng.choice(n_corpus, n_queries, replace=False)
    queries = corpus[relevant] + 1.5 * rng.standard_normal((n_queries, dim), dtype=np.float32)
    np.savez(path + ".tmp.npz", queries=queries, corpus=corpus, relevant=relevant)
    os.replace(path + ".tmp.npz", path)


def child(args: argparse.Namespace) -> None:
    """One timed run in this process; prints a JSON line."""
    import torch

    torch.set_num_threads(args.threads)
    data = np.load(args.data)
    queries, corpus = torch.from_numpy(data["queries"]), torch.from_numpy(data["corpus"])
    relevant = [{int(d)} for d in data["relevant"]]
    if args.tool == "st":
        from sentence_transformers import util
        from sentence_transformers.sentence_transformer.evaluation import InformationRetrievalEvaluator

        q_ids = [f"q{i:07d}" for i in range(len(queries))]
        c_ids = [f"c{i:07d}" for i in range(len(corpus))]

        class Stub:  # "encodes" the queries to their given embeddings
            def encode_query(self, sentences, **kwargs):
                return queries

        evaluator = InformationRetrievalEvaluator(
            dict(zip(q_ids, q_ids)), dict(zip(c_ids, c_ids)),
            {q_ids[q]: {c_ids[d] for d in rel} for q, rel in enumerate(relevant)},
            score_functions={"cosine": util.cos_sim}, show_progress_bar=False)
        base = reset_peak()  # the embeddings and the evaluator's id dicts are not scoring memory
        start = time.perf_counter()
        scores = evaluator.compute_all_metrics(Stub(), corpus_embeddings=corpus)["cosine"]
        seconds = time.perf_counter() - start
        metrics = {f"cosine_{m.replace('@k', f'@{k}')}": float(v) for m, vs in scores.items() for k, v in vs.items()}
    else:
        from metrics.functional import information_retrieval_metrics

        gather, ids, size = None, None, None
        if args.shards > 1:
            import torch.distributed as dist

            rank = int(os.environ["RANK"])
            dist.init_process_group("gloo", rank=rank, world_size=args.shards)
            ids = torch.arange(rank, len(corpus), args.shards)  # the evaluation loaders' assignment
            corpus, size = corpus[ids].clone(), len(corpus)
            del data

            def gather(tensor):
                parts = [torch.empty_like(tensor) for _ in range(args.shards)]
                dist.all_gather(parts, tensor.contiguous())
                return torch.stack(parts)

            dist.barrier()
        base = reset_peak()  # the embeddings (this process's shard) are not scoring memory
        start = time.perf_counter()
        metrics = information_retrieval_metrics(queries, corpus, relevant, corpus_ids=ids, corpus_size=size,
                                                gather=gather)
        seconds = time.perf_counter() - start
    print(json.dumps({"seconds": seconds, "memory_mb": rss_mb("VmHWM") - base, "metrics": metrics}))


def run(tool: str, args: argparse.Namespace, data: str, shards: int = 1) -> dict:
    command = [sys.executable, __file__, "--child", "--tool", tool, "--data", data, "--threads", str(args.threads),
               "--shards", str(shards)]
    env = {**os.environ, "PYTHONPATH": ROOT}
    if shards == 1:
        out = subprocess.run(command, capture_output=True, text=True, env=env)
        if out.returncode:
            sys.exit(out.stderr[-3000:])
        return json.loads(out.stdout.strip().splitlines()[-1])
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    procs = [subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env={**env, "RANK": str(r), "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port)})
             for r in range(shards)]
    results = []
    for p in procs:
        stdout, stderr = p.communicate()
        if p.returncode:
            sys.exit(stderr[-3000:])
        results.append(json.loads(stdout.strip().splitlines()[-1]))
    assert all(r["metrics"] == results[0]["metrics"] for r in results), "ranks disagree"
    return {"seconds": max(r["seconds"] for r in results), "memory_mb": max(r["memory_mb"] for r in results),
            "metrics": results[0]["metrics"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--queries", type=int, default=10_000)
    parser.add_argument("--corpus", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--shards", type=int, default=1, help="also time litembed sharded over this many processes")
    parser.add_argument("--skip-st", action="store_true", help="litembed only (e.g. for the sharded comparison)")
    parser.add_argument("--cache", default="/tmp/litembed-bench")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--tool", help=argparse.SUPPRESS)
    parser.add_argument("--data", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        return child(args)

    os.makedirs(args.cache, exist_ok=True)
    data = os.path.join(args.cache, f"corpus-{args.queries}x{args.corpus}x{args.dim}.npz")
    warm = os.path.join(args.cache, f"corpus-500x20000x{args.dim}.npz")
    make_data(data, args.queries, args.corpus, args.dim)
    make_data(warm, 500, 20_000, args.dim)
    tools = ([] if args.skip_st else ["st"]) + ["litembed"]
    for tool in tools:  # warm-up: file cache, imports
        run(tool, args, warm)
    rows = {tool: [] for tool in tools}
    sharded = []
    for r in range(args.rounds):
        for tool in tools:
            rows[tool].append(run(tool, args, data))
            print(f"round {r + 1} {tool}: {rows[tool][-1]['seconds']:.1f} s, {rows[tool][-1]['memory_mb']:.0f} MB",
                  flush=True)
        if args.shards > 1:
            sharded.append(run("litembed", args, data, args.shards))
            print(f"round {r + 1} litembed over {args.shards} processes: {sharded[-1]['seconds']:.1f} s, "
                  f"{sharded[-1]['memory_mb']:.0f} MB per process", flush=True)
    ours = rows["litembed"][0]["metrics"]
    print(f"\n{args.queries:,} queries × {args.corpus:,} documents, D = {args.dim}, {args.threads} threads per process, "
          f"{args.rounds} rounds (medians)")
    print("| run | seconds | scoring memory (MB) | ratio to ST (time) |")
    print("|---|--:|--:|--:|")
    for tool in tools:
        seconds = statistics.median(r["seconds"] for r in rows[tool])
        memory = statistics.median(r["memory_mb"] for r in rows[tool])
        ratio = ("" if tool == "st" or "st" not in rows else
                 f"{statistics.median(s['seconds'] / o['seconds'] for s, o in zip(rows['st'], rows[tool])):.2f}×")
        print(f"| {tool} | {seconds:.1f} | {memory:.0f} | {ratio} |")
    if sharded:
        seconds = statistics.median(r["seconds"] for r in sharded)
        memory = statistics.median(r["memory_mb"] for r in sharded)
        speedup = statistics.median(o["seconds"] / s["seconds"] for s, o in zip(sharded, rows["litembed"]))
        print(f"| litembed, {args.shards} processes | {seconds:.1f} | {memory:.0f} per process | "
              f"{speedup:.2f}× one process |")
        assert all(r["metrics"] == ours for r in sharded), "sharded metrics differ from one process"
        print("sharded metrics identical to one process: yes")
    if "st" in rows:
        theirs = rows["st"][0]["metrics"]
        worst = max(abs(ours[k] - theirs[k]) for k in theirs)
        print(f"metrics: same keys {list(ours) == list(theirs)}, largest difference to ST {worst:.2e}")


if __name__ == "__main__":
    main()
