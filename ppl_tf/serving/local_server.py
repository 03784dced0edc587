"""Local stand-ins for TF Serving: a SavedModel export served over TF Serving's REST and gRPC
protocols, for tests and for trying an export on a machine without Docker.

What it is for: `RestServer` and `GrpcServer` run the export's signatures with TF Serving's
request and response formats and its kinds of errors (HTTP 400 with `{"error": ...}`, gRPC
INVALID_ARGUMENT / NOT_FOUND), and keep serving after a bad request, so that the clients of
`ppl_tf.serving.client` and an application's own requests can be checked against an export
without the TF Serving binary (which our CI machines cannot install):

    python -m ppl_tf.serving exported/digits --rest-port 8501 --grpc-port 8500

What it is not: a production server. It serves one model version, runs requests one at a time
(a lock around the SavedModel), has no batching, model reloading, version policies,
monitoring, TLS or authentication. Serve exports with TF Serving (`tensorflow/serving`, see
README), which reads the same folders.
"""

import argparse
import base64
import json
import threading
from concurrent import futures
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np

from ppl_tf.inference import DEFAULT_SIGNATURE, resolve_version
from ppl_tf.serving.client import GRPC_OPTIONS, tensorflow_serving_protos


def tf_error_message(error):
    """The informative lines of a TensorFlow op error, without graph-execution boilerplate."""
    skip = ("Graph execution error", "Detected at node", "<stack traces", "File ", "[[")
    lines = [line.strip() for line in str(error.message).splitlines()]
    kept = [line for line in lines if line and not line.startswith(skip)]
    return " ".join(kept) or str(error.message)


class SignatureRunner:
    """A SavedModel's signatures behind input checks that give clear messages."""

    def __init__(self, model_dir, model_name=None):
        import tensorflow as tf

        self._tf = tf
        self.path = resolve_version(model_dir)
        self.version = int(self.path.name) if self.path.name.isdigit() else 1
        self.model_name = model_name or (
            self.path.parent.name if self.path.name.isdigit() else self.path.name
        )
        self.loaded = tf.saved_model.load(str(self.path))
        self.signatures = dict(self.loaded.signatures)
        self._lock = threading.Lock()

    def input_specs(self, signature_name):
        if signature_name not in self.signatures:
            raise KeyError(
                f"no signature {signature_name!r}; this model has {sorted(self.signatures)}"
            )
        _, kwargs = self.signatures[signature_name].structured_input_signature
        return kwargs

    def check_model(self, name, version):
        if name != self.model_name:
            raise LookupError(f"no model named {name!r}; this server has {self.model_name!r}")
        if version is not None and int(version) != self.version:
            raise LookupError(
                f"model {name!r} has no version {version}; this server has {self.version}"
            )

    def run(self, signature_name, inputs):
        """inputs {name: np.ndarray} -> {name: np.ndarray}; ValueError for a bad request."""
        specs = self.input_specs(signature_name)
        if set(inputs) != set(specs):
            raise ValueError(
                f"signature {signature_name!r} takes inputs {sorted(specs)}, got {sorted(inputs)}"
            )
        tensors = {}
        for name, spec in specs.items():
            array = inputs[name]
            expected = spec.dtype.as_numpy_dtype
            if spec.dtype == self._tf.string:
                if array.dtype.kind not in "OSU":
                    raise ValueError(f"{name!r} must hold encoded image bytes, got {array.dtype}")
                if array.size == 0:
                    raise ValueError(f"{name!r} holds no images")
            elif array.dtype != expected:
                raise ValueError(f"{name!r} must be {spec.dtype.name}, got {array.dtype}")
            if array.ndim != len(spec.shape):
                raise ValueError(
                    f"{name!r} must have rank {len(spec.shape)} {tuple(spec.shape)}, "
                    f"got shape {array.shape}"
                )
            for axis, (want, got) in enumerate(zip(spec.shape, array.shape, strict=True)):
                if want is not None and want != got:
                    raise ValueError(
                        f"{name!r} must have {want} entries on axis {axis} "
                        f"(shape {tuple(spec.shape)}), got shape {array.shape}"
                    )
            if spec.dtype != self._tf.string and array.size == 0:
                raise ValueError(f"{name!r} is empty (shape {array.shape})")
            tensors[name] = self._tf.constant(array, dtype=spec.dtype)
        try:
            with self._lock:
                outputs = self.signatures[signature_name](**tensors)
        except (self._tf.errors.InvalidArgumentError, self._tf.errors.OutOfRangeError) as error:
            raise ValueError(tf_error_message(error)) from None
        return {name: value.numpy() for name, value in outputs.items()}

    def rest_inputs(self, signature_name, instances):
        """TF Serving's `instances` rows -> {input name: array}, with its b64 convention."""
        specs = self.input_specs(signature_name)
        if not isinstance(instances, list) or not instances:
            raise ValueError("'instances' must be a non-empty list of rows")
        if len(specs) != 1:
            raise ValueError(f"signature {signature_name!r} has several inputs; use named rows")
        ((name, spec),) = specs.items()
        rows = [row[name] if isinstance(row, dict) and name in row else row for row in instances]
        if spec.dtype == self._tf.string:
            decoded = []
            for row in rows:
                if not (isinstance(row, dict) and isinstance(row.get("b64"), str)):
                    raise ValueError(f'{name!r} rows must be {{"b64": "..."}} objects')
                try:
                    decoded.append(base64.b64decode(row["b64"], validate=True))
                except ValueError as error:
                    raise ValueError(f"{name!r}: invalid base64 ({error})") from None
            return {name: np.asarray(decoded, object)}
        try:
            array = np.asarray(rows)
        except ValueError as error:
            raise ValueError(f"{name!r}: rows of different shapes ({error})") from None
        if array.size == 0:
            raise ValueError(f"{name!r} is empty (shape {array.shape})")
        if array.dtype.kind not in "iub" or (
            spec.dtype == self._tf.uint8 and (array.min() < 0 or array.max() > 255)
        ):
            raise ValueError(
                f"{name!r} must be {spec.dtype.name} values, got {array.dtype} "
                f"in [{array.min()}, {array.max()}]"
                if array.size and array.dtype.kind in "iuf"
                else f"{name!r} must be {spec.dtype.name} values, got {array.dtype}"
            )
        return {name: array.astype(spec.dtype.as_numpy_dtype)}


