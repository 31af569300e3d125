"""``python -m reporting <run folder>``: rebuild the run's plots and its exported model's card."""

import argparse
import sys

from reporting.collect import REPORT
from reporting.report import write_report


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m reporting", description=__doc__)
    parser.add_argument("run", help="a run folder, e.g. runs/demo-text/version_0 (it holds metrics.csv and report.json)")
    run = parser.parse_args(argv).run
    try:
        written = write_report(run)
    except ValueError as err:
        sys.stderr.write(f"error: {err}\n")
        raise SystemExit(2) from None  # exit code 2 for bad input, as train.py
    if written["not_recorded"]:
        print(f"The {REPORT} of {run} was rebuilt from config.yaml, metrics.csv and the export, so the card lacks what "
              f"only the training process knew: {', '.join(written['not_recorded'])}", file=sys.stderr)
    print(f"Model card: {written['card']}")
    for plot in written["plots"]:
        print(f"Plot:       {plot}")


if __name__ == "__main__":
    main()
