"""Write what a run leaves behind from its folder: the plots and the exported model's card.

``python -m reporting <run folder>`` rebuilds them (after a resume, or after editing the card's facts in
``report.json``; a folder without ``report.json`` from its ``config.yaml``, ``metrics.csv`` and export); the end of ``train.py fit`` (and of the test that follows it) calls the same ``write_report``.
"""

import json
import os
import re
import shutil

from reporting.card import render_card
from reporting.collect import REPORT, build_card, facts_from_run_folder
from reporting.metrics_log import MetricsLog, metrics_path, read_metrics
from reporting.plots import write_plots

CARD = "README.md"
# train.py validate, test and predict log into <run>/<subcommand>/version_N (or <save_dir>/<name>/<subcommand>/…)
EVALUATIONS = ("validate", "test", "predict")


def evaluation_problem(folder: str) -> str | None:
    """What ``python -m reporting`` says of a folder an evaluation wrote (a report is a fit run's), or None."""
    parent, version = os.path.split(os.path.normpath(folder))
    evaluated, subcommand = os.path.split(parent)
    if subcommand not in EVALUATIONS or not re.fullmatch(r"version_\d+", version):
        return None
    if os.path.isdir(os.path.join(evaluated, "checkpoints")):
        return (f"{folder} is the folder of a train.py {subcommand} of the fit run {evaluated}, not a fit run; pass "
                f"{evaluated}")
    return (f"{folder} is the folder of a train.py {subcommand} (of no fit run's checkpoint), not a fit run; pass the "
            f"folder of a fit run (runs/<name>/version_<n>)")


def save_facts(run_dir: str, facts: dict) -> str:
    """Write ``<run>/report.json`` whole or not at all: a value JSON cannot hold fails before the file is touched, and
    the file is written aside and renamed, so no half-written file is left for ``python -m reporting`` to choke on."""
    path = os.path.join(run_dir, REPORT)
    text = json.dumps(facts, indent=2)
    with open(f"{path}.tmp", "w") as f:
        f.write(text)
    os.replace(f"{path}.tmp", path)
    return path


def write_report(run_dir: str) -> dict[str, object]:
    """Plots from ``<run>/metrics.csv`` into the run folder (and beside the card, so its links work once the model
    folder is uploaded alone), then the card into the exported model's folder. Returns their paths, and under
    ``"not_recorded"`` what the card lacks when ``report.json`` was missing and was rebuilt from the folder (and saved).

    Raises:
        ValueError: ``run_dir`` is not a run folder (an evaluation's, say), or holds no export (the message says
            what it should hold).
    """
    if not os.path.isdir(run_dir):
        raise ValueError(f"{run_dir}: no such folder; pass a run folder (runs/<name>/version_<n>)")
    if problem := evaluation_problem(run_dir):
        raise ValueError(problem)
    if os.path.isfile(os.path.join(run_dir, REPORT)):
        with open(os.path.join(run_dir, REPORT)) as f:
            facts = json.load(f)
    else:
        facts = facts_from_run_folder(run_dir)
        save_facts(run_dir, facts)
    # a run that logged nothing (logger off, or fewer steps than the logging interval) still gets its card
    log = read_metrics(run_dir) if os.path.isfile(metrics_path(run_dir)) else MetricsLog()
    export_dir = os.path.join(run_dir, facts["export_dir"])
    plots = write_plots(run_dir, log)
    for plot in plots:
        shutil.copy(plot, export_dir)
    card = build_card(run_dir, facts, log, [os.path.join(export_dir, os.path.basename(p)) for p in plots])
    path = os.path.join(export_dir, CARD)
    with open(path, "w") as f:
        f.write(render_card(card))
    return {"card": path, "plots": plots, "model": export_dir, "not_recorded": facts.get("not_recorded", [])}
