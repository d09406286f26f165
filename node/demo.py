"""``make demo``: the whole story on the embedded default, on this machine, in real processes.

1. Train (or reuse the cached) small TIN bundle on synthetic phantom loops (``.cache/demo-bundle``).
2. Start a local Orthanc as the PACS when it is installed (else results go to a folder).
3. Start ``alnnode serve`` with the bundle (embedded queue and worker, SQLite ledger).
4. Send held-out phantom loops and the real JPEG cine of pydicom-data with ``alnnode send``.
5. Wait for every result, then print: loop, truth, probability, key frame, where to see SR and heatmap.

The edge never imports torch: training runs in a child process.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from pydicom import dcmread

from node import __version__
from node.errors import NodeError
from node.ledger import FINISHED_STATES, Ledger
from node.localpacs import LocalOrthanc, free_port
from node.outbox import result_dir

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "demo-out"
CACHE = ROOT / ".cache" / "demo-bundle"
REAL_LOOP = "color3d_jpeg_baseline.dcm"
TRAIN = (
    "import sys; from pathlib import Path; from workers.research.train import train_demo_bundle; "
    "print(train_demo_bundle(Path(sys.argv[1]), n=int(sys.argv[2]), seed=0, epochs=20, phantom_size=(160, 208), size=80))"
)
# What the cached bundle was trained with; a change here (or in the phantom generator, "phantom-2") retrains it.
RECIPE = "phantom-2 gate-2 " + TRAIN  # gate-2: OOD statistics and calibration (mid-point operating point) (#9)


def _alnnode(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    out = subprocess.run([sys.executable, "-m", "node.cli", *args], capture_output=True, text=True, cwd=ROOT)
    if check and out.returncode != 0:
        raise NodeError(f"alnnode {args[0]} failed: {out.stderr.strip() or out.stdout.strip()}")
    return out


def demo_bundle() -> Path:
    """The cached demo bundle, trained on the first run (a few minutes on 2 CPU cores)."""
    meta = CACHE / "bundle" / "configs" / "metadata.json"
    recipe = CACHE / "recipe.txt"
    if (meta.is_file() and json.loads(meta.read_text()).get("aln_node_version") == __version__
            and recipe.is_file() and recipe.read_text() == RECIPE):
        print(f"== reusing the demo bundle in {meta.parent.parent}")
        return meta.parent.parent
    shutil.rmtree(CACHE, ignore_errors=True)
    CACHE.mkdir(parents=True)
    print("== training a small TIN bundle on 100 synthetic phantom loops (first run only, about 5 minutes on 2 cores) ...", flush=True)
    t0 = time.monotonic()
    out = subprocess.run([sys.executable, "-c", TRAIN, str(CACHE), "100"], cwd=ROOT, capture_output=True, text=True)
    if out.returncode != 0:
        raise NodeError(f"demo training failed:\n{out.stderr[-3000:]}")
    bundle = Path(out.stdout.strip().splitlines()[-1])
    recipe.write_text(RECIPE)
    auc = json.loads((bundle / "configs" / "metadata.json").read_text())["training"].get("held_out_auc")
    print(f"   trained in {time.monotonic() - t0:.0f} s; held-out AUC on phantoms {auc}")
    return bundle


def write_config(bundle: Path, port: int, pacs: LocalOrthanc | None) -> Path:
    if pacs is not None:
        dest = f'kind = "dimse"\nae_title = "{pacs.ae_title}"\nhost = "127.0.0.1"\nport = {pacs.dicom_port}\n'
    else:
        (OUT / "results").mkdir()
        dest = f'kind = "folder"\npath = "{OUT / "results"}"\n'
    config = OUT / "alnnode.toml"
    config.write_text(
        f"""# demo configuration written by `make demo`
