"""Frame decoding: every accepted syntax becomes RGB uint8 frames; bad pixel data fails with the UID."""

from __future__ import annotations

import copy
import tracemalloc
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate, generate_frames
from pydicom.pixels import apply_color_lut, pixel_array
from pydicom.uid import (
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    JPEGLSLossless,
    RLELossless,
)

from workers.decode import ENCAPSULATED_UNCOMPRESSED, load_clip
from workers.errors import DecodeError
from workers.prediction import Box

# name: (frames, rows, cols, reference colour conversion)
REAL_FILES = {
    "color3d_jpeg_baseline.dcm": (120, 480, 640),
    "OBXXXX1A_rle_2frame.dcm": (2, 600, 800),
    "OBXXXX1A_2frame.dcm": (2, 600, 800),
    "US1_J2KR.dcm": (1, 480, 640),
    "US1_J2KI.dcm": (1, 480, 640),
    "US1_UNCR.dcm": (1, 480, 640),
    "gdcm-US-ALOKA-16.dcm": (1, 480, 640),
    "JPGLosslessP14SV1_1s_1f_8b.dcm": (1, 768, 1024),
}


def reference_rgb(path: Path, index: int) -> np.ndarray:
    """pydicom's own decoding of one frame, taken to 8-bit RGB."""
    ds = pydicom.dcmread(path)
    arr = pixel_array(ds, index=index)  # YBR_* already converted to RGB by pydicom
    if ds.PhotometricInterpretation == "PALETTE COLOR":
        arr = apply_color_lut(arr, ds)
        if arr.dtype == np.uint16:
            arr = np.round(arr / 257.0).astype(np.uint8)
    elif arr.ndim == 2:
        arr = np.repeat(arr[:, :, None], 3, axis=2)
    return arr


@pytest.mark.parametrize("name", sorted(REAL_FILES))
def test_real_us_files_decode_like_pydicom(name: str, testdata: Callable[[str], Path]) -> None:
    path = testdata(name)
    clip = load_clip(path)
    n, rows, cols = REAL_FILES[name]
    assert (clip.n_frames, clip.rows, clip.cols) == (n, rows, cols)
    last = n - 1
    got = clip.frames([0, last])
    assert got.shape == (2, rows, cols, 3) and got.dtype == np.uint8
    for k, index in enumerate((0, last)):
        ref = reference_rgb(path, index)
        assert np.array_equal(got[k], ref), f"{name} frame {index} differs from pydicom"


def test_colour_agrees_across_syntaxes(testdata: Callable[[str], Path]) -> None:
    """The same image stored raw RGB, JPEG 2000 (RCT lossless, ICT lossy) decodes to the same colours."""
    raw = load_clip(testdata("US1_UNCR.dcm")).frames([0])[0].astype(int)
    rct = load_clip(testdata("US1_J2KR.dcm")).frames([0])[0].astype(int)
    ict = load_clip(testdata("US1_J2KI.dcm")).frames([0])[0].astype(int)
    assert np.array_equal(rct, raw)
    assert np.abs(ict - raw).mean() < 3.0
    assert raw[..., 0].mean() > raw[..., 2].mean()  # the Doppler overlay is red/orange, not blue


def test_palette_big_endian_rle_and_little_endian_agree(testdata: Callable[[str], Path]) -> None:
    le = load_clip(testdata("OBXXXX1A_2frame.dcm")).frames([0, 1])
    be = load_clip(testdata("OBXXXX1A_expb_2frame.dcm")).frames([0, 1])
    rle = load_clip(testdata("OBXXXX1A_rle_2frame.dcm")).frames([0, 1])
    assert np.array_equal(le, be) and np.array_equal(le, rle)
    assert le[0].max() > 200  # 16-bit LUT entries were scaled, not truncated to their low byte


def test_header_fields_of_the_cine_loop(testdata: Callable[[str], Path]) -> None:
    clip = load_clip(testdata("color3d_jpeg_baseline.dcm"))
    assert clip.sop_class_uid == "1.2.840.10008.5.1.4.1.1.3.1"
    assert clip.frame_times_ms is not None and clip.frame_times_ms.shape == (120,)
    assert clip.frame_times_ms[0] == pytest.approx(33.333)
    # Region max corners are inclusive (PS3.3 C.8.5.5.1.2): 84..595 -> [84, 596)
    assert clip.regions == (Box(y0=31, x0=84, y1=415, x1=596),)
    r, g, b = clip.frames([0])[0, 40, 380].astype(int)  # the green probe-orientation dot (YBR -> RGB)
    assert g > r + 50 and g > b + 20


def test_frames_in_any_order_with_repeats(testdata: Callable[[str], Path]) -> None:
    clip = load_clip(testdata("color3d_jpeg_baseline.dcm"))
    got = clip.frames([7, 3, 7])
    assert np.array_equal(got[0], got[2])
    assert np.array_equal(got[1], clip.frames([3])[0])
    assert not np.array_equal(got[0], got[1])
    with pytest.raises(IndexError, match="120"):
        clip.frames([120])


