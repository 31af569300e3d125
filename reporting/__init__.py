"""What a run leaves behind: the model card, plots and tables, read from the run folder and its metrics log."""
