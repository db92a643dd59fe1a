"""The MONAI Label server locked: every route it does not need closed, the datastore read-only, no path
instead of an id, a token checked on every route when authentication is on (the product's own included),
parameters refused before the work and a disconnected client's job stopped. Real servers on 127.0.0.1."""

import base64
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

pytest.importorskip("monailabel", reason="MONAI Label is the optional 'label' extra (make test installs it)")
import requests  # noqa: E402  (installed with MONAI Label)

from localdiffusion.serving.server import PUBLIC_ROUTES, WRITE_ROUTES, route_table  # noqa: E402

pytestmark = pytest.mark.slow  # real servers, installs, subprocesses or shipped models


def _stock_routes() -> list[tuple[str, str]]:
    """Every (method, path) stock MONAI Label's routers declare."""
    import importlib

    found = []
    for name in ("info", "model", "infer", "wsi_infer", "batch_infer", "train", "activelearning", "scoring",
                 "datastore", "logs", "ohif", "proxy", "session", "login"):
        module = importlib.import_module(f"monailabel.endpoints.{name}")
        for route in module.router.routes:
            for method in sorted(getattr(route, "methods", None) or ()):
                found.append((method, route.path))
    return found


def _url(path: str) -> str:
    import re

    return re.sub(r"\{[^}]+\}", "x", path)


def _call(url: str, method: str, path: str, **kwargs):
    return requests.request(method, url + _url(path), timeout=30, **kwargs)


def test_every_route_the_app_does_not_need_is_closed(server):
    served = route_table(auth=False, writable=False)
    stock = _stock_routes()
    assert len(stock) > 40  # the walk covers MONAI Label's routers
    closed = [(m, p) for m, p in stock if not any(m.replace("HEAD", "GET") == sm and _url(p).rstrip("/") ==
                                                  _url(sp).rstrip("/") for sm, sp in served)]
    for method, path in closed:
        answer = _call(server, method, path)
        assert answer.status_code == 404, (method, path, answer.status_code, answer.text[:200])
    assert ("PUT", "/datastore/image") in [(m, p.rstrip("/")) for m, p in closed]
    assert any(p.startswith("/infer/wsi") for _, p in closed) and any(p.startswith("/session") for _, p in closed)


def test_nothing_outside_the_studies_folder_is_written_read_or_deleted(server, tmp_path):
    from conftest import DATASTORE_IMAGE

    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    datastore = requests.get(f"{server}/datastore/?output=all", timeout=30).json()
    assert DATASTORE_IMAGE in json.dumps(datastore)
    for image in (f"../{victim.name}", str(victim), "../../escape", DATASTORE_IMAGE):
        put = requests.put(f"{server}/datastore/image", params={"image": image}, timeout=30,
                           files={"file": ("x.nii.gz", b"overwritten")})
        assert put.status_code == 404, (image, put.text)
        label = requests.put(f"{server}/datastore/label", params={"image": image}, timeout=30,
                             files={"label": ("x.nii.gz", b"overwritten")})
        assert label.status_code == 404, (image, label.text)
    assert requests.delete(f"{server}/datastore/image", params={"id": DATASTORE_IMAGE}, timeout=30).status_code == 404
    assert victim.read_text() == "keep me"
    assert requests.get(f"{server}/datastore/image", params={"image": DATASTORE_IMAGE}, timeout=30).status_code == 200
    for image in ("../" + DATASTORE_IMAGE, "/etc/passwd", str(victim)):
        assert requests.get(f"{server}/datastore/image", params={"image": image}, timeout=30).status_code == 404
        wsi = requests.post(f"{server}/infer/wsi_v2/ood_map", params={"image": image}, timeout=30)
        assert wsi.status_code == 404, wsi.text


def test_parameters_and_output_formats_are_refused_before_the_work(server, cohort):
    t1 = next(p for p in sorted(cohort.iterdir()) if "test_t" in p.name)
    t1 = t1 / f"{t1.name}_t1.nii.gz"
    slow = {"steps": 10, "extra_outputs": "all"}  # the tiny models' most: about 10-20 s of work
    for params, words in (({**slow, "result_extension": ".exe"}, "result_extension"),
                          ({**slow, "result_dtype": "uint8"}, "continuous"),
                          ({**slow, "ind_floor": float("nan")}, "finite number"),
                          ({**slow, "noise_sigma_z": "inf"}, "finite number")):
        start = time.monotonic()
        answer = requests.post(f"{server}/infer/local_diffusion", timeout=120, data={"params": json.dumps(params)},
                               files={"file": (t1.name, t1.read_bytes())})
        assert answer.status_code == 400 and words in answer.json()["detail"], (params, answer.text)
        assert time.monotonic() - start < 2, params
    integer_map = requests.post(f"{server}/infer/ood_map", timeout=120, data={"params": json.dumps(
        {"result_dtype": "uint8"})}, files={"file": (t1.name, t1.read_bytes())})
    assert integer_map.status_code == 400 and "continuous" in integer_map.json()["detail"]


