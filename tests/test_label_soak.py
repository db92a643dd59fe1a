"""A bounded soak of a real MONAI Label server on 127.0.0.1: 50 requests, three at a time, good
and bad mixed, against an admission limit of three; then a burst of six beyond it. /info
stays fast throughout, every answer is the one expected (200, 400 or 404; 503 with
Retry-After only in the burst), five clients that hang up mid-translation each free the worker, the server's
temporary folder holds nothing new afterwards and its
memory does not grow."""

import json
import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

pytest.importorskip("monailabel", reason="MONAI Label is the optional 'label' extra (make test installs it)")
pytest.importorskip("psutil")
import requests  # noqa: E402

pytestmark = pytest.mark.slow


def test_fifty_mixed_requests_keep_the_server_fast_clean_and_flat(tiny_models, cohort, tmp_path):
    from conftest import DATASTORE_IMAGE, _datastore_image

    from research.bench.label_server import local_server
    from research.bench.soak import hang_up, request_kinds, tree_rss

    studies, scratch = tmp_path / "studies", tmp_path / "tmp"
    studies.mkdir()
    scratch.mkdir()
    _datastore_image(studies)
    case = next(p for p in sorted(cohort.iterdir()) if "test_t" in p.name)
    t1 = case / f"{case.name}_t1.nii.gz"
    text = tmp_path / "notes.txt"
    text.write_text("not an image")
    process = {}
    env = {"TMPDIR": str(scratch), "LOCALDIFFUSION_LABEL_QUEUE": "3"}
    with local_server(studies, tmp_path / "server.log", models_root=tiny_models, threads=1, env=env,
                      process=process) as url:
        kinds = request_kinds(url, t1, text, DATASTORE_IMAGE)
        disconnect = lambda: hang_up(url, t1)  # noqa: E731
        plan = [name for name in kinds for _ in range(8)][:50]
        random.Random(0).shuffle(plan)
        rss = lambda: tree_rss(process["pid"])  # noqa: E731
        stop, latencies = threading.Event(), []

        def watch():
            while not stop.is_set():
                start = time.monotonic()
                assert requests.get(f"{url}/info/", timeout=10).status_code == 200
                latencies.append(time.monotonic() - start)
                time.sleep(0.1)

        def one(name):
            answer, allowed = kinds[name]()
            assert answer.status_code in allowed, (name, answer.status_code, answer.text[:300])
            if answer.status_code == 503:
                assert int(answer.headers["Retry-After"]) > 0
            return name, answer.status_code

        kinds["burst"] = lambda: (requests.post(f"{url}/infer/local_diffusion", params={"output": "image"}, timeout=300,
                                                files={"file": (t1.name, t1.read_bytes())},
                                                data={"params": json.dumps({"steps": 10})}), {200, 503})
        at_start = {p.name for p in scratch.iterdir()}  # MONAI Label's own start-up files (its log config)
        for name in ("ood", "translate", "by_id"):  # warm up: models loaded, caches filled
            one(name)
        before = rss()
        gone_waits = []
        watcher = threading.Thread(target=watch)
        watcher.start()
        try:
            with ThreadPoolExecutor(3) as pool:
                results = list(pool.map(one, plan))
            with ThreadPoolExecutor(6) as pool:  # beyond the admission limit
                burst = [code for _, code in pool.map(one, ["burst"] * 6)]
            for _ in range(5):  # clients that hang up mid-translation: each job stops, the next request is served
                disconnect()
                start = time.monotonic()
                one("ood")
                gone_waits.append(time.monotonic() - start)
        finally:
            stop.set()
            watcher.join()
        after = rss()
        leftovers = sorted(p.name for p in scratch.iterdir() if p.name not in at_start)
    codes = [code for _, code in results]
    assert codes.count(200) == 24 and codes.count(400) == 24 and codes.count(404) == 2, codes
    assert 503 in burst and burst.count(200) >= 3, burst
    assert max(latencies) < 1.0, max(latencies)
    assert leftovers == [], leftovers
    assert max(gone_waits) < 15, gone_waits  # a whole 10-step translation with every output takes longer
    assert after - before < 200 * 2**20, (before / 2**20, after / 2**20)
