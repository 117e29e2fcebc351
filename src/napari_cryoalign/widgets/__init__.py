"""Dock widgets. Thin: they collect parameters, run a backend job with :class:`~._runner.JobRunner`
and turn its results into layers. Nothing here computes."""
