"""Seeded generators of hostile input for the receive path, and a runner that checks the invariants.

Shared by the CI fuzz suite (tests/hostile/test_fuzz.py) and the longer run (bench/fuzz.py).

Two families, both from a ``random.Random(seed)`` so a failing case number can be replayed:
- object cases mutate real pydicom-data files (byte flips, truncation, corrupted element lengths,
  hostile UIDs, bad NumberOfFrames, pixel data swapped or cut, a transfer syntax or SOP class the
  data does not match) and send them as C-STOREs, many per association;
- PDU cases build Upper Layer PDUs from scratch on raw sockets (unknown types, huge or short
  lengths, flipped bytes in an A-ASSOCIATE-RQ, P-DATA before or outside an association).

The runner records, per case, what the node answered and how fast, every acknowledged (0x0000)
SOP Instance UID, and the node's RSS; ``Runner.check`` turns that into a list of violations.
"""

from __future__ import annotations

import copy
import random
import struct
import time
import warnings
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from pydicom import dcmread
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate, generate_frames
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset
from pydicom.tag import Tag

from tests.helpers import us_file
from tests.hostile.wire import ABORT_RQ, RELEASE_RQ, Wire, associate_rq, p_data, pdu, store_pdus

US_MF = "1.2.840.10008.5.1.4.1.1.3.1"
US_IMAGE = "1.2.840.10008.5.1.4.1.1.6.1"
JPEG_BASELINE = "1.2.840.10008.1.2.4.50"
IMPLICIT = "1.2.840.10008.1.2"
SYNTAXES = [
    "1.2.840.10008.1.2", "1.2.840.10008.1.2.1", "1.2.840.10008.1.2.2", "1.2.840.10008.1.2.1.99",
    "1.2.840.10008.1.2.4.50", "1.2.840.10008.1.2.4.70", "1.2.840.10008.1.2.4.90", "1.2.840.10008.1.2.4.91",
    "1.2.840.10008.1.2.5", "1.2.840.10008.1.2.4.100", "1.2.840.10008.1.2.4.102", "1.2.840.10008.1.2.4.107",
]
HOSTILE_UIDS = [
    "1.2.840." + "1" * 73, "1." * 40 + "1", "", "../../etc/passwd", "1.2.3.abc", "1.02.3", "1..2", " ",
    "1.2.3\\4.5", "1.2.\x00.3", "9" * 64, "1.2.840.10008.5.1.4.1.1.3.1",
]
FRAME_VALUES = ["", "1.5", "0", "-1", "99999999", "abc", "121", "1e3", " 2", None]
UID_KEYWORDS = ["StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID", "FrameOfReferenceUID", "SOPClassUID"]
LENGTH_TAGS = [(0x0028, 0x0010), (0x0028, 0x0011), (0x0028, 0x0008), (0x7FE0, 0x0010), (0x0020, 0x000D), (0x0008, 0x0018)]


@dataclass(frozen=True)
class Source:
    name: str
    dataset: Dataset
    syntax: str


def _encode(ds: Dataset, syntax: str) -> bytes:
    buf = DicomBytesIO()
    buf.is_little_endian = syntax != "1.2.840.10008.1.2.2"
    buf.is_implicit_VR = syntax == "1.2.840.10008.1.2"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        write_dataset(buf, ds)
    return buf.getvalue()


def load_sources() -> list[Source]:
    """Real ultrasound files, trimmed so that a thousand stores fit in a CI minute or two."""
    out = []
    loop = dcmread(us_file("color3d_jpeg_baseline.dcm"))
    frames = list(generate_frames(loop.PixelData, number_of_frames=int(loop.NumberOfFrames)))[:6]
    loop.PixelData, loop.NumberOfFrames = encapsulate(frames), 6
    out.append(Source("color3d_jpeg_baseline[6]", loop, JPEG_BASELINE))
    for name in ("OBXXXX1A_rle_2frame.dcm", "US1_J2KR.dcm", "US1_J2KI.dcm", "JPGLosslessP14SV1_1s_1f_8b.dcm"):
        ds = dcmread(us_file(name))
        out.append(Source(name, ds, str(ds.file_meta.TransferSyntaxUID)))
    for name in ("US1_UNCR.dcm", "OBXXXX1A_2frame.dcm", "OBXXXX1A_expb_2frame.dcm", "gdcm-US-ALOKA-16.dcm"):
        ds = dcmread(us_file(name))
        n = int(ds.get("NumberOfFrames", 1) or 1)
        per_row = int(ds.Columns) * int(ds.get("SamplesPerPixel", 1)) * int(ds.BitsAllocated) // 8
        frame = per_row * int(ds.Rows)
        rows = 32
        ds.PixelData = b"".join(ds.PixelData[i * frame : i * frame + rows * per_row] for i in range(n))
        ds.Rows = rows
        out.append(Source(f"{name}[{rows} rows]", ds, str(ds.file_meta.TransferSyntaxUID)))
    return out


