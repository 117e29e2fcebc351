"""Subtomogram alignment and averaging.

* :mod:`.types` -- :class:`AlignmentResult`, shared by all aligners;
* :mod:`.scoring` -- missing-wedge-aware (constrained) correlation;
* :mod:`.exhaustive` -- rotation grid + FFT translation search with local refinement;
* :mod:`.average` -- wedge-compensated averaging, reference-free iterative refinement, FSC;
* :mod:`.extract` -- boxes out of tomograms, with validation;
* :mod:`.methods` -- :func:`~.methods.align_job`, one job for the exhaustive, learned and
  learned+refine methods (what ``cryoalign align`` and the "Align & average" widget run);
* ``learned`` -- the Gum-Net aligner (separate module, optional), ``learned_train`` its training.
"""

from .types import AlignmentResult

__all__ = ["AlignmentResult"]
