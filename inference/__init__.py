"""Using a trained model: embed files (encode.py) and mine hard negatives (mine.py)."""