def test_iter_chunks_yields_every_frame_in_bounded_chunks(testdata: Callable[[str], Path]) -> None:
    clip = load_clip(testdata("color3d_jpeg_baseline.dcm"))
    starts, sizes = [], []
    for start, chunk in clip.iter_chunks(chunk=50):
        assert chunk.shape[1:] == (480, 640, 3) and chunk.dtype == np.uint8
        starts.append(start)
        sizes.append(len(chunk))
        if start == 50:
            assert np.array_equal(chunk[19], clip.frames([69])[0])
    assert starts == [0, 50, 100] and sizes == [50, 50, 20]


def test_dataset_source_matches_file_source(testdata: Callable[[str], Path]) -> None:
    path = testdata("OBXXXX1A_rle_2frame.dcm")
    from_ds = load_clip(pydicom.dcmread(path))
    assert from_ds.path is None
    assert np.array_equal(from_ds.frames([1]), load_clip(path).frames([1]))


@pytest.mark.parametrize(
    "tsyntax", ["1.2.840.10008.1.2.4.102", "1.2.840.10008.1.2.4.100", "1.2.840.10008.1.2.4.107"]
)
def test_video_loop_decodes_with_moving_square(
    tsyntax: str, make_video: Callable[..., Path], square_x: Callable[[int], int]
) -> None:
    clip = load_clip(make_video(tsyntax, n_frames=20))
    assert (clip.n_frames, clip.rows, clip.cols) == (20, 96, 128)
    assert clip.frame_times_ms is not None and clip.frame_times_ms[0] == pytest.approx(40.0)
    frames = clip.frames([0, 10, 19])
    for k, i in enumerate((0, 10, 19)):
        centre = frames[k, 48, square_x(i) + 12].astype(int)
        assert centre[0] > 180 and centre[1] < 90 and centre[2] < 90, f"frame {i}: {centre}"  # red square
        assert frames[k, 48, (square_x(i) + 60) % 128].max() < 60  # dark background beside it
    total = sum(len(chunk) for _, chunk in clip.iter_chunks(chunk=8))
    assert total == 20


def test_video_truncated_stream_is_refused(make_video: Callable[..., Path]) -> None:
    path = make_video("1.2.840.10008.1.2.4.102", n_frames=20, cut=0.4)
    uid = pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID
    with pytest.raises(DecodeError, match=uid):
        load_clip(path)


def test_video_with_too_large_number_of_frames_is_refused(make_video: Callable[..., Path]) -> None:
    path = make_video("1.2.840.10008.1.2.4.102", n_frames=12, declared=30)
    with pytest.raises(DecodeError, match="12 frames, NumberOfFrames is 30"):
        load_clip(path)


def test_video_size_must_match_rows_and_columns(make_video: Callable[..., Path]) -> None:
    ds = pydicom.dcmread(make_video("1.2.840.10008.1.2.4.102", n_frames=4))
    ds.Rows = 100
    with pytest.raises(DecodeError, match="128x96, Columns x Rows say 128x100"):
        load_clip(ds)


def test_cut_file_is_refused_with_uid(tmp_path: Path, copy_with_new_uid: Callable) -> None:
    for name in ("color3d_jpeg_baseline.dcm", "US1_UNCR.dcm"):
        path, ds = copy_with_new_uid(name)
        data = path.read_bytes()
        cut = tmp_path / f"cut-{name}"
        cut.write_bytes(data[: int(len(data) * 0.6)])
        with pytest.raises(DecodeError, match=ds.SOPInstanceUID):
            load_clip(cut)


def test_native_too_short_names_the_sizes(copy_with_new_uid: Callable) -> None:
    _, ds = copy_with_new_uid("US1_UNCR.dcm")
    ds.PixelData = ds.PixelData[:1234]
    with pytest.raises(DecodeError, match=rf"{ds.SOPInstanceUID}: pixel data holds 1234 bytes.*921600"):
        load_clip(ds)


def test_fewer_fragments_than_frames_is_refused(testdata: Callable[[str], Path]) -> None:
    ds = pydicom.dcmread(testdata("color3d_jpeg_baseline.dcm"))
    frames = list(generate_frames(ds.PixelData, number_of_frames=120))
    ds.PixelData = encapsulate(frames[:100], has_bot=False)
    with pytest.raises(DecodeError, match="NumberOfFrames is 120 but the pixel data holds only 100"):
        load_clip(ds)


def test_corrupt_jpeg_fragment_fails_when_decoded(testdata: Callable[[str], Path]) -> None:
    ds = pydicom.dcmread(testdata("color3d_jpeg_baseline.dcm"))
    frames = list(generate_frames(ds.PixelData, number_of_frames=120))
    frames[5] = frames[5][:200]  # header survives, entropy-coded data is gone
    ds.PixelData = encapsulate(frames, has_bot=False)
    clip = load_clip(ds)
    assert clip.frames([4]).shape == (1, 480, 640, 3)
    with pytest.raises(DecodeError, match=ds.SOPInstanceUID):
        clip.frames([5])


