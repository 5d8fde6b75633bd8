"""Keras twins of the PyTorch models, for the TFLite converter: the same architecture in NHWC,
holding the TRAINED PyTorch weights, so TFLite cells measure the same model as the other backends.
Used only inside ``tflite_convert`` (TF_USE_LEGACY_KERAS=1: ``tf.keras`` is tf_keras 2.x, which
tensorflow-model-optimization's QAT needs); importing this module does not import TensorFlow.

Each Keras layer that mirrors a torch module is named "t_" + <torch module path, '.' -> '_'>
(torch ``features.3.block.1.0`` -> Keras ``t_features_3_block_1_0``); layers without a torch
counterpart get a suffix (``_pad``, ``_add``). ``load_torch_weights`` walks the torch state_dict
by module prefix, finds the Keras layer by that name, converts the layout, and fails loudly on
any torch key not consumed or any Keras layer left without weights.

Layout rules:
  Conv2d weight OIHW            -> Conv2D kernel HWIO          (transpose 2,3,1,0)
  depthwise Conv2d (C,1,kh,kw)  -> DepthwiseConv2D (kh,kw,C,1) (transpose 2,3,0,1)
  Linear (out,in)               -> Dense (in,out); a Dense fed by a Flatten of an (H,W,C) map gets
                                   its input features reordered from torch's (C,H,W) order
  BatchNorm2d weight/bias/running_mean/running_var -> gamma/beta/moving_mean/moving_variance, eps 1e-5
Padding: torch pads symmetrically (k//2). Stride 1 with odd k == 'same'. Stride > 1 -> explicit
ZeroPadding2D(k//2) + 'valid' (Keras 'same' pads (0,1) for stride 2 on even inputs: wrong).
ReLU6 is ReLU(max_value=6): tfmot quantizes it and the converter fuses it into the conv.
"""
from __future__ import annotations

import numpy as np

TWINS = ("mlp", "cnn", "mobilenet", "lstm")  # models with a Keras twin; others are unsupported on tflite


class _KerasLayers:
    """``tf.keras.layers``, imported on first use (this module must import without TensorFlow)."""

    def __getattr__(self, name):
        import tensorflow as tf

        return getattr(tf.keras.layers, name)


L = _KerasLayers()
BN_EPS = 1e-5        # torch BatchNorm2d default
BN_MOMENTUM = 0.9    # torch momentum 0.1 == Keras 0.9 (irrelevant for inference)


def _k(prefix: str) -> str:
    return "t_" + prefix.replace(".", "_")