class _RestHandler(BaseHTTPRequestHandler):
    runner: SignatureRunner = None

    def log_message(self, format, *args):  # keep test and CLI output quiet
        pass

    def _reply(self, status, body):
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _parse_path(self):
        """(name, version or None, verb or None) of /v1/models/<name>[/versions/<v>][:verb]."""
        path = self.path.split("?", 1)[0]
        verb = None
        if ":" in path:
            path, verb = path.rsplit(":", 1)
        parts = path.strip("/").split("/")
        if len(parts) not in (3, 5) or parts[:2] != ["v1", "models"]:
            raise LookupError(f"unknown path {self.path}; use /v1/models/<name>[:predict]")
        version = None
        if len(parts) == 5:
            if parts[3] != "versions" or not parts[4].isdigit():
                raise LookupError(f"unknown path {self.path}")
            version = int(parts[4])
        return parts[2], version, verb

    def do_GET(self):
        try:
            name, version, _ = self._parse_path()
            self.runner.check_model(name, version)
        except LookupError as error:
            return self._reply(404, {"error": str(error)})
        status = {"version": str(self.runner.version), "state": "AVAILABLE"}
        status["status"] = {"error_code": "OK", "error_message": ""}
        self._reply(200, {"model_version_status": [status]})

    def do_POST(self):
        try:
            name, version, verb = self._parse_path()
            self.runner.check_model(name, version)
            if verb != "predict":
                raise LookupError(f"unsupported verb {verb!r}; this server answers :predict")
        except LookupError as error:
            return self._reply(404, {"error": str(error)})
        try:
            length = int(self.headers.get("Content-Length", 0))
            try:
                body = json.loads(self.rfile.read(length))
            except (json.JSONDecodeError, UnicodeDecodeError) as error:
                raise ValueError(f"the request body is not JSON ({error})") from None
            if not isinstance(body, dict) or "instances" not in body:
                raise ValueError("the request must be a JSON object with 'instances'")
            signature = body.get("signature_name", DEFAULT_SIGNATURE)
            inputs = self.runner.rest_inputs(signature, body["instances"])
            outputs = self.runner.run(signature, inputs)
        except (KeyError, ValueError) as error:
            message = error.args[0] if isinstance(error, KeyError) else str(error)
            return self._reply(400, {"error": message})
        names = sorted(outputs)
        batch = len(outputs[names[0]])
        predictions = [{n: outputs[n][i].tolist() for n in names} for i in range(batch)]
        self._reply(200, {"predictions": predictions})


