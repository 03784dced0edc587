"""REST and gRPC clients against local servers speaking TF Serving's protocols."""

import io
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from ppl_tf.inference import ExportedModel
from ppl_tf.serving.client import GrpcClient, RestClient, ServingError
from ppl_tf.serving.local_server import GrpcServer, RestServer, SignatureRunner


@pytest.fixture(scope="module")
def servers(tiny_export):
    _, folder = tiny_export
    runner = SignatureRunner(folder.parent)
    rest = RestServer(runner).start()
    grpc_server = GrpcServer(runner).start()
    grpc_client = GrpcClient(grpc_server.target, "tiny")
    yield {
        "rest": RestClient(rest.url, "tiny"),
        "grpc": grpc_client,
        "local": ExportedModel(folder, backend="tensorflow"),
    }
    grpc_client.close()
    rest.stop()
    grpc_server.stop()


@pytest.fixture(scope="module")
def real_image(tmp_path_factory):
    """A digit scene: a real (non-random) image, as uint8 pixels and PNG bytes."""
    from ppl_tf.data.digit_scenes import DigitSceneConfig, materialize

    config = DigitSceneConfig(num_train=2, num_val=1, size=48, seed=5)
    root = materialize(tmp_path_factory.mktemp("scenes"), config, verbose=False)
    path = root / "images" / "val_00000.png"
    return np.asarray(Image.open(path).convert("RGB")), path.read_bytes()


@pytest.mark.parametrize("kind", ["rest", "grpc"])
def test_clients_round_trip_a_real_image(servers, real_image, kind):
    pixels, png = real_image
    expected_ids, expected_probs = servers["local"].predict(pixels[None])
    class_ids, probabilities = servers[kind].predict(pixels[None])
    np.testing.assert_array_equal(class_ids, expected_ids)
    np.testing.assert_allclose(probabilities, expected_probs, atol=1e-6)
    class_ids, _ = servers[kind].predict_bytes([png, png])
    np.testing.assert_array_equal(class_ids, np.concatenate([expected_ids, expected_ids]))


def encoded(image, fmt="JPEG"):
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format=fmt)
    return buffer.getvalue()


BAD_REQUESTS = {
    "dtype": (lambda c: c.predict(np.zeros((1, 8, 8, 3), np.float32) + 0.5), "uint8"),
    "channels": (lambda c: c.predict(np.zeros((1, 8, 8, 4), np.uint8)), "axis 3"),
    "rank": (lambda c: c.predict(np.zeros((8, 8, 3), np.uint8)), "rank 4"),
    "empty": (lambda c: c.predict(np.zeros((1, 0, 8, 3), np.uint8)), "empty"),
    "corrupt_bytes": (lambda c: c.predict_bytes([b"\x89PNG\r\n broken"]), "image"),
    "mixed_sizes": (
        lambda c: c.predict_bytes(
            [encoded(np.zeros((8, 8, 3), np.uint8)), encoded(np.zeros((9, 8, 3), np.uint8))]
        ),
        "same size",
    ),
    "unknown_signature": (
        lambda c: c.predict(np.zeros((1, 8, 8, 3), np.uint8), signature_name="nope"),
        "no signature 'nope'",
    ),
}


@pytest.mark.parametrize("kind", ["rest", "grpc"])
@pytest.mark.parametrize("case", sorted(BAD_REQUESTS))
def test_bad_request_gets_an_error_and_the_server_keeps_serving(servers, real_image, kind, case):
    request, message = BAD_REQUESTS[case]
    with pytest.raises(ServingError, match=message):
        request(servers[kind])
    pixels, _ = real_image
    class_ids, _ = servers[kind].predict(pixels[None])
    assert class_ids.shape == (1, *pixels.shape[:2])


def test_unknown_model_or_version_is_not_found(servers):
    rest = servers["rest"]
    with pytest.raises(ServingError, match="HTTP 404.*no model named 'other'"):
        RestClient(rest.base_url, "other").predict(np.zeros((1, 4, 4, 3), np.uint8))
    with pytest.raises(ServingError, match="HTTP 404.*no version 7"):
        RestClient(rest.base_url, "tiny", version=7).predict(np.zeros((1, 4, 4, 3), np.uint8))
    grpc_client = servers["grpc"]
    with pytest.raises(ServingError, match="NOT_FOUND"):
        GrpcClient(grpc_client.target, "other").predict(np.zeros((1, 4, 4, 3), np.uint8))


def test_an_application_imports_the_clients_without_the_servers_or_tensorflow():
    code = (
        "import sys\n"
        "from ppl_tf.serving import GrpcClient, RestClient, ServingError\n"
        "loaded = [m for m in ('tensorflow', 'keras', 'ppl_tf.serving.local_server')"
        " if m in sys.modules]\n"
        "print('LOADED', loaded)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "LOADED []" in result.stdout, result.stdout
