"""Append pooling and L2 normalisation to an ONNX graph that returns token embeddings.

Optimum / sentence-transformers ONNX exports (``backend="onnx"``) output
``last_hidden_state`` (batch, seq, hidden) and pool in torch afterwards. Folding the
pooling into the graph lets :class:`embopt.serving.runtime.Embedder` run those files as they
are, with one session call per batch and nothing computed in Python: the same
contract as the graphs our own export writes.
"""

from __future__ import annotations

from embopt.errors import EmboptError

POOLED_OUTPUT = "sentence_embedding"


def _opset(model) -> int:
    for imp in model.opset_import:
        if imp.domain in ("", "ai.onnx"):
            return int(imp.version)
    return 0


def add_pooling(model, mode: str = "mean", normalize: bool = True, token_output: str | None = None):
    """Return ``model`` (an ``onnx.ModelProto``, modified in place) with a pooled output.

    Args:
        model: graph with an ``attention_mask`` input and a (batch, seq, hidden) output.
        mode: ``mean`` (sentence-transformers' masked mean), ``cls`` or ``max``.
        normalize: append an L2 normalisation (the ``Normalize`` module).
        token_output: name of the token-embedding output (default: the first output).

    The new graph has a single output, ``sentence_embedding`` (batch, hidden).
    """
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    graph = model.graph
    if _opset(model) < 13:
        raise EmboptError(f"pooling needs ONNX opset >= 13, graph has {_opset(model)}")
    if "attention_mask" not in {i.name for i in graph.input}:
        raise EmboptError("pooling needs an 'attention_mask' graph input")
    out = next((o for o in graph.output if o.name == (token_output or graph.output[0].name)), None)
    if out is None:
        raise EmboptError(f"graph has no output named '{token_output}'")
    dims = out.type.tensor_type.shape.dim
    hidden = dims[-1].dim_value if len(dims) == 3 and dims[-1].dim_value else "hidden"
    tok = out.name
    p = "embopt_pool_"  # prefix keeps our node and tensor names clear of the exporter's
    nodes, inits = [], []
    if mode == "mean":
        inits += [numpy_helper.from_array(np.array([-1], dtype=np.int64), p + "axis_last"),
                  numpy_helper.from_array(np.array([1], dtype=np.int64), p + "axis_seq"),
                  numpy_helper.from_array(np.array(1e-9, dtype=np.float32), p + "eps")]
        nodes += [
            helper.make_node("Cast", ["attention_mask"], [p + "maskf"], to=TensorProto.FLOAT),
            helper.make_node("Unsqueeze", [p + "maskf", p + "axis_last"], [p + "mask3"]),
            helper.make_node("Mul", [tok, p + "mask3"], [p + "masked"]),
            helper.make_node("ReduceSum", [p + "masked", p + "axis_seq"], [p + "sum"], keepdims=0),
            helper.make_node("ReduceSum", [p + "mask3", p + "axis_seq"], [p + "count"], keepdims=0),
            helper.make_node("Max", [p + "count", p + "eps"], [p + "count_safe"]),
            helper.make_node("Div", [p + "sum", p + "count_safe"], [p + "pooled"]),
        ]
    elif mode == "cls":
        inits.append(numpy_helper.from_array(np.array(0, dtype=np.int64), p + "zero"))
        nodes.append(helper.make_node("Gather", [tok, p + "zero"], [p + "pooled"], axis=1))
    elif mode == "max":
        inits += [numpy_helper.from_array(np.array([-1], dtype=np.int64), p + "axis_last"),
                  numpy_helper.from_array(np.array(1.0, dtype=np.float32), p + "one"),
                  numpy_helper.from_array(np.array(1e9, dtype=np.float32), p + "big")]
        nodes += [
            helper.make_node("Cast", ["attention_mask"], [p + "maskf"], to=TensorProto.FLOAT),
            helper.make_node("Unsqueeze", [p + "maskf", p + "axis_last"], [p + "mask3"]),
            helper.make_node("Sub", [p + "mask3", p + "one"], [p + "neg"]),
            helper.make_node("Mul", [p + "neg", p + "big"], [p + "penalty"]),
            helper.make_node("Add", [tok, p + "penalty"], [p + "shifted"]),
            helper.make_node("ReduceMax", [p + "shifted"], [p + "pooled"], axes=[1], keepdims=0)
            if _opset(model) < 18 else
            helper.make_node("ReduceMax", [p + "shifted", p + "axis_seq"], [p + "pooled"], keepdims=0),
        ]
        if _opset(model) >= 18:
            inits.append(numpy_helper.from_array(np.array([1], dtype=np.int64), p + "axis_seq"))
    else:
        raise EmboptError(f"pooling mode '{mode}' not supported (mean, cls, max)")
    last = p + "pooled"
    if normalize:
        nodes.append(helper.make_node("LpNormalization", [last], [p + "normed"], axis=1, p=2))
        last = p + "normed"
    nodes.append(helper.make_node("Identity", [last], [POOLED_OUTPUT]))
    graph.node.extend(nodes)
    graph.initializer.extend(inits)
    del graph.output[:]
    graph.output.append(helper.make_tensor_value_info(POOLED_OUTPUT, TensorProto.FLOAT, ["batch", hidden]))
    return model
