"""Particle picking: the sparse-label positive-unlabeled (PU) picker and template matching.

* :mod:`.model` - per-slice 2D U-Net with 3D fusion layers (heatmap + contrastive heads)
* :mod:`.targets` - CenterNet Gaussian targets, unlabelled = -1
* :mod:`.losses` - non-negative PU focal risk, debiased contrastive, consistency
* :mod:`.train` - the training job (continue-able, cancellable, with live previews)
* :mod:`.infer` - tiled inference, NMS by 3D max-pooling, :class:`Picks`
* :mod:`.metrics` - precision / recall / F1 with greedy matching, average precision
* :mod:`.template` - FFT template matching over a rotation grid (the classical baseline)
* :mod:`.label_template` - a template averaged from the labelled particles (no map needed)
* :mod:`.lookalikes` - look-alikes found by their fit to the labels' average (the default recipe, :mod:`.fit`)
* :mod:`.shape_check` - each pick weighed by its fit to the labels' average at inference
* :mod:`.modelio` - model files (``torch.save`` + header, ``weights_only`` loading)
"""

from .infer import Heatmap, Picks, find_peaks, heatmap_to_input_grid, pick, pick_job, predict_heatmap, predict_heatmap_job
from .metrics import PRF, MatchResult, average_precision, best_f1, match_picks, precision_recall_f1
from .model import NetConfig, PickerNet
from .modelio import load_picker, save_picker
from .picker import Picker
from .train import DEFAULT_CLASS_PRIOR, DEFAULT_ITERATIONS, TrainResult, calibrated_threshold, train_picker, train_picker_job

__all__ = [
    "Picker", "NetConfig", "PickerNet", "TrainResult", "train_picker_job", "train_picker",
    "DEFAULT_ITERATIONS", "DEFAULT_CLASS_PRIOR", "calibrated_threshold", "Picks", "Heatmap", "predict_heatmap_job",
    "predict_heatmap", "find_peaks", "pick_job", "pick", "heatmap_to_input_grid", "PRF", "MatchResult",
    "match_picks", "precision_recall_f1", "average_precision", "best_f1", "save_picker", "load_picker",
]
