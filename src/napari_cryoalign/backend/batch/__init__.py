"""Batch jobs over many tomograms on Dask distributed (``cryoalign batch ...``).

* :mod:`.sources`: the tomograms of a copick project, a RELION 5 ``tomograms.star`` or a list;
* :mod:`.engine`: one task per tomogram on a Dask cluster, resumable, failures isolated;
* :mod:`.tasks`: the per-tomogram tasks and the merging of their outputs;
* :mod:`.average`: averaging a particle set too large for one process, sharded over workers.

docs/batch.md describes the commands, the outputs and the measured scaling.
"""

from .engine import BatchReport, TaskOutcome, batch_job, dask_client, marker_path
from .sources import (BatchInputs, TomogramSource, load_tomogram, tomograms_from_copick, tomograms_from_list,
                      tomograms_from_star)
from .tasks import merge_picks, pick_predict_task

__all__ = ["BatchReport", "TaskOutcome", "batch_job", "dask_client", "marker_path", "BatchInputs", "TomogramSource",
           "load_tomogram", "tomograms_from_copick", "tomograms_from_list", "tomograms_from_star", "merge_picks",
           "pick_predict_task"]
