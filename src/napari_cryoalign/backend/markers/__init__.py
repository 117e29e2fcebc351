"""SparseAlign: gold-marker localisation and beam-induced deformation estimation (torch).

Modules: :mod:`.forward` (the forward model, shared with the simulator), :mod:`.adcg` (the
ADCG job), :mod:`.preprocess` (Anscombe, background and bead normalisation),
:mod:`.find` (validation + pre-processing + ADCG: what the CLI and the widget run),
:mod:`.doming` (the doming-model baseline from traced markers), :mod:`.metrics`
(matching, E_markers, E_global), :mod:`.export` (STAR, IMOD points, deformation JSON, MRC).
"""

from .adcg import MarkerSnapshot, SparseAlignResult, parse_levels, sparse_align, sparse_align_job
from .find import find_markers, find_markers_job
from .forward import MarkerGeometry, forward_model

__all__ = ["MarkerGeometry", "MarkerSnapshot", "SparseAlignResult", "find_markers", "find_markers_job",
           "forward_model", "parse_levels", "sparse_align", "sparse_align_job"]
