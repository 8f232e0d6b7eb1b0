"""Vertex AI custom prediction container: a TF 2.21 SavedModel's signatures over HTTP.

Why our own server: Vertex's newest prebuilt TensorFlow prediction image serves TF 2.17,
and our exports are TF 2.21 SavedModels (tf.Transform vocabulary tables inside; the GNN
export's functions carry TF-GNN ``GraphTensorSpec`` signatures, which ``tf.saved_model.load``
can only decode with ``tensorflow_gnn`` imported). This image has the training pins
(``cloud/serving_container/Dockerfile``), so whatever the trainer exported loads here.

The Vertex AI custom-container contract (the environment Vertex sets):

* listen on ``0.0.0.0:$AIP_HTTP_PORT`` (default 8080);
* ``GET $AIP_HEALTH_ROUTE`` (default ``/health``): 200 once the model is loaded, 503 before;
* ``POST $AIP_PREDICT_ROUTE`` (default ``/predict``): ``{"instances": [...], "parameters": {...}}``
  -> ``{"predictions": [...]}``, one prediction per instance;
* the model is at ``$AIP_STORAGE_URI`` (a gs:// copy of the Model's ``artifact_uri``; TF reads gs://).

Instances are objects keyed by the signature's input names (``{"user_id": "1", "item_id": "50"}``);
for a signature with one batched input a bare value works too. Binary strings may be sent as
``{"b64": "..."}`` (TF Serving's convention; the GNN signature takes serialized ``examples``).
``parameters`` may name another signature (``{"signature_name": "recommend", "k": 10}``) and
carries its scalar inputs. Each prediction is an object of the signature's outputs
(``{"rating": 3.9, "known_user": true, "known_item": true}``); strings come back as text, or as
``{"b64": ...}`` when they are not UTF-8. A bad request is a 400 with ``{"error": "..."}``.

Usage (locally)::

    python cloud/serving_container/server.py --model-dir JOB/export --host 127.0.0.1 --port 8080
    curl -s localhost:8080/predict -d '{"instances": [{"user_id": "1", "item_id": "50"}]}'

Only the standard library and TensorFlow (imported at model load, not at import time).
"""
from __future__ import annotations

import argparse
import base64
import json
import math
import os
import sys
import threading
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Mapping, Sequence

DEFAULT_PORT = 8080
DEFAULT_HEALTH_ROUTE = "/health"
DEFAULT_PREDICT_ROUTE = "/predict"
DEFAULT_SIGNATURE = "serving_default"
MAX_BODY_BYTES = 16 * 1024 * 1024  # Vertex itself stops requests at 1.5 MB


class RequestError(ValueError):
    """A request the client must fix: answered with 400 and the message."""


def _log(message: str) -> None:
    print(f"[server] {message}", file=sys.stderr, flush=True)


def _decode(value: Any, is_string: bool) -> Any:
    """One JSON value as a tensor element: ``{"b64": ...}`` -> bytes; numbers to text for string inputs."""
    if isinstance(value, Mapping):
        if set(value) == {"b64"} and isinstance(value["b64"], str):
            try:
                return base64.b64decode(value["b64"], validate=True)
            except ValueError:
                raise RequestError("a {\"b64\": ...} value is not valid base64") from None
        raise RequestError(f"unexpected object {json.dumps(value)[:80]} (only {{\"b64\": \"...\"}} is one value)")
    if isinstance(value, list):
        return [_decode(v, is_string) for v in value]
    if is_string and isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    return value


def _check_integers(value: Any, key: str, dtype) -> None:
    """Integers must fit the input's dtype: ``tf.constant(10**12, tf.int32)`` wraps around silently."""
    if isinstance(value, list):
        for item in value:
            _check_integers(item, key, dtype)
    elif isinstance(value, int) and not isinstance(value, bool) and not dtype.min <= value <= dtype.max:
        raise RequestError(f"input {key!r} = {value} is outside {dtype.name} [{dtype.min}, {dtype.max}]")


def _model_error(error: Exception) -> str:
    """The line of a TensorFlow error that says what went wrong (not "Graph execution error:" or the stack)."""
    for line in getattr(error, "message", str(error)).splitlines():
        line = line.split("\t [[")[0].strip()
        if line and line not in ("Graph execution error:", "<stack traces unavailable>") and not line.startswith(
                ("Detected at node", "File ")):
            return line[:300]
    return error.__class__.__name__


