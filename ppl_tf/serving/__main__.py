"""`python -m ppl_tf.serving MODEL_DIR`: the local REST and gRPC servers (see local_server)."""

from ppl_tf.serving.local_server import main

main()
