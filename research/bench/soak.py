"""Soak a real MONAI Label server on 127.0.0.1 with mixed requests and clients that hang up.

The request mix (:func:`request_kinds`) is the one ``tests/test_label_soak.py`` sends 50 of: an OOD
map, a 2-step translation, a datastore-id segmentation, a text file, bad parameters, bad steps and a
file path instead of an id. Here the mix runs for a fixed time, three clients at a time, and every
tenth request is a client that asks for a translation and hangs up after half a second
(:func:`hang_up`); a client told "busy" (503) waits a second. The temporary files are listed once the
server has finished what it was doing (a hung-up job stops at its next slice batch). The server's memory (RSS of its process tree) is sampled every ``--sample``
seconds; the result is a JSON record with every sample, the answers counted by kind and status, the
/info latencies, the slope of memory over the soak and the temporary files left::

    python -m research.bench.soak --minutes 30 --models monai_bundle/models \\
        --case data/bench_val/ld0_val_t0000 --out research/results/label_soak.json
"""

from __future__ import annotations

import argparse
import json
import random
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

HUNG_UP = 0  # the status recorded for a client that hung up before the answer


def request_kinds(url: str, t1: Path, text: Path, image_id: str, steps: int = 2) -> dict:
    """name -> callable returning (response, the statuses it may have)."""
    import requests

    def upload(path, model, params):
        return requests.post(f"{url}/infer/{model}", params={"output": "image"}, timeout=300,
                             files={"file": (path.name, path.read_bytes())}, data={"params": params})

    return {
        "ood": lambda: (upload(t1, "ood_map", "{}"), {200}),
        "translate": lambda: (upload(t1, "local_diffusion", json.dumps({"steps": steps})), {200}),
        "by_id": lambda: (requests.post(f"{url}/infer/ood_segmentation", timeout=300,
                                        params={"output": "image", "image": image_id}), {200}),
        "text": lambda: (upload(text, "ood_map", "{}"), {400}),
        "params": lambda: (upload(t1, "ood_map", "[1, 2]"), {400}),
        "steps": lambda: (upload(t1, "local_diffusion", json.dumps({"steps": -1})), {400}),
        "path": lambda: (requests.post(f"{url}/infer/ood_map", timeout=60,
                                       params={"output": "image", "image": str(t1)}), {404}),
    }


def hang_up(url: str, t1: Path, wait: float = 0.5, busy_ok: bool = False):
    """Ask for a 10-step translation with every output and hang up after ``wait`` seconds; returns a
    stand-in answer with status :data:`HUNG_UP` (or, with ``busy_ok``, the server's 503 when its admission
    limit is reached). AssertionError if the server answered otherwise in time."""
    import requests

    try:
        answer = requests.post(f"{url}/infer/local_diffusion", params={"output": "image"}, timeout=(5, wait),
                               files={"file": (t1.name, t1.read_bytes())},
                               data={"params": json.dumps({"steps": 10, "extra_outputs": "all"})})
    except requests.exceptions.ReadTimeout:
        return type("Gone", (), {"status_code": HUNG_UP, "text": "", "headers": {}})()
    if busy_ok and answer.status_code == 503:
        return answer
    raise AssertionError(f"the server answered a translation within {wait} s: {answer.status_code}")


def tree_rss(pid: int) -> int:
    """Resident memory of a process and all its children, in bytes."""
    import psutil

    root = psutil.Process(pid)
    return sum(p.memory_info().rss for p in [root, *root.children(recursive=True)])


