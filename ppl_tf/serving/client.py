"""Clients for TF Serving, what an application imports to use a served export.

- `RestClient("http://host:8501", "digits")`: TF Serving's v1 REST API,
  `POST /v1/models/<name>[/versions/<v>]:predict` with `{"signature_name", "instances"}` rows;
  encoded images go as `{"b64": ...}` to the `predict_image_bytes` signature.
- `GrpcClient("host:8500", "digits")`: `tensorflow_serving.apis` PredictionService.Predict.

Both return `(class_ids (B, H, W), probabilities (B, H, W, K))` and raise `ServingError` with
the server's message for a request it refused. This module needs NumPy only (and for gRPC,
grpcio, tensorflow-serving-api and TensorFlow's tensor protos); it does not load the package's
model code or the local servers of `ppl_tf.serving.local_server`.

`tensorflow-serving-api` is needed for gRPC only; install it with
`pip install --no-deps tensorflow-serving-api` (its metadata asks for the full `tensorflow`).
"""

import base64
import json
import urllib.error
import urllib.request

import numpy as np

from ppl_tf.inference import (
    BYTES_INPUT_NAME,
    BYTES_SIGNATURE,
    CLASS_IDS,
    DEFAULT_SIGNATURE,
    INPUT_NAME,
    PROBABILITIES,
)

# gRPC refuses messages above 4 MB by default: the probabilities of one 512x512 image over 21
# classes take 22 MB. The local gRPC server uses the same limits.
GRPC_OPTIONS = [
    ("grpc.max_send_message_length", 256 << 20),
    ("grpc.max_receive_message_length", 256 << 20),
]


class ServingError(RuntimeError):
    """A request the server refused, with the server's message."""


def tensorflow_serving_protos():
    """(predict_pb2, prediction_service_pb2_grpc) of tensorflow-serving-api."""
    try:
        from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc
    except ImportError as error:
        raise ImportError(
            "gRPC needs tensorflow-serving-api: pip install --no-deps tensorflow-serving-api"
        ) from error
    return predict_pb2, prediction_service_pb2_grpc


class RestClient:
    """TF Serving's v1 REST predict API."""

    def __init__(self, base_url, model_name, version=None, timeout=60.0):
        self.base_url = base_url.rstrip("/")
        self.model_name = model_name
        self.version = version
        self.timeout = timeout

    @property
    def url(self):
        version = f"/versions/{self.version}" if self.version is not None else ""
        return f"{self.base_url}/v1/models/{self.model_name}{version}:predict"

    def _post(self, body):
        request = urllib.request.Request(
            self.url, json.dumps(body).encode(), {"Content-Type": "application/json"}
        )
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as error:
            text = error.read().decode(errors="replace")
            try:
                message = json.loads(text).get("error", text)
            except json.JSONDecodeError:
                message = text
            raise ServingError(f"HTTP {error.code} from {self.url}: {message}") from None

    @staticmethod
    def _unpack(predictions):
        if predictions and isinstance(predictions[0], dict):
            class_ids = np.asarray([p[CLASS_IDS] for p in predictions], np.int32)
            probabilities = np.asarray([p[PROBABILITIES] for p in predictions], np.float32)
            return class_ids, probabilities
        raise ServingError(f"unexpected predictions format: {str(predictions)[:200]}")

    def predict(self, images, signature_name=DEFAULT_SIGNATURE):
        """uint8 (B, H, W, 3) -> (class_ids (B, H, W), probabilities (B, H, W, K))."""
        images = np.asarray(images)
        body = {"signature_name": signature_name, "instances": images.tolist()}
        return self._unpack(self._post(body)["predictions"])

    def predict_bytes(self, encoded_images, signature_name=BYTES_SIGNATURE):
        """Encoded JPEG/PNG images (bytes) of one size -> (class_ids, probabilities)."""
        instances = [{"b64": base64.b64encode(data).decode("ascii")} for data in encoded_images]
        body = {"signature_name": signature_name, "instances": instances}
        return self._unpack(self._post(body)["predictions"])


class GrpcClient:
    """TF Serving's gRPC PredictionService."""

    def __init__(self, target, model_name, version=None, timeout=60.0):
        import grpc

        self._grpc = grpc
        self._predict_pb2, service = tensorflow_serving_protos()
        self.target = target
        self.channel = grpc.insecure_channel(target, options=GRPC_OPTIONS)
        self.stub = service.PredictionServiceStub(self.channel)
        self.model_name = model_name
        self.version = version
        self.timeout = timeout

    def _predict(self, signature_name, input_name, array):
        import tensorflow as tf

        request = self._predict_pb2.PredictRequest()
        request.model_spec.name = self.model_name
        request.model_spec.signature_name = signature_name
        if self.version is not None:
            request.model_spec.version.value = int(self.version)
        request.inputs[input_name].CopyFrom(tf.make_tensor_proto(array))
        try:
            response = self.stub.Predict(request, timeout=self.timeout)
        except self._grpc.RpcError as error:
            raise ServingError(f"{error.code().name}: {error.details()}") from None
        return (
            tf.make_ndarray(response.outputs[CLASS_IDS]),
            tf.make_ndarray(response.outputs[PROBABILITIES]),
        )

    def predict(self, images, signature_name=DEFAULT_SIGNATURE):
        """uint8 (B, H, W, 3) -> (class_ids (B, H, W), probabilities (B, H, W, K))."""
        return self._predict(signature_name, INPUT_NAME, np.asarray(images))

    def predict_bytes(self, encoded_images, signature_name=BYTES_SIGNATURE):
        """Encoded JPEG/PNG images (bytes) of one size -> (class_ids, probabilities)."""
        return self._predict(signature_name, BYTES_INPUT_NAME, np.asarray(encoded_images, object))

    def close(self):
        self.channel.close()
