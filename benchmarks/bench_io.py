"""DICOM series reading vs SimpleITK's ImageSeriesReader (GDCM) and plain pydicom.

Cases: the largest IBSI series in ../shared/data (when present) and a generated 300-slice
512x512 CT series (written once to benchmarks/_out/ct300, reused afterwards). The 'list' and
'pixels' cases split medkern's read into the header scan (pydicom parsing plus medkern's
grouping/geometry) and medkern's own work after it (pixel I/O into a preallocated volume plus
the modality LUT), to show medkern's own time on top of pydicom's parsing.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pydicom
import SimpleITK as sitk

import medkern as mk

from _harness import Case

HERE = Path(__file__).resolve().parent
SHARED = Path(os.environ.get("MEDKERN_SHARED_DATA", HERE.parents[1] / "shared" / "data"))


def generated_ct(n_slices: int, size: int) -> Path:
    """A CT series (12-bit, intercept -1024, file names in random order) written once."""
    import copy

    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

    out = HERE / "_out" / f"ct{n_slices}x{size}"
    if out.is_dir() and len(list(out.iterdir())) == n_slices:
        return out
    out.mkdir(parents=True, exist_ok=True)
    template = pydicom.Dataset()
    template.file_meta = FileMetaDataset()
    template.file_meta.MediaStorageSOPClassUID = template.SOPClassUID = CTImageStorage
    template.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    template.update({"Modality": "CT", "PatientID": "BENCH", "SeriesInstanceUID": generate_uid(),
                     "StudyInstanceUID": generate_uid(), "FrameOfReferenceUID": generate_uid(),
                     "ImageOrientationPatient": [1, 0, 0, 0, 1, 0], "PixelSpacing": [0.9765625, 0.9765625],
                     "Rows": size, "Columns": size, "SamplesPerPixel": 1, "PhotometricInterpretation": "MONOCHROME2",
                     "BitsAllocated": 16, "BitsStored": 12, "HighBit": 11, "PixelRepresentation": 0,
                     "RescaleSlope": 1, "RescaleIntercept": -1024})
    rng = np.random.default_rng(0)
    base = rng.integers(0, 4096, size=(size, size), dtype=np.uint16)
    for k in range(n_slices):
        ds = copy.deepcopy(template)
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.InstanceNumber = k + 1
        ds.ImagePositionPatient = [-250.0, -250.0, -300.0 + 1.25 * k]
        ds.PixelData = np.roll(base, k, axis=1).tobytes()
        ds.save_as(out / f"{ds.SOPInstanceUID[-12:]}.dcm", enforce_file_format=True)
    return out


def sitk_read(directory: Path):
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(reader.GetGDCMSeriesFileNames(str(directory)))
    return reader.Execute()


def pydicom_naive(directory: Path) -> np.ndarray:
    """What a script does with pydicom alone: read every file, sort by z, stack, rescale."""
    slices = [pydicom.dcmread(p) for p in sorted(directory.iterdir())]
    slices.sort(key=lambda d: float(d.ImagePositionPatient[2]))
    return np.stack([d.pixel_array * float(d.RescaleSlope) + float(d.RescaleIntercept) for d in slices])


def pydicom_headers(directory: Path) -> list:
    return [pydicom.dcmread(p, stop_before_pixels=True) for p in sorted(directory.iterdir())]


def series_cases(label: str, directory: Path, repeats: int) -> list[Case]:
    (series,) = mk.list_dicom_series(directory)
    n = len(series.files)
    nbytes = int(np.prod(series.shape)) * (2 + np.dtype(series.dtype).itemsize)
    return [
        Case(f"read series {label}", lambda: mk.read_dicom_series(directory),
             {"SimpleITK ImageSeriesReader": lambda: sitk_read(directory),
              "pydicom dcmread+pixel_array+sort": lambda: pydicom_naive(directory)},
             repeats=repeats, target="faster than SimpleITK"),
        Case(f"header scan {n} files {label}", lambda: mk.list_dicom_series(directory),
             {"pydicom dcmread(stop_before_pixels) only": lambda: pydicom_headers(directory)},
             repeats=repeats, target="near pydicom's parse time"),
        Case(f"pixels+assembly after headers {label}", series.read, bytes_moved=nbytes, repeats=repeats,
             target="medkern's own time: well under 1 s for 300 slices"),
    ]


def cases(quick: bool) -> list[Case]:
    out = []
    ibsi = SHARED / "ibsi" / "ibsi_validation" / "dicom"
    if ibsi.is_dir():
        largest = max(ibsi.glob("STS_*/*/image"), key=lambda d: sum(f.stat().st_size for f in d.iterdir()))
        out += series_cases(f"IBSI {largest.parent.parent.name} {largest.parent.name}", largest, 5)
    n, size = (60, 256) if quick else (300, 512)
    out += series_cases(f"generated CT {n}x{size}x{size}", generated_ct(n, size), 3)
    return out