def _encode(value: Any) -> Any:
    """A numpy value as JSON: bytes -> text (or {"b64"}), non-finite floats -> null, arrays -> lists."""
    if hasattr(value, "tolist"):
        value = value.tolist()
    if isinstance(value, list):
        return [_encode(v) for v in value]
    if isinstance(value, bytes):
        try:
            return value.decode("utf-8")
        except UnicodeDecodeError:
            return {"b64": base64.b64encode(value).decode("ascii")}
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


class Model:
    """A loaded SavedModel and the JSON <-> tensor conversion of its signatures."""

    def __init__(self, model_dir: str):
        os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")  # Keras 2, as the trainer (TF-GNN needs it)
        import tensorflow as tf

        try:  # registers GraphTensorSpec & co.; GNN exports cannot be decoded without it
            import tensorflow_gnn  # noqa: F401
        except ImportError:
            pass
        self.tf = tf
        self.model_dir = model_dir
        self.loaded = tf.saved_model.load(model_dir)
        self.signatures = dict(self.loaded.signatures)
        if DEFAULT_SIGNATURE not in self.signatures:
            raise ValueError(f"{model_dir} has no {DEFAULT_SIGNATURE} signature (has: {', '.join(self.signatures) or 'none'})")

    def describe(self) -> dict[str, Any]:
        return {name: sorted(fn.structured_input_signature[1]) for name, fn in self.signatures.items()}

    def predict(self, body: Any) -> dict[str, Any]:
        """``{"instances": [...], "parameters": {...}}`` -> ``{"predictions": [...]}``."""
        tf = self.tf
        if not isinstance(body, Mapping) or not isinstance(body.get("instances"), list):
            raise RequestError('the body must be a JSON object with "instances": [...]')
        instances = body["instances"]
        parameters = body.get("parameters") or {}
        if not isinstance(parameters, Mapping):
            raise RequestError('"parameters" must be a JSON object')
        name = parameters.get("signature_name", DEFAULT_SIGNATURE)
        if name not in self.signatures:
            raise RequestError(f"unknown signature_name {name!r} (have: {', '.join(sorted(self.signatures))})")
        function = self.signatures[name]
        specs = function.structured_input_signature[1]
        batched = sorted(key for key, spec in specs.items() if spec.shape.rank != 0)
        if not instances:
            return {"predictions": []}
        inputs = {}
        for key, spec in specs.items():
            is_string = spec.dtype == tf.string
            if spec.shape.rank == 0:
                if key not in parameters:
                    raise RequestError(f"signature {name} needs the scalar {key!r} in \"parameters\"")
                column: Any = _decode(parameters[key], is_string)
            else:
                column = []
                for index, instance in enumerate(instances):
                    if isinstance(instance, Mapping) and not (set(instance) == {"b64"}):
                        if key not in instance:
                            raise RequestError(f"instance {index} has no {key!r} (inputs of {name}: {', '.join(batched)})")
                        column.append(_decode(instance[key], is_string))
                    elif len(batched) == 1:
                        column.append(_decode(instance, is_string))
                    else:
                        raise RequestError(f"instance {index} must be an object with {', '.join(batched)}")
            if spec.dtype.is_integer:
                _check_integers(column, key, spec.dtype)
            try:
                inputs[key] = tf.constant(column, dtype=spec.dtype)
            except (TypeError, ValueError) as error:
                raise RequestError(f"input {key!r} is not {spec.dtype.name}: {str(error).splitlines()[0][:200]}") from None
            if not spec.shape.is_compatible_with(inputs[key].shape):
                raise RequestError(f"input {key!r} has shape {inputs[key].shape.as_list()}, "
                                   f"signature {name} takes {spec.shape.as_list()}")
        try:
            outputs = function(**inputs)
        except (tf.errors.InvalidArgumentError, ValueError, TypeError) as error:
            raise RequestError(f"the model refused the inputs: {_model_error(error)}") from None
        count = len(instances)
        arrays = {key: value.numpy() for key, value in outputs.items()}
        predictions = []
        for row in range(count):
            prediction = {}
            for key, array in sorted(arrays.items()):
                per_row = getattr(array, "ndim", 0) >= 1 and array.shape[0] == count
                prediction[key] = _encode(array[row] if per_row else array)
            predictions.append(prediction)
        return {"predictions": predictions}


