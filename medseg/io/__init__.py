"""Scan I/O: NIfTI, NRRD/MHA and DICOM series in, NIfTI/NRRD/MHA out, exact geometry throughout."""

from medseg.io.dicom import read_dicom_folder, read_series, scan_dicom
from medseg.io.volume_io import read_volume, write_volume

__all__ = ["read_volume", "write_volume", "read_dicom_folder", "read_series", "scan_dicom"]
