"""``python -m reporting <run folder>``: rebuild the run's plots and its exported model's card."""

import argparse

from reporting.report import write_report


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m reporting", description=__doc__)
    parser.add_argument("run", help="a run folder, e.g. runs/demo-text/version_0 (it holds metrics.csv and report.json)")
    written = write_report(parser.parse_args(argv).run)
    print(f"Model card: {written['card']}")
    for plot in written["plots"]:
        print(f"Plot:       {plot}")


if __name__ == "__main__":
    main()
