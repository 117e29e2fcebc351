"""Supervised pose inference for particle images (CESPED's task, an Image2Sphere-style model).

* :mod:`.data` -- particle STAR + stack reading, CESPED preprocessing (normalisation, phase flip, resize)
* :mod:`.grid` -- HEALPix (ring / nested) and the HEALPix x in-plane SO(3) grids
* :mod:`.harmonics` -- real spherical harmonics and Wigner-D matrices
* :mod:`.model` -- the network (encoder, hemisphere projection, S² and SO(3) convolutions)
* :mod:`.train` -- symmetric targets, confidence-weighted loss, gold-standard training
* :mod:`.predict` -- argmax + local refinement, FFT shift search, projection matching
* :mod:`.reconstruct` -- direct Fourier reconstruction, half maps, FSC, Fourier-slice projection
* :mod:`.metrics` -- MAnE, wMAnE, ΔPCC, ΔFSCR
* :mod:`.modelio` -- model files
* :mod:`.export` -- predicted poses to RELION STAR
"""