[node]
ae_title = "ALN_AI"
host = "127.0.0.1"
port = {port}
[[peers]]
ae_title = "US_ROOM1"
host = "127.0.0.1"
[storage]
data_dir = "{OUT / 'var'}"
min_free_mb = 100
[model]
bundle = "{bundle}"
allow_research_models = true   # the demo model is trained on synthetic phantoms only
[queue]
embedded_workers = 1
[[destinations]]
name = "pacs"
{dest}""",
        encoding="utf-8",
    )
    return config


def start_pacs() -> LocalOrthanc | None:
    try:
        pacs = LocalOrthanc(OUT / "orthanc", name="aln-node-demo").start()
    except NodeError as exc:
        print(f"== no local Orthanc ({exc}); results go to {OUT / 'results'}")
        return None
    print(f"== local Orthanc (the PACS): {pacs.url}/app/explorer.html, DICOM {pacs.ae_title}@127.0.0.1:{pacs.dicom_port}")
    return pacs


def wait_listening(log: Path, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 120
    while b"listening on" not in log.read_bytes():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise NodeError(f"the node did not start:\n{log.read_text(errors='replace')[-3000:]}")
        time.sleep(0.2)


def wait_done(ledger: Ledger, uids: list[str], timeout: float = 900) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        rows = [ledger.find(u) for u in uids]
        done = sum(r is not None and r["state"] in FINISHED_STATES for r in rows)
        print(f"\r   {done}/{len(uids)} loops finished", end="", flush=True)
        if done == len(uids):
            print()
            return
        time.sleep(1)
    raise NodeError(f"results not ready after {timeout:.0f} s (see {OUT / 'var' / 'logs'})")


def where(pacs: LocalOrthanc | None, uid: str, study_uid: str) -> str:
    if pacs is None:
        return str(OUT / "results" / study_uid)
    try:
        hits = pacs.lookup(study_uid)
    except NodeError:
        hits = []
    return f"{pacs.url}/app/explorer.html#study?uuid={hits[0]}" if hits else "(not in Orthanc)"


def report(ledger: Ledger, files: dict[str, Path], truth: dict[str, int], pacs: LocalOrthanc | None) -> None:
    print(f"\n{'loop':<24} {'truth':>5} {'P(ALN met.)':>11} {'key frame':>9}  state / where to see SR + heatmap")
    scores: dict[int, list[float]] = {0: [], 1: []}
    for uid, path in files.items():
        row = ledger.find(uid)
        assert row is not None
        label = truth.get(uid)
        known = "-" if label is None else str(label)
        prob, key = "-", "-"
        pred = result_dir(OUT / "var", uid) / "prediction.npz"
        if pred.exists():
            with np.load(pred) as data:
                meta = json.loads(bytes(data["meta"]).decode())
            prob, key = f"{100 * meta['probability']:.1f} %", str(meta["key_frame"] + 1)
            if meta.get("gate", {}).get("not_assessable"):  # the input gate refused it: no probability
                prob, key = "n/a", "-"
            elif label is not None:
                scores[label].append(meta["probability"])
        study = str(dcmread(path, stop_before_pixels=True).StudyInstanceUID)
        place = where(pacs, uid, study) if row["state"] == "dispatched" else f"{row['state']}: {row['reason']}"
        print(f"{path.name:<24} {known:>5} {prob:>11} {key:>9}  {place}")
    if scores[0] and scores[1]:
        pairs = [(p, n) for p in scores[1] for n in scores[0]]
        auc = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p, n in pairs) / len(pairs)
        print(f"\nphantom positives: mean P {np.mean(scores[1]):.2f}; negatives: mean P {np.mean(scores[0]):.2f}; AUC {auc:.2f}")
    print("(key frame = DICOM frame number; results are for research use only, not for diagnostic use)")


def main() -> int:
    shutil.rmtree(OUT, ignore_errors=True)
    OUT.mkdir()
    from pydicom.data import get_testdata_file

    bundle = demo_bundle()
    print("== held-out phantom loops: alnnode phantom --out demo-out/phantoms --n 6 --seed 2026 --frames 24 --size 160x208")
    _alnnode("phantom", "--out", str(OUT / "phantoms"), "--n", "6", "--seed", "2026", "--frames", "24", "--size", "160x208")
    with open(OUT / "phantoms" / "manifest.csv", newline="") as fh:
        manifest = list(csv.DictReader(fh))
    loops = [OUT / "phantoms" / r["path"] for r in manifest] + [Path(str(get_testdata_file(REAL_LOOP)))]
    files = {str(dcmread(p, stop_before_pixels=True).SOPInstanceUID): p for p in loops}
    truth = {str(dcmread(OUT / "phantoms" / r["path"], stop_before_pixels=True).SOPInstanceUID): int(r["label"]) for r in manifest}

    pacs = start_pacs()
    config = write_config(bundle, free_port(), pacs)
    port = int(next(line.split("=")[1] for line in config.read_text().splitlines() if line.startswith("port")))
    log = OUT / "node.log"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with open(log, "wb") as fh:
        node = subprocess.Popen([sys.executable, "-m", "node.cli", "-v", "serve", "--allow-root", "--config", str(config)], stdout=fh, stderr=fh, cwd=ROOT, env=env)
    ledger: Ledger | None = None
    try:
        wait_listening(log, node)
        ledger = Ledger(f"sqlite:///{OUT / 'var' / 'ledger.sqlite'}")  # the node has created it
        to = f"ALN_AI@127.0.0.1:{port}"
        print(f"== node listening: {to} (config {config}, log {log})")
        print("== alnnode send: 6 phantom loops + the real 120-frame JPEG cine of pydicom-data")
        sent = _alnnode("send", *map(str, loops), "--to", to, "--calling", "US_ROOM1", check=False)
        print(sent.stdout.strip())
        if sent.returncode != 0:
            raise NodeError(f"alnnode send failed: {sent.stderr.strip()}")
        print("== classifying (TIN on CPU), rendering SR + Grad-CAM heatmaps, sending to the PACS ...")
        wait_done(ledger, list(files))
        report(ledger, files, truth, pacs)
        print("\n== alnnode status")
        print(_alnnode("status", "--config", str(config)).stdout)
        if pacs is not None and sys.stdin.isatty():
            input(f"Orthanc Explorer: {pacs.url}/app/explorer.html — press Enter to stop the demo ")
        elif pacs is not None:
            print(f"To browse the results later: Orthanc {pacs.config_path} (then {pacs.url}/app/explorer.html)")
        return 0
    except NodeError as exc:
        print(f"demo failed: {exc}", file=sys.stderr)
        return 1
    finally:
        if ledger is not None:
            ledger.close()
        node.terminate()
        node.wait(60)
        if pacs is not None:
            pacs.stop()


if __name__ == "__main__":
    sys.exit(main())