@dataclass
class ObjectCase:
    number: int
    mutation: str
    data: bytes
    context: str
    syntax: str
    command_class: str
    instance: str


@dataclass
class PduCase:
    number: int
    mutation: str
    chunks: list[bytes]


def _uid(rng: random.Random) -> str:
    return f"2.25.{rng.getrandbits(120)}"


def object_case(rng: random.Random, number: int, sources: list[Source]) -> ObjectCase:
    src = rng.choice(sources)
    ds = copy.deepcopy(src.dataset)
    ds.SOPInstanceUID = _uid(rng)
    context, syntax = str(ds.SOPClassUID), src.syntax
    command_class, instance = context, str(ds.SOPInstanceUID)
    mutation = rng.choice(
        ["valid", "flip", "flip", "truncate", "length", "length", "uid", "uid", "frames", "syntax", "sop", "pixel", "insert"]
    )
    detail = mutation
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if mutation == "uid":
            keyword, value = rng.choice(UID_KEYWORDS), rng.choice(HOSTILE_UIDS)
            setattr(ds, keyword, value)
            detail = f"uid {keyword}={value[:20]!r}"
            if keyword == "SOPInstanceUID" and rng.random() < 0.5 and len(value) <= 64:
                instance = value.strip() or instance
        elif mutation == "frames":
            value = rng.choice(FRAME_VALUES)
            if value is None:
                if "NumberOfFrames" in ds:
                    del ds.NumberOfFrames
            else:  # raw bytes: pydicom would refuse to hold "abc" as an IS value
                raw = value.encode() + (b" " if len(value) % 2 else b"")
                ds[0x00280008] = RawDataElement(Tag(0x00280008), "IS", len(raw), raw, 0, syntax == IMPLICIT, True)
            detail = f"frames {value!r}"
        elif mutation == "pixel":
            choice = rng.randrange(3)
            if choice == 0:
                ds.PixelData = rng.randbytes(rng.randrange(0, 4096) * 2)
                ds["PixelData"].is_undefined_length = False
            elif choice == 1 and "PixelData" in ds:
                del ds.PixelData
            else:
                ds.PixelData = ds.PixelData[: rng.randrange(4, max(len(ds.PixelData), 5))]
            detail = f"pixel {choice}"
        elif mutation == "sop":
            if rng.random() < 0.5:
                command_class = US_IMAGE if context == US_MF else US_MF
            else:
                ds.SOPClassUID = US_IMAGE if context == US_MF else US_MF
        data = _encode(ds, syntax)
    if mutation == "syntax":
        syntax = rng.choice([s for s in SYNTAXES if s != src.syntax])
        detail = f"syntax {syntax}"
    elif mutation == "flip":
        buf = bytearray(data)
        for _ in range(rng.randint(1, 16)):
            buf[rng.randrange(len(buf))] ^= rng.randrange(1, 256)
        data = bytes(buf)
    elif mutation == "truncate":
        data = data[: rng.randrange(len(data))]
    elif mutation == "insert":
        at = rng.randrange(len(data))
        data = data[:at] + rng.randbytes(rng.randint(1, 64)) + data[at:]
    elif mutation == "length":
        data, detail = _corrupt_length(rng, data, src.syntax)
    return ObjectCase(number, detail, data, context, syntax, command_class, instance)


def _corrupt_length(rng: random.Random, data: bytes, syntax: str) -> tuple[bytes, str]:
    order = ">" if syntax == "1.2.840.10008.1.2.2" else "<"
    group, elem = rng.choice(LENGTH_TAGS)
    at = data.find(struct.pack(f"{order}HH", group, elem))
    if at < 0:
        return data, "length (tag absent)"
    value = rng.choice([0, 1, 3, 0xFFFF, 0x7FFFFFFF, 0xFFFFFFFF, rng.randrange(2**32)])
    buf = bytearray(data)
    if syntax == "1.2.840.10008.1.2":
        buf[at + 4 : at + 8] = struct.pack(f"{order}L", value)
    elif bytes(buf[at + 4 : at + 6]) in (b"OB", b"OW", b"SQ", b"UN", b"UT", b"UC", b"UR", b"OF", b"OD", b"OL", b"OV"):
        buf[at + 8 : at + 12] = struct.pack(f"{order}L", value)
    else:
        buf[at + 6 : at + 8] = struct.pack(f"{order}H", value & 0xFFFF)
    return bytes(buf), f"length ({group:04X},{elem:04X})={value}"


