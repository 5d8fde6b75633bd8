"""backend=tflite: TFLite (LiteRT) through ai_edge_litert's interpreter, XNNPACK. One package holds all
of it: ``config`` (the schema of conf/backend/tflite.yaml), ``build`` (each scheme's build: the sweep's
side), the converters, which run TensorFlow in a process of their own (``convert_server`` starts it;
``tflite_convert`` and ``keras_twins`` for the built-in models' Keras twins, ``litert_convert`` for
litert-torch and ai-edge-quantizer, ``keras_convert`` and ``keras_qat`` for a user's Keras model),
``runner`` (what the benchmark worker runs), ``profile`` (the delegated-node summary) and ``peak``.

This module registers the backend by reference and imports nothing else: the benchmark worker asks
the registry for the Runner only (BACKENDS.runner), and loads nothing but ai_edge_litert."""
from bsb_hydra.backends import BACKENDS

BACKENDS.register_lazy("tflite", "bsb_hydra.backends.tflite.build:TfliteBackend",
                       schema="bsb_hydra.backends.tflite.config:TfliteBackendConfig",
                       runner="bsb_hydra.backends.tflite.runner:TfliteRunner")
