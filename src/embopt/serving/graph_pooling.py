"""Append pooling and L2 normalisation to an ONNX graph that returns token embeddings.

Optimum / sentence-transformers ONNX exports (``backend="onnx"``) output ``last_hidden_state``
(batch, seq, hidden) and pool in torch afterwards. Pooling folded into the graph lets
:class:`embopt.serving.runtime.Embedder` run those files as they are, one session call per batch
and nothing computed in Python: the contract of the graphs our own export writes.
"""

from __future__ import annotations

from embopt.errors import EmboptError

POOLED_OUTPUT = "sentence_embedding"


def add_pooling(model, mode: str = "mean", normalize: bool = True):
    """Return ``model`` (an ``onnx.ModelProto``, modified in place) with one output, ``sentence_embedding``.

    ``model`` has an ``attention_mask`` input and a (batch, seq, hidden) first output. ``sentence_embedding``
    is (batch, hidden): ``mode`` ``mean`` (sentence-transformers' masked mean), ``cls`` or ``max`` pooling,
    then, with ``normalize``, an L2 normalisation (the ``Normalize`` module).
    """
    import numpy as np
    from onnx import TensorProto, helper, numpy_helper

    graph = model.graph
    opset = next((int(i.version) for i in model.opset_import if i.domain in ("", "ai.onnx")), 0)
    if opset < 13:
        raise EmboptError(f"pooling needs ONNX opset >= 13, graph has {opset}")
    if "attention_mask" not in {i.name for i in graph.input}:
        raise EmboptError("pooling needs an 'attention_mask' graph input")
    dims = graph.output[0].type.tensor_type.shape.dim
    hidden = dims[-1].dim_value if len(dims) == 3 and dims[-1].dim_value else "hidden"
    tok, p = graph.output[0].name, "embopt_pool_"  # the prefix keeps our names clear of the exporter's

    def init(name: str, value, dtype=np.int64):
        return numpy_helper.from_array(np.array(value, dtype=dtype), p + name)

    def node(op: str, inputs: list[str], output: str, **attrs):
        names = [i if i in (tok, "attention_mask") else p + i for i in inputs]
        return helper.make_node(op, names, [p + output], **attrs)

    mask3 = [node("Cast", ["attention_mask"], "maskf", to=TensorProto.FLOAT),
             node("Unsqueeze", ["maskf", "axis_last"], "mask3")]
    if mode == "mean":
        inits = [init("axis_last", [-1]), init("axis_seq", [1]), init("eps", 1e-9, np.float32)]
        nodes = [*mask3, node("Mul", [tok, "mask3"], "masked"),
                 node("ReduceSum", ["masked", "axis_seq"], "sum", keepdims=0),
                 node("ReduceSum", ["mask3", "axis_seq"], "count", keepdims=0),
                 node("Max", ["count", "eps"], "count_safe"), node("Div", ["sum", "count_safe"], "pooled")]
    elif mode == "cls":
        inits, nodes = [init("zero", 0)], [node("Gather", [tok, "zero"], "pooled", axis=1)]
    elif mode == "max":
        inits = [init("axis_last", [-1]), init("one", 1.0, np.float32), init("big", 1e9, np.float32)]
        nodes = [*mask3, node("Sub", ["mask3", "one"], "neg"), node("Mul", ["neg", "big"], "penalty"),
                 node("Add", [tok, "penalty"], "shifted"),
                 node("ReduceMax", ["shifted"], "pooled", axes=[1], keepdims=0) if opset < 18 else
                 node("ReduceMax", ["shifted", "axis_seq"], "pooled", keepdims=0)]
        if opset >= 18:
            inits.append(init("axis_seq", [1]))
    else:
        raise EmboptError(f"pooling mode '{mode}' not supported (mean, cls, max)")
    if normalize:
        nodes.append(node("LpNormalization", ["pooled"], "normed", axis=1, p=2))
    nodes.append(helper.make_node("Identity", [p + ("normed" if normalize else "pooled")], [POOLED_OUTPUT]))
    graph.node.extend(nodes)
    graph.initializer.extend(inits)
    del graph.output[:]
    graph.output.append(helper.make_tensor_value_info(POOLED_OUTPUT, TensorProto.FLOAT, ["batch", hidden]))
    return model
