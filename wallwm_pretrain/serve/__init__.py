"""Serving a trained policy to robots over websockets (``python -m wallwm_pretrain.serve --help``).

The protocol is openpi's: binary msgpack frames with numpy arrays, the server's metadata first,
then one observation dict in and one action dict out per request. Modules:

- :mod:`wallwm_pretrain.wire` (beside this package, shared with the client): the msgpack + numpy
  codec (numpy and msgpack only);
- :mod:`.spec`: what a request must hold, with errors that name the key, and the image resize;
- :mod:`.engine`: the evaluation's checkpoint policy answering batches, and the metadata;
- :mod:`.batcher`: dynamic batching of concurrent clients with a bounded queue;
- :mod:`.server`: the websocket server (health check, API key, error replies).

The client is :mod:`wallwm_pretrain.client`; it and the wire format import neither torch nor
this package (an import contract in ``.importlinter``).
"""
