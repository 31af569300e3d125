"""Plain-text metric tables for the console."""


SUMMARY_METRICS = ("accuracy@1", "ndcg@10", "mrr@10", "map@100")


def format_table(columns: dict[str, dict[str, float]], stage: str) -> str:
    """Plain-text table of the headline metrics (all are logged): one row each, one column per evaluation."""
    keys = [k for k in next(iter(columns.values())) if k.endswith(SUMMARY_METRICS)]
    names = [k.removeprefix(f"{stage}/") for k in keys]
    width = max(len(n) for n in names)
    lines = [f"{'metric':<{width}}  " + "  ".join(f"{c:>12}" for c in columns)]
    for key, name in zip(keys, names):
        lines.append(f"{name:<{width}}  " + "  ".join(f"{m.get(key, float('nan')):>12.4f}" for m in columns.values()))
    return "\n".join(lines)
