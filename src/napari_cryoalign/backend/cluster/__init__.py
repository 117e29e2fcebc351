"""Joint alignment and clustering of subtomograms.

* :mod:`.classify` -- :func:`cluster_subtomograms` / ``cluster_subtomograms_job``: the joint
  method (alternating multi-reference alignment and Gaussian-mixture clustering) and the
  classical baseline (global alignment, wedge-masked PCA, Gaussian mixture, :mod:`.classical`);
* :mod:`.common` -- :class:`ClusterResult` and the class averages both methods share;
* :mod:`.features` -- rotation-invariant descriptors and wedge-masked PCA;
* :mod:`.gmm` -- Gaussian mixture (full covariance, EM), k-means, BIC, Hungarian label matching,
  clustering accuracy;
* :mod:`.jimnet` -- the Jim-Net network (stacked dilated convolutions, spectral pooling, cluster
  head, coarse-to-fine rigid alignment, ``L_R``) and its unsupervised training loop.
"""

from .classify import cluster_subtomograms, cluster_subtomograms_job
from .common import ClusterResult
from .gmm import clustering_accuracy, match_labels

__all__ = ["ClusterResult", "cluster_subtomograms", "cluster_subtomograms_job", "clustering_accuracy",
           "match_labels"]