class _State:
    def __init__(self):
        self.model: Model | None = None
        self.failed: str | None = None


def make_handler(state: _State, health_route: str, predict_route: str):
    class Handler(BaseHTTPRequestHandler):
        server_version = "recsys-serving/1"

        def log_message(self, format, *args):  # noqa: A002  (quiet: Vertex logs every request already)
            pass

        def _send(self, status: int, payload: Mapping[str, Any]) -> None:
            data = json.dumps(payload).encode("utf-8")
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self):  # noqa: N802
            if self.path.split("?")[0] != health_route:
                return self._send(HTTPStatus.NOT_FOUND, {"error": f"no route {self.path} (health: {health_route})"})
            if state.model is not None:
                return self._send(HTTPStatus.OK, {"status": "ok", "signatures": state.model.describe()})
            if state.failed:
                return self._send(HTTPStatus.INTERNAL_SERVER_ERROR, {"error": state.failed})
            return self._send(HTTPStatus.SERVICE_UNAVAILABLE, {"status": "loading"})

        def do_POST(self):  # noqa: N802
            if self.path.split("?")[0] != predict_route:
                return self._send(HTTPStatus.NOT_FOUND, {"error": f"no route {self.path} (predict: {predict_route})"})
            if state.model is None:
                return self._send(HTTPStatus.SERVICE_UNAVAILABLE, {"error": state.failed or "the model is still loading"})
            try:
                length = int(self.headers.get("Content-Length") or 0)
                if length <= 0 or length > MAX_BODY_BYTES:
                    raise RequestError(f"the body must be 1 to {MAX_BODY_BYTES} bytes of JSON")
                try:
                    body = json.loads(self.rfile.read(length))
                except ValueError as error:
                    raise RequestError(f"the body is not JSON: {error}") from None
                return self._send(HTTPStatus.OK, state.model.predict(body))
            except RequestError as error:
                return self._send(HTTPStatus.BAD_REQUEST, {"error": str(error)})
            except Exception as error:  # an unexpected model failure: 500, the server keeps running
                _log(f"predict failed: {error.__class__.__name__}: {error}")
                return self._send(HTTPStatus.INTERNAL_SERVER_ERROR, {"error": f"{error.__class__.__name__}: {error}"})

    return Handler


def parse_args(argv: Sequence[str] | None, environ: Mapping[str, str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="server.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-dir", default=environ.get("AIP_STORAGE_URI"),
                        help="SavedModel directory, local or gs:// (default $AIP_STORAGE_URI)")
    parser.add_argument("--host", default="0.0.0.0", help="address to listen on (Vertex: 0.0.0.0)")
    parser.add_argument("--port", type=int, default=int(environ.get("AIP_HTTP_PORT") or DEFAULT_PORT),
                        help=f"default $AIP_HTTP_PORT or {DEFAULT_PORT}")
    args = parser.parse_args(argv)
    args.health_route = environ.get("AIP_HEALTH_ROUTE") or DEFAULT_HEALTH_ROUTE
    args.predict_route = environ.get("AIP_PREDICT_ROUTE") or DEFAULT_PREDICT_ROUTE
    if not args.model_dir:
        parser.error("no model: pass --model-dir or set AIP_STORAGE_URI")
    return args


def main(argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None) -> int:
    args = parse_args(argv, os.environ if environ is None else environ)
    state = _State()
    # Listen first (Vertex's liveness probe only needs the port), load the model, then report healthy.
    httpd = ThreadingHTTPServer((args.host, args.port), make_handler(state, args.health_route, args.predict_route))
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, name="http", daemon=True)
    thread.start()
    _log(f"listening on {args.host}:{httpd.server_address[1]} (health {args.health_route}, predict {args.predict_route}); "
         f"loading {args.model_dir}")
    try:
        state.model = Model(args.model_dir)
    except Exception as error:  # noqa: BLE001  (any load failure ends the container with the reason)
        state.failed = f"cannot load {args.model_dir}: {error.__class__.__name__}: {str(error).splitlines()[0] if str(error) else ''}"
        _log(state.failed)
        httpd.shutdown()
        return 1
    _log(f"ready: signatures {json.dumps(state.model.describe())}")
    try:
        thread.join()
    except KeyboardInterrupt:
        httpd.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