def pdu_case(rng: random.Random, number: int, calling: str) -> PduCase:
    kind = rng.choice(["random", "random", "huge", "flip-rq", "flip-rq", "cut-rq", "rq-garbage", "bad-pdv", "early", "bad-item"])
    rq = associate_rq(calling, contexts=[(1, US_MF, [JPEG_BASELINE]), (3, "1.2.840.10008.1.1", ["1.2.840.10008.1.2"])])
    if kind == "random":
        chunks = [pdu(rng.randrange(256), rng.randbytes(rng.randrange(0, 256)))]
    elif kind == "huge":
        chunks = [struct.pack(">BBL", rng.choice([1, 4, 5, 7]), 0, rng.randrange(2**20, 2**32)) + rng.randbytes(100)]
    elif kind == "flip-rq":
        buf = bytearray(rq)
        for _ in range(rng.randint(1, 8)):
            buf[rng.randrange(6, len(buf))] ^= rng.randrange(1, 256)
        chunks = [bytes(buf)]
    elif kind == "cut-rq":
        chunks = [rq[: rng.randrange(1, len(rq))]]
    elif kind == "rq-garbage":
        chunks = [rq, rng.randbytes(rng.randrange(1, 512))]
    elif kind == "bad-pdv":
        body = struct.pack(">LBB", rng.choice([0, 1, 0xFFFF, 0xFFFFFFFF]), 1, rng.randrange(4)) + rng.randbytes(32)
        chunks = [rq, pdu(0x04, body)]
    elif kind == "early":
        chunks = [rng.choice([RELEASE_RQ, ABORT_RQ, p_data(1, 3, rng.randbytes(40))])]
    else:  # an item of the A-ASSOCIATE-RQ declaring more than the PDU holds
        buf = bytearray(rq)
        buf[74 + 2 : 74 + 4] = struct.pack(">H", rng.randrange(0x100, 0xFFFF))
        chunks = [bytes(buf)]
    return PduCase(number, kind, chunks)


@dataclass
class Outcome:
    number: int
    kind: str
    mutation: str
    result: str  # "0xC000", "A-ABORT", "closed", "A-ASSOCIATE-AC", "no answer", ...
    seconds: float