def soak(url: str, pid: int, kinds: dict, hang_up_once, seconds: float, sample: float = 10.0,
         clients: int = 3, seed: int = 0, log=print) -> dict:
    """Send ``kinds`` in a seeded random order (every tenth request ``hang_up_once``), ``clients`` at a time,
    until ``seconds`` have passed (503 with Retry-After, the admission limit, is allowed for every kind and
    counted); sample the server's memory every ``sample`` seconds and /info's latency
    every 0.1 s. Returns counts, samples (seconds, MiB), latencies and the memory slope (MiB per hour)."""
    import requests

    rng = random.Random(seed)
    names = sorted(kinds)
    counts: dict[str, dict[str, int]] = {}
    unexpected: list[str] = []
    samples, latencies = [], []
    lock, stop = threading.Lock(), threading.Event()
    start = time.monotonic()

    def watch():
        next_sample = 0.0
        while not stop.is_set():
            t0 = time.monotonic()
            try:
                status = requests.get(f"{url}/info/", timeout=30).status_code
            except Exception as exc:  # noqa: BLE001  recorded: /info must always answer
                status = repr(exc)[:200]
            latencies.append(time.monotonic() - t0)
            if status != 200:
                unexpected.append(f"/info answered {status}")
            if t0 - start >= next_sample:
                samples.append((round(t0 - start, 1), tree_rss(pid) / 2**20))
                next_sample += sample
            time.sleep(0.1)

    def one(index: int):
        with lock:
            name = "hang_up" if index % 10 == 9 else rng.choice(names)
        try:
            answer, allowed = (hang_up_once(), {HUNG_UP}) if name == "hang_up" else kinds[name]()
            allowed = allowed | {503}  # the admission limit: a hung-up job may hold a place until it stops
        except Exception as exc:  # a refused connection, a timeout: recorded, the soak goes on
            with lock:
                unexpected.append(f"{name}: {exc!r}"[:300])
            return
        with lock:
            by_status = counts.setdefault(name, {})
            by_status[str(answer.status_code)] = by_status.get(str(answer.status_code), 0) + 1
            if answer.status_code not in allowed:
                unexpected.append(f"{name}: {answer.status_code} {answer.text[:200]}")
        if answer.status_code == 503:  # busy: wait a little, as a client would (not the whole Retry-After)
            time.sleep(1.0)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    index = 0
    try:
        with ThreadPoolExecutor(clients) as pool:
            running = set()
            while time.monotonic() - start < seconds:
                while len(running) < clients:
                    running.add(pool.submit(one, index))
                    index += 1
                done = {f for f in running if f.done()}
                for future in done:
                    future.result()
                running -= done
                if done and index % 50 < clients:
                    log(f"{time.monotonic() - start:.0f} s: {index} requests, "
                        f"{samples[-1][1] if samples else float('nan'):.0f} MiB")
                time.sleep(0.05)
            for future in running:
                future.result()
    finally:
        stop.set()
        watcher.join()
    t, mib = np.array([s[0] for s in samples]), np.array([s[1] for s in samples])
    slope = float(np.polyfit(t / 3600, mib, 1)[0]) if len(t) > 2 else float("nan")
    return {"seconds": time.monotonic() - start, "requests": index, "counts": counts, "unexpected": unexpected,
            "memory_mib": samples, "memory_slope_mib_per_hour": slope,
            "info_latency_s": {"max": max(latencies), "p99": float(np.percentile(latencies, 99))}}


def main(argv: list[str] | None = None) -> int:
    from localdiffusion.data.io import load_volume, save_volume
    from research.bench.label_server import local_server

    p = argparse.ArgumentParser(prog="python -m research.bench.soak", description=__doc__.splitlines()[0])
    p.add_argument("--minutes", type=float, default=30.0)
    p.add_argument("--models", type=Path, default=None, help="models root (default: the shipped models)")
    p.add_argument("--case", type=Path, required=True, help="a phantom case folder; its T1 is sent")
    p.add_argument("--out", type=Path, required=True, help="JSON record")
    p.add_argument("--sample", type=float, default=10.0, help="seconds between memory samples")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    t1 = args.case / f"{args.case.name}_t1.nii.gz"
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        studies, scratch = tmp / "studies", tmp / "scratch"
        studies.mkdir(), scratch.mkdir()
        save_volume(studies / "soak_t1.nii.gz", *load_volume(t1))
        text = tmp / "notes.txt"
        text.write_text("not an image")
        process = {}
        with local_server(studies, tmp / "server.log", models_root=args.models, threads=1,
                          env={"TMPDIR": str(scratch), "LOCALDIFFUSION_LABEL_QUEUE": "3"}, process=process) as url:
            kinds = request_kinds(url, t1, text, "soak_t1")
            at_start = {q.name for q in scratch.iterdir()}
            for name in ("ood", "translate", "by_id"):  # warm up: models loaded, caches filled
                kinds[name]()
            record = soak(url, process["pid"], kinds, lambda: hang_up(url, t1, busy_ok=True), args.minutes * 60,
                          args.sample,
                          seed=args.seed)
            deadline = time.monotonic() + 120  # a hung-up job still running stops at its next slice batch
            while time.monotonic() < deadline and any(q.name not in at_start for q in scratch.iterdir()):
                time.sleep(1.0)
            record["leftover_temporary_files"] = sorted(q.name for q in scratch.iterdir() if q.name not in at_start)
    mib = [m for _, m in record["memory_mib"]]
    record.update({"command": "python -m research.bench.soak " + " ".join(argv or []), "minutes": args.minutes,
                   "models": str(args.models or "shipped"), "case": str(args.case),
                   "memory_first_5_min_mib": float(np.median([m for t, m in record["memory_mib"] if t < 300])),
                   "memory_last_5_min_mib": float(np.median([m for t, m in record["memory_mib"]
                                                             if t > record["seconds"] - 300])),
                   "memory_max_mib": max(mib)})
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
    print(f"{record['requests']} requests in {record['seconds'] / 60:.1f} min; memory {record['memory_first_5_min_mib']:.0f} "
          f"-> {record['memory_last_5_min_mib']:.0f} MiB (slope {record['memory_slope_mib_per_hour']:+.1f} MiB/h, "
          f"max {record['memory_max_mib']:.0f}); unexpected answers: {len(record['unexpected'])}; "
          f"temporary files left: {len(record['leftover_temporary_files'])} -> {args.out}")
    return 0 if not record["unexpected"] and not record["leftover_temporary_files"] else 1


if __name__ == "__main__":
    import sys

    sys.exit(main(sys.argv[1:]))