class RestServer:
    """TF Serving's v1 REST predict protocol on `host:port` (port 0: any free port)."""

    def __init__(self, runner, host="127.0.0.1", port=0):
        handler = type("Handler", (_RestHandler,), {"runner": runner})
        self.httpd = ThreadingHTTPServer((host, port), handler)
        self.port = self.httpd.server_address[1]
        self.url = f"http://{host}:{self.port}"
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def start(self):
        self._thread.start()
        return self

    def stop(self):
        self.httpd.shutdown()
        self.httpd.server_close()


class GrpcServer:
    """TF Serving's gRPC PredictionService.Predict on `host:port` (port 0: any free port)."""

    def __init__(self, runner, host="127.0.0.1", port=0, workers=4):
        import grpc
        import tensorflow as tf

        predict_pb2, service = tensorflow_serving_protos()

        class Servicer(service.PredictionServiceServicer):
            def Predict(self, request, context):  # noqa: N802 (the generated API's name)
                spec = request.model_spec
                try:
                    runner.check_model(
                        spec.name, spec.version.value if spec.HasField("version") else None
                    )
                except LookupError as error:
                    context.abort(grpc.StatusCode.NOT_FOUND, str(error))
                signature = spec.signature_name or DEFAULT_SIGNATURE
                try:
                    inputs = {k: tf.make_ndarray(v) for k, v in request.inputs.items()}
                    outputs = runner.run(signature, inputs)
                except (KeyError, ValueError, TypeError) as error:
                    message = error.args[0] if isinstance(error, KeyError) else str(error)
                    context.abort(grpc.StatusCode.INVALID_ARGUMENT, message)
                response = predict_pb2.PredictResponse()
                response.model_spec.CopyFrom(spec)
                response.model_spec.version.value = runner.version
                for name, value in outputs.items():
                    response.outputs[name].CopyFrom(tf.make_tensor_proto(value))
                return response

        self.server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=workers), options=GRPC_OPTIONS
        )
        service.add_PredictionServiceServicer_to_server(Servicer(), self.server)
        self.port = self.server.add_insecure_port(f"{host}:{port}")
        self.target = f"{host}:{self.port}"

    def start(self):
        self.server.start()
        return self

    def stop(self):
        self.server.stop(grace=None)


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m ppl_tf.serving",
        description="Serve an exported model over TF Serving's REST and gRPC protocols, for "
        "tests and local trials (TF Serving is the production server).",
    )
    parser.add_argument("model", help="exported model folder (a version folder or its parent)")
    parser.add_argument("--name", help="model name in URLs (default: the folder's name)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--rest-port", type=int, default=8501)
    parser.add_argument("--grpc-port", type=int, default=8500, help="0 disables gRPC")
    args = parser.parse_args(argv)
    runner = SignatureRunner(Path(args.model), args.name)
    rest = RestServer(runner, args.host, args.rest_port).start()
    print(f"REST: {rest.url}/v1/models/{runner.model_name}:predict (version {runner.version})")
    if args.grpc_port:
        grpc_server = GrpcServer(runner, args.host, args.grpc_port).start()
        print(f"gRPC: {grpc_server.target}, model {runner.model_name!r}")
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        rest.stop()


if __name__ == "__main__":
    main()
