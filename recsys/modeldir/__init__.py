"""Model dirs: what `train` writes (`recsys.modeldir.save`) and everything else reads (`recsys.modeldir.load`)."""

from recsys.modeldir.load import ModelDir, Predictor, read_meta, tower_outputs

__all__ = ["ModelDir", "Predictor", "read_meta", "tower_outputs"]
