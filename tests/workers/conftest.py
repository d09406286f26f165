"""Fixtures of the decode and preprocess tests: real pydicom-data files and loops made here.

``make_dataset`` builds an in-memory DICOM object from frames (native or encapsulated);
``make_video`` encodes a moving square with PyAV and encapsulates it as PS3.5 8.2 describes.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path

import av
import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.encaps import encapsulate
from pydicom.uid import UID, ExplicitVRLittleEndian, generate_uid

US_MULTIFRAME = "1.2.840.10008.5.1.4.1.1.3.1"
SQUARE = 24  # side of the moving square, pixels
VIDEO_SHAPE = (96, 128)  # rows, columns of the synthetic video loops


def _testdata(name: str) -> Path:
    path = get_testdata_file(name)
    if path is None:
        pytest.fail(f"pydicom-data file {name} is missing (pip install pydicom-data)")
    return Path(str(path))


def _square_x(i: int) -> int:
    return 8 + 4 * i


@pytest.fixture
def testdata() -> Callable[[str], Path]:
    """Path of a pydicom-data file by name (fails loudly when the package is missing)."""
    return _testdata


@pytest.fixture
def square_x() -> Callable[[int], int]:
    """Left column of the moving square in frame ``i`` of the synthetic video loops."""
    return _square_x


def square_frame(i: int, rows: int = VIDEO_SHAPE[0], cols: int = VIDEO_SHAPE[1]) -> np.ndarray:
    img = np.full((rows, cols, 3), 16, np.uint8)
    img[36 : 36 + SQUARE, _square_x(i) : _square_x(i) + SQUARE] = (230, 40, 40)
    return img


def _base_dataset(rows: int, cols: int, n_frames: int, transfer_syntax: str) -> Dataset:
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = UID(US_MULTIFRAME)
    ds.file_meta.TransferSyntaxUID = UID(transfer_syntax)
    ds.SOPClassUID = US_MULTIFRAME
    ds.SOPInstanceUID = generate_uid()
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.Modality = "US"
    ds.Rows, ds.Columns = rows, cols
    ds.NumberOfFrames = n_frames
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 8, 8, 7, 0
    return ds


@pytest.fixture
def make_dataset() -> Callable[..., Dataset]:
    """Factory: ``make_dataset(frames, photometric, bits=8, **elements)`` -> native Explicit VR LE data set.

    ``frames`` is (n, rows, cols) grey/palette or (n, rows, cols, 3) RGB.
    """

    def _make(
        frames: np.ndarray, photometric: str = "MONOCHROME2", bits: int = 8, **elements: object
    ) -> Dataset:
        n, rows, cols = frames.shape[:3]
        ds = _base_dataset(rows, cols, n, ExplicitVRLittleEndian)
        ds.PhotometricInterpretation = photometric
        ds.SamplesPerPixel = 3 if frames.ndim == 4 else 1
        if frames.ndim == 4:
            ds.PlanarConfiguration = 0
        ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16 if bits > 8 else 8, bits, bits - 1
        dtype = np.uint16 if bits > 8 else np.uint8
        ds.PixelData = np.ascontiguousarray(frames.astype(dtype)).tobytes()
        for key, value in elements.items():
            setattr(ds, key, value)
        return ds

    return _make


def encode_video(codec: str, n_frames: int, fmt: str) -> bytes:
    """Encode the moving-square loop with PyAV as a raw elementary stream (Annex B for H.264/HEVC)."""
    buf = io.BytesIO()
    with av.open(buf, "w", format=fmt) as out:
        stream = out.add_stream(codec, rate=25)
        assert isinstance(stream, av.VideoStream)
        stream.height, stream.width = VIDEO_SHAPE
        stream.pix_fmt = "yuv420p"
        if codec == "libx265":
            stream.options = {"log-level": "error"}
        for i in range(n_frames):
            for packet in stream.encode(av.VideoFrame.from_ndarray(square_frame(i), format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return buf.getvalue()


VIDEO_CODECS = {
    # transfer syntax: (encoder, raw format)
    "1.2.840.10008.1.2.4.102": ("libx264", "h264"),  # MPEG-4 AVC/H.264 High Profile / Level 4.1
    "1.2.840.10008.1.2.4.100": ("mpeg2video", "mpeg2video"),  # MPEG2 Main Profile / Main Level
    "1.2.840.10008.1.2.4.107": ("libx265", "hevc"),  # HEVC/H.265 Main Profile / Level 5.1
}


@pytest.fixture
def make_video(tmp_path: Path) -> Callable[..., Path]:
    """Factory: ``make_video(tsyntax, n_frames=20, declared=None, cut=None)`` -> path of a video DICOM file.

    The whole bitstream is one frame item (no Basic Offset Table entries), NumberOfFrames is
    ``declared`` (default: the real count); ``cut`` keeps only that fraction of the stream.
    """

    def _make(
        tsyntax: str, n_frames: int = 20, declared: int | None = None, cut: float | None = None
    ) -> Path:
        codec, fmt = VIDEO_CODECS[tsyntax]
        stream = encode_video(codec, n_frames, fmt)
        if cut is not None:
            stream = stream[: int(len(stream) * cut)]
        ds = _base_dataset(*VIDEO_SHAPE, declared or n_frames, tsyntax)
        ds.SamplesPerPixel = 3
        ds.PhotometricInterpretation = "YBR_PARTIAL_420"
        ds.PlanarConfiguration = 0
        ds.FrameTime = 40.0
        ds.FrameIncrementPointer = pydicom.tag.Tag("FrameTime")
        ds.PixelData = encapsulate([stream], has_bot=False)
        ds["PixelData"].VR = "OB"
        ds["PixelData"].is_undefined_length = True
        path = tmp_path / f"video-{ds.SOPInstanceUID}.dcm"
        ds.save_as(path, enforce_file_format=True)
        return path

    return _make


@pytest.fixture
def copy_with_new_uid(tmp_path: Path) -> Callable[[str], tuple[Path, Dataset]]:
    """Factory: copy of a pydicom-data file with a fresh SOP Instance UID -> (path, data set)."""

    def _copy(name: str) -> tuple[Path, Dataset]:
        ds = pydicom.dcmread(_testdata(name))
        ds.SOPInstanceUID = generate_uid()
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
        path = tmp_path / f"{ds.SOPInstanceUID}.dcm"
        ds.save_as(path, enforce_file_format=True)
        return path, ds

    return _copy