@dataclass
class Runner:
    """Runs cases against a node on ``port`` and collects what the invariants need."""

    port: int
    calling: str = "US_ROOM1"
    answer_within: float = 60.0  # the node's DIMSE timeout: every complete request is answered in it
    close_within: float = 7.0  # association timeout (5 s) + housekeeping tick and a loaded machine
    per_association: int = 25
    outcomes: list[Outcome] = field(default_factory=list)
    acknowledged: set[str] = field(default_factory=set)

    def run_objects(self, cases: Iterator[ObjectCase], alive: Callable[[], bool]) -> None:
        batch: list[ObjectCase] = []
        for case in cases:
            batch.append(case)
            if len(batch) == self.per_association:
                self._store_batch(batch)
                batch = []
                assert alive(), f"node died after object case {case.number}"
        if batch:
            self._store_batch(batch)

    def _open(self) -> Wire:
        contexts = [(2 * i + 1, sop, [ts]) for i, (sop, ts) in enumerate((sop, ts) for sop in (US_MF, US_IMAGE) for ts in SYNTAXES)]
        w = Wire(self.port, timeout=self.answer_within)
        ac = w.associate(self.calling, contexts, max_pdu=262144)
        if ac is None or ac.kind != 0x02:
            raise AssertionError(f"association refused: {ac}")
        w.accepted = _accepted_ids(ac.body)  # type: ignore[attr-defined]
        w.ids = {(sop, ts): cid for cid, sop, (ts,) in contexts}  # type: ignore[attr-defined]
        return w

    def _store_batch(self, batch: list[ObjectCase]) -> None:
        w = self._open()
        try:
            for case in batch:
                cid = w.ids[(case.context, case.syntax)]  # type: ignore[attr-defined]
                if cid not in w.accepted:  # type: ignore[attr-defined]
                    self.outcomes.append(Outcome(case.number, "object", case.mutation, "context not accepted", 0.0))
                    continue
                start = time.monotonic()
                try:
                    pdus = store_pdus(case.data, case.command_class, case.instance, cid, 262144, case.number % 65536)
                except (ValueError, TypeError) as exc:  # pynetdicom refuses to encode that command
                    self.outcomes.append(Outcome(case.number, "object", case.mutation, f"not sent: {exc}"[:40], 0.0))
                    continue
                for p in pdus:
                    w.send(p)
                rsp = w.read_pdu()
                took = time.monotonic() - start
                if rsp is None or rsp.kind != 0x04 or rsp.status is None:
                    result = "closed" if rsp is None else f"PDU 0x{rsp.kind:02X}"
                    self.outcomes.append(Outcome(case.number, "object", case.mutation, result, took))
                    w.close()
                    w = self._open()
                    continue
                if rsp.status == 0x0000:
                    self.acknowledged.add(case.instance)
                self.outcomes.append(Outcome(case.number, "object", case.mutation, f"0x{rsp.status:04X}", took))
            w.send(RELEASE_RQ)
            w.read_pdu()
        finally:
            w.close()

    def run_pdus(self, cases: list[PduCase], alive: Callable[[], bool], workers: int = 6) -> None:
        with ThreadPoolExecutor(workers) as pool:
            self.outcomes.extend(pool.map(self._pdu_case, cases))
        assert alive(), "node died during the PDU cases"

    def _pdu_case(self, case: PduCase) -> Outcome:
        start = time.monotonic()
        w = Wire(self.port, timeout=self.close_within)
        try:
            for chunk in case.chunks:
                try:
                    w.send(chunk)
                except OSError:
                    break
            result, released = "closed", False
            deadline = start + self.close_within
            while time.monotonic() < deadline:
                w.sock.settimeout(max(deadline - time.monotonic(), 0.01))
                answer = w.read_pdu()
                if answer is None:
                    result = "closed" if time.monotonic() < deadline else "no answer"
                    break
                result = {0x02: "A-ASSOCIATE-AC", 0x03: "A-ASSOCIATE-RJ", 0x07: "A-ABORT", 0x06: "A-RELEASE-RP"}.get(answer.kind, f"PDU 0x{answer.kind:02X}")
                if answer.kind == 0x02 and not released:  # accepted (what followed was valid): release
                    released = True
                    try:
                        w.send(RELEASE_RQ)
                    except OSError:
                        break
                    continue
                if answer.kind == 0x06:
                    result = "accepted, released"
                break
            return Outcome(case.number, "pdu", case.mutation, result, time.monotonic() - start)
        finally:
            w.close()

    def check(self, in_ledger: Callable[[str], bool]) -> list[str]:
        """Violations: hangs, slow answers, acknowledged instances missing from the ledger."""
        problems = []
        for o in self.outcomes:
            if o.result == "no answer":
                problems.append(f"case {o.number} ({o.kind} {o.mutation}): no answer and not closed")
            limit = self.answer_within if o.kind == "object" else self.close_within
            if o.seconds > limit:
                problems.append(f"case {o.number} ({o.kind} {o.mutation}): {o.seconds:.1f} s, over {limit} s")
        missing = [uid for uid in self.acknowledged if not in_ledger(uid)]
        problems += [f"acknowledged but not in the ledger: {uid}" for uid in missing]
        return problems

    def summary(self) -> Counter[str]:
        return Counter(f"{o.kind}:{o.result}" for o in self.outcomes)


def _accepted_ids(body: bytes) -> set[int]:
    """Presentation context IDs accepted in an A-ASSOCIATE-AC (PS3.8 9.3.3.2: result 0)."""
    pos, accepted = 68, set()
    while pos + 4 <= len(body):
        kind, _, length = struct.unpack(">BBH", body[pos : pos + 4])
        if kind == 0x21 and body[pos + 6] == 0:
            accepted.add(body[pos + 4])
        pos += 4 + length
    return accepted


def cases(seed: int, n_objects: int, n_pdus: int, calling: str = "US_ROOM1") -> tuple[Iterator[ObjectCase], list[PduCase]]:
    rng = random.Random(seed)
    sources = load_sources()
    pdus = [pdu_case(rng, n_objects + i, calling) for i in range(n_pdus)]

    def objects() -> Iterator[ObjectCase]:
        for i in range(n_objects):
            yield object_case(rng, i, sources)

    return objects(), pdus


def rss_kb(pid: int, key: str = "VmRSS") -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise KeyError(key)