def test_missing_pixel_data_and_unknown_syntax(testdata: Callable[[str], Path]) -> None:
    ds = pydicom.dcmread(testdata("US1_UNCR.dcm"))
    no_pixels = copy.deepcopy(ds)
    del no_pixels.PixelData
    with pytest.raises(DecodeError, match="no Pixel Data"):
        load_clip(no_pixels)
    ds.file_meta.TransferSyntaxUID = UID("1.2.840.10008.1.2.4.94")  # JPIP Referenced: no pixels to decode
    with pytest.raises(DecodeError, match=r"1\.2\.840\.10008\.1\.2\.4\.94 is not supported"):
        load_clip(ds)


def test_other_syntaxes_round_trip(testdata: Callable[[str], Path], tmp_path: Path) -> None:
    """JPEG-LS, RLE, Deflated and Encapsulated Uncompressed give back the raw RGB frame."""
    src = testdata("US1_UNCR.dcm")
    want = load_clip(src).frames([0])
    for tsyntax in (JPEGLSLossless, RLELossless):
        ds = pydicom.dcmread(src)
        ds.compress(tsyntax)
        assert np.array_equal(load_clip(ds).frames([0]), want), tsyntax
    ds = pydicom.dcmread(src)
    ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
    deflated = tmp_path / "deflated.dcm"
    ds.save_as(deflated)
    assert np.array_equal(load_clip(deflated).frames([0]), want)
    ds = pydicom.dcmread(src)
    ds.file_meta.TransferSyntaxUID = UID(ENCAPSULATED_UNCOMPRESSED)
    ds.PixelData = encapsulate([ds.PixelData])
    ds["PixelData"].is_undefined_length = True
    encaps = tmp_path / "encaps.dcm"
    ds.save_as(encaps)
    assert np.array_equal(load_clip(encaps).frames([0]), want)


def test_grey_16_bit_windowed_or_min_max_scaled(make_dataset: Callable[..., Dataset]) -> None:
    ramp = np.tile(np.linspace(1000, 3000, 64).astype(np.uint16), (2, 8, 1))  # 2 frames 8x64
    clip = load_clip(make_dataset(ramp, bits=12))
    got = clip.frames([0])[0]
    assert got[0, 0].tolist() == [0, 0, 0] and got[0, -1].tolist() == [255, 255, 255]  # min-max
    assert np.all(np.diff(got[0, :, 0].astype(int)) >= 0)
    windowed = load_clip(make_dataset(ramp, bits=12, WindowCenter=2000, WindowWidth=1000)).frames([0])[0]
    assert windowed[0, 0, 0] == 0 and windowed[0, -1, 0] == 255
    assert 100 < windowed[0, 32, 0] < 160  # the window centre maps to mid grey


def test_monochrome1_is_inverted_and_grey_replicated(make_dataset: Callable[..., Dataset]) -> None:
    img = np.zeros((1, 4, 4), np.uint8)
    img[0, 0, 0] = 200
    got = load_clip(make_dataset(img, photometric="MONOCHROME1")).frames([0])[0]
    assert got[0, 0].tolist() == [55, 55, 55] and got[1, 1].tolist() == [255, 255, 255]


def test_frame_time_vector_and_cine_rate(make_dataset: Callable[..., Dataset]) -> None:
    img = np.zeros((3, 4, 4), np.uint8)
    clip = load_clip(make_dataset(img, FrameTimeVector=[0, 20, 30]))
    assert clip.frame_times_ms is not None and clip.frame_times_ms.tolist() == [20.0, 30.0, 30.0]
    clip = load_clip(make_dataset(img, CineRate=25))
    assert clip.frame_times_ms is not None and clip.frame_times_ms.tolist() == [40.0, 40.0, 40.0]
    assert load_clip(make_dataset(img)).frame_times_ms is None


def test_explicit_le_file_from_synthetic_dataset(
    make_dataset: Callable[..., Dataset], tmp_path: Path
) -> None:
    rgb = np.random.default_rng(0).integers(0, 255, (3, 8, 8, 3), dtype=np.uint8)
    ds = make_dataset(rgb, photometric="RGB")
    path = tmp_path / "rgb.dcm"
    ds.save_as(path, enforce_file_format=True)
    assert ds.file_meta.TransferSyntaxUID == ExplicitVRLittleEndian
    assert np.array_equal(load_clip(path).frames([2, 0]), rgb[[2, 0]])


def test_streaming_the_loop_keeps_memory_bounded(testdata: Callable[[str], Path]) -> None:
    """120 frames of 480x640 RGB are 110 MB as uint8 (440 MB as float32); chunks of 8 need a few MB."""
    clip = load_clip(testdata("color3d_jpeg_baseline.dcm"))
    tracemalloc.start()
    try:
        n = sum(len(chunk) for _, chunk in clip.iter_chunks(chunk=8))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert n == 120
    assert peak < 40 * 2**20, f"peak {peak / 2**20:.0f} MiB"
