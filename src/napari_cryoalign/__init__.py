"""napari-cryoalign: napari plugin suite for cryo-electron tomography.

The computation lives in :mod:`napari_cryoalign.backend` (torch + numpy, no GUI), file
formats in :mod:`napari_cryoalign.io`, dock widgets in :mod:`napari_cryoalign.widgets` and
the command line in :mod:`napari_cryoalign.cli`. Importing this package imports nothing
heavy; it sets ``GOMP_SPINCOUNT=1000`` unless set (:mod:`._threads`), before torch loads.
"""

from ._threads import configure_openmp

configure_openmp()

__version__ = "0.1.0"
