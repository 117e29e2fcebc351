"""File formats: MRC volumes/images/stacks, RELION STAR particle files, IMOD tilt files.

This package is the only place that touches file formats. Everything here follows
docs/conventions.md (see docs/io.md): arrays in (z, y, x) order, voxel sizes in Å from the
header, 0-based voxel coordinates, RELION ZYZ Euler angles. Bad input raises
:class:`~napari_cryoalign.errors.InputError` naming the file, the field and what was
expected; every writer is atomic and refuses to replace an existing file unless asked.
"""

from ._atomic import atomic_path, atomic_write, check_output_path, ensure_not_input, write_json
from .mrc import (
    MrcVolume,
    VoxelSizeWarning,
    check_same_voxel_size,
    mrc_info,
    read_mrc,
    voxel_size_isotropic,
    write_mrc,
)
from .mrc_header import MrcHeaderWarning
from .relion5 import Relion5Export, export_relion5, write_tomograms_star
from .star import (
    ParticleTable,
    centered_angstrom_to_voxels,
    particle_block,
    particle_table,
    read_particles,
    read_star,
    read_tomograms_star,
    voxels_to_centered_angstrom,
    write_star,
)
from .star_columns import (
    classes,
    coordinates_xyz,
    euler_deg,
    image_names,
    origins_angstrom,
    scores,
    tomo_names,
    write_particles,
)
from .star_images import (
    format_image_name,
    parse_image_name,
    read_particle_images,
    read_subtomograms,
    relocate_image_names,
    write_particle_stack,
    write_subtomograms,
)
from .tilt import read_acquisition_order, read_tlt, write_acquisition_order, write_tlt

__all__ = [
    # atomic output
    "atomic_write",
    "atomic_path",
    "write_json",
    "check_output_path",
    "ensure_not_input",
    # MRC
    "MrcVolume",
    "VoxelSizeWarning",
    "MrcHeaderWarning",
    "read_mrc",
    "write_mrc",
    "mrc_info",
    "voxel_size_isotropic",
    "check_same_voxel_size",
    # STAR
    "ParticleTable",
    "read_star",
    "write_star",
    "read_particles",
    "particle_table",
    "particle_block",
    "write_particles",
    "read_tomograms_star",
    "write_tomograms_star",
    "export_relion5",
    "Relion5Export",
    "coordinates_xyz",
    "euler_deg",
    "origins_angstrom",
    "classes",
    "scores",
    "tomo_names",
    "image_names",
    "centered_angstrom_to_voxels",
    "voxels_to_centered_angstrom",
    "parse_image_name",
    "format_image_name",
    "relocate_image_names",
    "read_subtomograms",
    "read_particle_images",
    "write_subtomograms",
    "write_particle_stack",
    # tilt series
    "read_tlt",
    "write_tlt",
    "read_acquisition_order",
    "write_acquisition_order",
]