def test_a_client_that_goes_away_frees_the_worker(server, cohort):
    """A client asks for a translation and hangs up after a second; the next request, behind it in the only
    worker, is answered long before that translation would have finished."""
    t1 = next(p for p in sorted(cohort.iterdir()) if "test_t" in p.name)
    t1 = t1 / f"{t1.name}_t1.nii.gz"
    params = {"data": {"params": json.dumps({"steps": 10, "extra_outputs": "all"})}}
    start = time.monotonic()
    full = requests.post(f"{server}/infer/local_diffusion", timeout=600, files={"file": (t1.name, t1.read_bytes())},
                         **params)
    one_translation = time.monotonic() - start
    assert full.status_code == 200
    start = time.monotonic()
    with pytest.raises(requests.exceptions.ReadTimeout):
        requests.post(f"{server}/infer/local_diffusion", timeout=(5, 1.0), files={"file": (t1.name, t1.read_bytes())},
                      **params)
    after = requests.post(f"{server}/infer/ood_map", timeout=600, files={"file": (t1.name, t1.read_bytes())})
    waited = time.monotonic() - start
    assert after.status_code == 200
    assert waited < 0.6 * one_translation, (waited, one_translation)


class _Realm:
    """A Keycloak-like realm on 127.0.0.1 that publishes a public key; :meth:`token` signs tokens with it."""

    def __init__(self):
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import rsa

        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        der = self.key.public_key().public_bytes(serialization.Encoding.DER,
                                                 serialization.PublicFormat.SubjectPublicKeyInfo)
        body = json.dumps({"public_key": base64.b64encode(der).decode()}).encode()

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        self.uri = f"http://127.0.0.1:{self.httpd.server_address[1]}/realms/test"

    def token(self, roles=("monailabel-user",), expires_in: float = 3600) -> str:
        import jwt

        claims = {"preferred_username": "radiologist", "realm_access": {"roles": list(roles)},
                  "exp": int(time.time() + expires_in)}
        return jwt.encode(claims, self.key, algorithm="RS256")


@pytest.fixture(scope="module")
def auth_server(tiny_models, tmp_path_factory):
    from conftest import _datastore_image
    from research.bench.label_server import local_server

    realm = _Realm()
    studies = tmp_path_factory.mktemp("auth_studies")
    _datastore_image(studies)
    env = {"MONAI_LABEL_AUTH_ENABLE": "true", "MONAI_LABEL_AUTH_REALM_URI": realm.uri}
    try:
        with local_server(studies, tmp_path_factory.mktemp("auth_log") / "server.log", models_root=tiny_models,
                          threads=1, env=env) as url:
            yield url, realm
    finally:
        realm.httpd.shutdown()


def test_with_authentication_every_route_checks_the_token_the_products_own_included(auth_server, cohort, tmp_path):
    url, realm = auth_server
    t1 = next(p for p in sorted(cohort.iterdir()) if "test_t" in p.name)
    t1 = t1 / f"{t1.name}_t1.nii.gz"
    guarded = [(m, p) for m, p in route_table(auth=True, writable=False) if (m, p) not in PUBLIC_ROUTES]
    assert ("POST", "/infer/{model}") in guarded
    expired = realm.token(expires_in=-60)
    for method, path in guarded:
        for header in ({}, {"Authorization": "Bearer garbage"}, {"Authorization": f"Bearer {expired}"}):
            answer = _call(url, method, path, headers=header)
            assert answer.status_code == 401, (method, path, header, answer.status_code, answer.text[:200])
    no_role = _call(url, "GET", "/info/", headers={"Authorization": f"Bearer {realm.token(roles=())}"})
    assert no_role.status_code == 403, no_role.text
    good = {"Authorization": f"Bearer {realm.token()}"}
    assert _call(url, "GET", "/info/", headers=good).status_code == 200
    answer = requests.post(f"{url}/infer/ood_map", headers=good, timeout=600,
                           files={"file": (t1.name, t1.read_bytes())})
    assert answer.status_code == 200, answer.text[:300]
    for method, path in WRITE_ROUTES:  # closed without the operator's opt-in, token or not
        assert _call(url, method, path, headers=good).status_code == 404


def test_the_slicer_client_token_field_works_with_authentication(auth_server, cohort, tmp_path):
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "SlicerLocalDiffusion"))
    from SlicerLocalDiffusionLib.label_client import infer

    url, realm = auth_server
    t1 = next(p for p in sorted(cohort.iterdir()) if "test_t" in p.name)
    t1 = t1 / f"{t1.name}_t1.nii.gz"
    with pytest.raises(Exception, match="requires authentication"):
        infer(url, "ood_map", t1, {}, tmp_path, 120)
    with pytest.raises(Exception, match="rejected the token"):
        infer(url, "ood_map", t1, {}, tmp_path, 120, token=realm.token(expires_in=-60))
    image, params = infer(url, "ood_map", t1, {}, tmp_path, 120, token=realm.token())
    assert Path(image).is_file() and params["modality"] == "t1"
