"""The prediction server of cloud/serving_container, for real on 127.0.0.1.

A tiny SavedModel made here with plain TensorFlow (a ``tf.Module`` whose ``serving_default``
takes ``user_id`` and ``item_id`` strings, like the trainer's exports, plus a ``recommend``
signature with a scalar ``k``) is served by ``server.py`` in a child process, configured the
way Vertex AI configures a custom container (``AIP_HTTP_PORT``, ``AIP_HEALTH_ROUTE``,
``AIP_PREDICT_ROUTE``, ``AIP_STORAGE_URI``; the routes here are Vertex's own defaults for a
container that names none, so the test shows the server follows the environment), and queried
over HTTP with Vertex's ``{"instances": [...]}`` body. The server is stopped at the end.
"""
from __future__ import annotations

import base64
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SERVER = REPO / "cloud" / "serving_container" / "server.py"
HEALTH_ROUTE = "/v1/endpoints/123/deployedModels/456"
PREDICT_ROUTE = "/v1/endpoints/123/deployedModels/456:predict"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _write_model(path: Path) -> None:
    """Written in a child process so this test process never imports TensorFlow."""
    script = f"""
import tensorflow as tf

class Server(tf.Module):
    def __init__(self):
        super().__init__()
        self.users = tf.lookup.StaticHashTable(
            tf.lookup.KeyValueTensorInitializer(tf.constant(["1", "2"]), tf.constant([0, 1], tf.int64)), -1)
        self.bias = tf.Variable([4.0, 2.0])

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="user_id"),
                                  tf.TensorSpec([None], tf.string, name="item_id")])
    def score(self, user_id, item_id):
        index = self.users.lookup(user_id)
        known = index >= 0
        rating = tf.where(known, tf.gather(self.bias, tf.maximum(index, 0)), 3.0) + tf.strings.to_number(item_id) / 100.0
        return {{"rating": rating, "known_user": known, "item_id": item_id}}

    @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name="user_id"), tf.TensorSpec([], tf.int32, name="k")])
    def recommend(self, user_id, k):
        items = tf.strings.as_string(tf.range(k))
        return {{"item_id": tf.tile(items[None, :], [tf.shape(user_id)[0], 1])}}

server = Server()
tf.saved_model.save(server, {str(path)!r}, signatures={{"serving_default": server.score, "recommend": server.recommend}})
"""
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    subprocess.run([sys.executable, "-c", script], check=True, env=env, capture_output=True, timeout=180)


def _call(url: str, body=None, method=None):
    data = None if body is None else (body if isinstance(body, bytes) else json.dumps(body).encode())
    request = urllib.request.Request(url, data=data, method=method or ("POST" if data is not None else "GET"),
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    model = tmp_path_factory.mktemp("serving") / "model"
    _write_model(model)
    port = _free_port()
    env = dict(os.environ, AIP_HTTP_PORT=str(port), AIP_HEALTH_ROUTE=HEALTH_ROUTE,
               AIP_PREDICT_ROUTE=PREDICT_ROUTE, AIP_STORAGE_URI=str(model), TF_CPP_MIN_LOG_LEVEL="3")
    process = subprocess.Popen([sys.executable, str(SERVER), "--host", "127.0.0.1"], env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                status, body = _call(base + HEALTH_ROUTE)
                if status == 200:
                    break
                assert status == 503 and body == {"status": "loading"}, (status, body)
            except (urllib.error.URLError, ConnectionError):
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"server did not become healthy: {process.communicate(timeout=10)[0].decode()[-3000:]}")
            time.sleep(0.3)
        yield base
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait(timeout=20)


def test_health_names_the_signatures(server):
    status, body = _call(server + HEALTH_ROUTE)
    assert status == 200
    assert body["signatures"] == {"serving_default": ["item_id", "user_id"], "recommend": ["k", "user_id"]}


def test_predict_vertex_contract(server):
    status, body = _call(server + PREDICT_ROUTE,
                         {"instances": [{"user_id": "1", "item_id": "50"}, {"user_id": "999", "item_id": 7},
                                        {"user_id": {"b64": base64.b64encode(b"2").decode()}, "item_id": "0"}]})
    assert status == 200, body
    predictions = body["predictions"]
    assert [p["known_user"] for p in predictions] == [True, False, True]
    assert [round(p["rating"], 4) for p in predictions] == [4.5, 3.07, 2.0]
    assert [p["item_id"] for p in predictions] == ["50", "7", "0"]  # strings back as text; numbers sent as text
    status, body = _call(server + PREDICT_ROUTE,
                         {"instances": [{"user_id": "1"}, {"user_id": "2"}], "parameters": {"signature_name": "recommend", "k": 3}})
    assert status == 200, body
    assert body["predictions"] == [{"item_id": ["0", "1", "2"]}, {"item_id": ["0", "1", "2"]}]
    assert _call(server + PREDICT_ROUTE, {"instances": []}) == (200, {"predictions": []})


@pytest.mark.parametrize("body, message", [
    ({"inputs": []}, 'a JSON object with "instances"'),
    ({"instances": [{"user_id": "1"}]}, "instance 0 has no 'item_id'"),
    ({"instances": [{"user_id": "1", "item_id": "x"}], "parameters": {"signature_name": "nope"}}, "unknown signature_name 'nope'"),
    ({"instances": [{"user_id": "1"}], "parameters": {"signature_name": "recommend"}}, "needs the scalar 'k'"),
    ({"instances": [{"user_id": "1", "item_id": "abc"}]}, "the model refused the inputs"),
    (b"{not json", "the body is not JSON"),
])
def test_bad_requests_are_400_with_the_reason(server, body, message):
    status, answer = _call(server + PREDICT_ROUTE, body)
    assert status == 400 and message in answer["error"], answer


def test_other_routes_are_404(server):
    assert _call(server + "/predict", {"instances": []})[0] == 404  # the defaults are not served when AIP_* say otherwise
    assert _call(server + "/health")[0] == 404


def test_hostile_requests_get_an_answer_and_the_server_keeps_running(server):
    """Empty strings, a 100k-character id, 100k instances, deep nesting: a defined answer or a 400, never a crash."""
    url = server + PREDICT_ROUTE
    status, body = _call(url, {"instances": [{"user_id": "", "item_id": "1"}, {"user_id": "u" * 100_000, "item_id": "2"}]})
    assert status == 200 and [p["known_user"] for p in body["predictions"]] == [False, False], body
    status, body = _call(url, {"instances": [{"user_id": "1", "item_id": ""}]})  # the toy model cannot read "" as a number
    assert status == 400 and body["error"] == "the model refused the inputs: StringToNumberOp could not correctly convert string:"
    many = [{"user_id": str(i % 3), "item_id": str(i % 100)} for i in range(100_000)]
    status, body = _call(url, {"instances": many})
    assert status == 200 and len(body["predictions"]) == 100_000
    assert [p["known_user"] for p in body["predictions"][:3]] == [False, True, True]
    status, body = _call(url, {"instances": [{"user_id": "1"}], "parameters": {"signature_name": "recommend", "k": 10**12}})
    assert status == 400 and body["error"] == "input 'k' = 1000000000000 is outside int32 [-2147483648, 2147483647]", body
    status, body = _call(url, b'{"instances": ' + b"[" * 100_000 + b"]" * 100_000 + b"}")
    assert status in (400, 500) and "error" in body
    assert _call(server + HEALTH_ROUTE)[0] == 200  # still serving
