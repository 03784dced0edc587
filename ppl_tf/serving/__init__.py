"""Serving an export: clients for TF Serving and a local stand-in for it.

- `ppl_tf.serving.client`: `RestClient`, `GrpcClient`, `ServingError`, what an application
  imports (also importable from here). It does not load the servers.
- `ppl_tf.serving.local_server`: `RestServer`, `GrpcServer` and `SignatureRunner`, which speak
  TF Serving's protocols over an export, for tests and local trials; not a production server.
  `python -m ppl_tf.serving exported/digits` starts both.
"""

from ppl_tf.serving.client import GrpcClient, RestClient, ServingError

__all__ = ["GrpcClient", "RestClient", "ServingError"]