def _make_divisible(v, divisor=8):
    new = max(divisor, int(v + divisor / 2) // divisor * divisor)
    return new + divisor if new < 0.9 * v else new


def _relu6(name, style):
    """style: 'relu' -> ReLU(max_value=6) (tfmot-friendly, fused into conv by the converter);
    'activation' -> Activation('relu6')."""
    if style == "relu":
        return L.ReLU(max_value=6.0, name=name)
    if style == "activation":
        return L.Activation("relu6", name=name)
    raise ValueError(style)


def _conv(x, prefix, cout, k, stride, depthwise=False):
    """torch Conv2d(cin, cout, k, stride, padding=k//2, bias=False[, groups=cin])."""
    pad = k // 2
    if stride == 1:
        padding = "same"            # symmetric k//2 for odd k, stride 1
    else:
        if pad:
            x = L.ZeroPadding2D(pad, name=_k(prefix) + "_pad")(x)
        padding = "valid"
    if depthwise:
        return L.DepthwiseConv2D(k, stride, padding=padding, use_bias=False, name=_k(prefix))(x)
    return L.Conv2D(cout, k, stride, padding=padding, use_bias=False, name=_k(prefix))(x)


def _bn(x, prefix):
    return L.BatchNormalization(epsilon=BN_EPS, momentum=BN_MOMENTUM, name=_k(prefix))(x)


def _conv_bn_relu6(x, prefix, cin, cout, k, stride, groups, relu6):
    x = _conv(x, prefix + ".0", cout, k, stride, depthwise=(groups != 1))
    if groups != 1 and not (groups == cin == cout):
        raise ValueError("only depthwise grouped convs are supported")
    x = _bn(x, prefix + ".1")
    return _relu6(_k(prefix + ".2"), relu6)(x)


def _lstm_twin(cfg, seq_len: int, num_classes: int, unroll: bool):
    """torch: Embedding(padding_idx=0) -> LSTM (gates i,f,g,o == Keras i,f,c,o) -> last step ->
    Dropout -> Linear. Inputs are left-padded int32 ids; padding steps run through the LSTM in both
    (no masking), as in torch. ``unroll``: a static graph per time step (what tflite_convert uses:
    the fused sequence op needs a fixed batch and its full-integer conversion crashes)."""
    import tensorflow as tf

    inp = tf.keras.Input((seq_len,), dtype=tf.int32, name="input")
    x = L.Embedding(cfg.vocab_size, cfg.embed_dim, name=_k("embedding"))(inp)
    for i in range(cfg.layers):
        x = L.LSTM(cfg.hidden, return_sequences=i < cfg.layers - 1, unroll=unroll, name=_k(f"lstm.l{i}"))(x)
    x = L.Dropout(cfg.dropout, name=_k("dropout"))(x)
    x = L.Dense(num_classes, name=_k("head"))(x)
    return tf.keras.Model(inp, x, name="lstm_twin")


def build_twin(name, cfg, input_shape_chw, num_classes, relu6="relu", unroll=False):
    import tensorflow as tf

    if name == "lstm":
        return _lstm_twin(cfg, input_shape_chw[0], num_classes, unroll)
    c, h, w = input_shape_chw
    inp = tf.keras.Input((h, w, c), name="input")
    x = inp
    if name == "mlp":
        # Sequential(Flatten, [Linear, ReLU, Dropout]*, Linear)
        x = L.Flatten(name=_k("0"))(x)
        i = 1
        for hdim in cfg.hidden:
            x = L.Dense(hdim, name=_k(str(i)))(x)
            x = L.ReLU(name=_k(str(i + 1)))(x)
            x = L.Dropout(cfg.dropout, name=_k(str(i + 2)))(x)
            i += 3
        x = L.Dense(num_classes, name=_k(str(i)))(x)
    elif name == "cnn":
        # Sequential([Conv, BN, ReLU, MaxPool]*, Flatten, Linear, ReLU, Dropout, Linear)
        i = 0
        for out in cfg.channels:
            x = _conv(x, str(i), out, 3, 1)
            x = _bn(x, str(i + 1))
            x = L.ReLU(name=_k(str(i + 2)))(x)
            x = L.MaxPooling2D(2, name=_k(str(i + 3)))(x)   # floor, like torch
            i += 4
        x = L.Flatten(name=_k(str(i)))(x)
        x = L.Dense(cfg.fc, name=_k(str(i + 1)))(x)
        x = L.ReLU(name=_k(str(i + 2)))(x)
        x = L.Dropout(cfg.dropout, name=_k(str(i + 3)))(x)
        x = L.Dense(num_classes, name=_k(str(i + 4)))(x)
    elif name == "mobilenet":
        ch = _make_divisible(cfg.stem_channels * cfg.width_mult)
        x = _conv_bn_relu6(x, "features.0", c, ch, 3, 2, 1, relu6)
        idx = 1
        for t, cc, n, s in cfg.blocks:
            out = _make_divisible(cc * cfg.width_mult)
            for r in range(n):
                stride = s if r == 0 else 1
                hidden = ch * t
                p = f"features.{idx}.block"
                y, j = x, 0
                if t != 1:
                    y = _conv_bn_relu6(y, f"{p}.{j}", ch, hidden, 1, 1, 1, relu6); j += 1
                y = _conv_bn_relu6(y, f"{p}.{j}", hidden, hidden, 3, stride, hidden, relu6); j += 1
                y = _conv(y, f"{p}.{j}", out, 1, 1); j += 1
                y = _bn(y, f"{p}.{j}")
                if stride == 1 and ch == out:
                    y = L.Add(name=_k(f"features.{idx}") + "_add")([x, y])
                x, ch, idx = y, out, idx + 1
        last = _make_divisible(cfg.last_channels * max(1.0, cfg.width_mult))
        x = _conv_bn_relu6(x, f"features.{idx}", ch, last, 1, 1, 1, relu6)
        x = L.GlobalAveragePooling2D(name=_k("pool"))(x)   # == AdaptiveAvgPool2d(1) + Flatten
        x = L.Dropout(cfg.dropout, name=_k("dropout"))(x)
        x = L.Dense(num_classes, name=_k("classifier"))(x)
    else:
        raise ValueError(f"unknown model {name!r}")
    return tf.keras.Model(inp, x, name=f"{name}_twin")


def _inbound_layer(layer):
    node = layer._inbound_nodes[0]
    ib = node.inbound_layers
    return ib[0] if isinstance(ib, (list, tuple)) else ib


def load_torch_weights(kmodel, name, cfg, state_dict_numpy):
    """Copy a torch state_dict ({key: np.ndarray}) into the twin built by build_twin(name, cfg, ...).
    Raises on any torch key not consumed or any Keras weight not loaded."""
    sd = {k: np.asarray(v) for k, v in state_dict_numpy.items() if not k.endswith("num_batches_tracked")}
    prefixes = {}
    for key in sd:
        prefix, _, leaf = key.rpartition(".")
        if leaf.startswith(("weight_ih_l", "weight_hh_l", "bias_ih_l", "bias_hh_l")):  # LSTM layer k
            kind, _, layer_idx = leaf.rpartition("_l")
            prefix, leaf = f"{prefix}.l{layer_idx}", kind
        prefixes.setdefault(prefix, {})[leaf] = sd[key]
    loaded = set()
    for prefix, p in prefixes.items():
        layer = kmodel.get_layer(_k(prefix))     # KeyError/ValueError if the twin lacks it
        if isinstance(layer, L.LSTM):
            # torch: W_ih (4H, in), W_hh (4H, H), b_ih + b_hh; Keras: kernel (in, 4H), recurrent (H, 4H), bias
            ws = [p["weight_ih"].T, p["weight_hh"].T, p["bias_ih"] + p["bias_hh"]]
        elif isinstance(layer, L.Embedding):
            ws = [p["weight"]]
        elif isinstance(layer, L.DepthwiseConv2D):
            wt = p["weight"]
            assert wt.shape[1] == 1, (prefix, wt.shape)
            ws = [wt.transpose(2, 3, 0, 1)]
        elif isinstance(layer, L.Conv2D):
            ws = [p["weight"].transpose(2, 3, 1, 0)]
            if "bias" in p:
                ws.append(p["bias"])
        elif isinstance(layer, L.BatchNormalization):
            assert abs(layer.epsilon - BN_EPS) < 1e-12
            ws = [p["weight"], p["bias"], p["running_mean"], p["running_var"]]
        elif isinstance(layer, L.Dense):
            wt = p["weight"]                                       # (out, in)
            src = _inbound_layer(layer)
            if isinstance(src, L.Flatten):
                hh, ww, cc = src.input_shape[1:]
                wt = wt.reshape(wt.shape[0], cc, hh, ww).transpose(0, 2, 3, 1).reshape(wt.shape[0], -1)
            ws = [wt.T, p["bias"]]
        else:
            raise TypeError(f"{prefix}: unexpected Keras layer {type(layer).__name__}")
        expect = [tuple(v.shape) for v in layer.get_weights()]
        got = [tuple(v.shape) for v in ws]
        if expect != got:
            raise ValueError(f"{prefix}: shape mismatch keras {expect} vs torch-converted {got}")
        layer.set_weights([w.astype(np.float32) for w in ws])
        loaded.add(layer.name)
    missing = [l.name for l in kmodel.layers if l.weights and l.name not in loaded]
    if missing:
        raise ValueError(f"Keras layers left without torch weights: {missing}")
    return kmodel
