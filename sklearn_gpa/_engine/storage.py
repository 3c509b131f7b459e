"""How a learned flow's critic states are kept: the sequence of weights replay needs.

A flow stores the critic's flat parameter vector at every stored step and stage, a
sequence ``(n_stored, n_stages, n_params)``.  The critic is warm-started, so consecutive
states differ by a few Adam steps; three encodings of the sequence:

* ``"float32"``: as trained, 4 bytes a value;
* ``"float16"``: each value rounded to half precision, 2 bytes a value (relative error up
  to 2^-11);
* ``"delta16"`` and ``"delta8"``: the first state in float32, then each state as its
  difference from the previous *decoded* state: in half precision (``"delta16"``), or in
  blocks of ``BLOCK`` values that share one float32 scale (the block's largest difference
  / 127) as 8-bit integers (``"delta8"``); the codes are zlib-compressed, their bytes
  grouped by significance (a flow that stopped, or a weight that did not move, costs
  almost nothing).  Because each difference is taken from the decoded previous state, the
  errors do not add up along the sequence: every decoded value is within the rounding of
  one step's change of the trained one (half a quantisation step, a 254th of its block's
  largest change, for ``"delta8"``).

A sequence with a non-finite value (a flow that failed) or values beyond half precision's
range is kept in float32 whatever the encoding asked for.

The encoded sequence is what an estimator pickles; ``decode`` gives the float32 array that
replay uses, the same before and after pickling.  A continued (warm-started) flow appends
its own encoded segment, so earlier steps are never encoded twice.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field

import numpy as np

__all__ = ["BLOCK", "STATE_ENCODINGS", "StoredStates"]

STATE_ENCODINGS = ("float32", "float16", "delta16", "delta8")
# Values per quantisation block of "delta8" (one float32 scale each: 3 % overhead).
BLOCK = 128


def _quantise8(change):
    """8-bit codes and per-block scales of a change (P,); their float32 value."""
    n_values = len(change)
    n_blocks = -(-n_values // BLOCK)
    blocks = np.zeros(n_blocks * BLOCK, dtype=np.float32)
    blocks[:n_values] = change
    blocks = blocks.reshape(n_blocks, BLOCK)
    scale = np.abs(blocks).max(1) / np.float32(127.0)
    safe = np.where(scale > 0, scale, np.float32(1.0))
    code = np.clip(np.rint(blocks / safe[:, None]), -127, 127).astype(np.int8)
    return (code.ravel(), scale), _dequantise8(code.ravel(), scale, n_values)


def _dequantise8(code, scale, n_values):
    change = code.reshape(len(scale), BLOCK).astype(np.float32) * scale[:, None]
    return change.ravel()[:n_values]


def _shuffle(codes):
    """Bytes grouped by significance (all first bytes, then all second...): zlib then finds
    the runs of equal high bytes of small numbers."""
    return codes.view(np.uint8).reshape(-1, codes.itemsize).T.tobytes()


def _unshuffle(data, dtype, shape):
    size = np.dtype(dtype).itemsize
    planes = np.frombuffer(data, dtype=np.uint8).reshape(size, -1)
    return np.ascontiguousarray(planes.T).view(dtype).reshape(shape)


def _encode_delta(states, encoding):
    """(first state, zlib of the codes, scales) of a float32 sequence (T, P).

    Each step's change is taken from the previous *decoded* state, with the same float32
    operations as ``_decode_delta``, so errors do not add up.
    """
    decoded, codes, scales = states[0].copy(), [], []
    for t in range(1, len(states)):
        change = states[t] - decoded
        if encoding == "delta8":
            (code, scale), change = _quantise8(change)
            scales.append(scale)
        else:
            code = change.astype(np.float16)
            change = code.astype(np.float32)
        codes.append(code)
        decoded = decoded + change
    dtype = np.int8 if encoding == "delta8" else np.float16
    codes = np.concatenate(codes) if codes else np.zeros(0, dtype=dtype)
    scales = np.array(scales, dtype=np.float32) if scales else np.zeros((0, 0), np.float32)
    return states[0].copy(), zlib.compress(_shuffle(codes.astype(dtype)), 6), scales


def _decode_delta(first, packed, scales, n_rows, encoding):
    n_values = first.shape[0]
    dtype = np.int8 if encoding == "delta8" else np.float16
    codes = _unshuffle(zlib.decompress(packed), dtype, (-1,))
    codes = codes.reshape(n_rows - 1, len(codes) // max(n_rows - 1, 1))
    out = np.empty((n_rows, n_values), dtype=np.float32)
    out[0] = first
    for t in range(1, n_rows):
        if encoding == "delta8":
            change = _dequantise8(codes[t - 1], scales[t - 1], n_values)
        else:
            change = codes[t - 1].astype(np.float32)
        out[t] = out[t - 1] + change
    return out


def _fits_half_precision(states) -> bool:
    """Whether the lossy encodings can keep ``states``: every value finite, and every value
    and change within half precision's range.  Otherwise (a flow that turned non-finite,
    an unconstrained critic's huge weights) the segment is kept in float32: a non-finite
    value would spread to the other values of its block, or to every later step."""
    if not np.all(np.isfinite(states)):
        return False
    limit = np.finfo(np.float16).max / 2
    rows = states.reshape(-1, states.shape[-1]) if states.size else states
    return bool(np.abs(states).max(initial=0.0) < limit) and (
        len(rows) < 2 or bool(np.abs(np.diff(rows, axis=0)).max(initial=0.0) < limit)
    )


@dataclass
class _Segment:
    """One encoded run of states, shaped (n_stored, n_stages, n_params) when decoded.

    ``flows`` (increasing indices) names the critics whose parameters it holds when a run
    had left the others out of its batch; None: all of them.
    """

    encoding: str
    shape: tuple
    data: tuple
    flows: np.ndarray | None = None

    @classmethod
    def encode(cls, states, encoding, flows=None):
        states = np.ascontiguousarray(states, dtype=np.float32)
        shape = states.shape
        if encoding != "float32" and not _fits_half_precision(states):
            encoding = "float32"
        if encoding == "float32":
            data = (states,)
        elif encoding == "float16":
            data = (states.astype(np.float16),)
        elif encoding in ("delta8", "delta16"):
            rows = states.reshape(shape[0] * shape[1], shape[2])
            data = _encode_delta(rows, encoding) if len(rows) else ()
        else:
            raise ValueError(f"encoding must be one of {STATE_ENCODINGS}, got {encoding!r}.")
        return cls(encoding, shape, data, None if flows is None else np.asarray(flows))

    def decode(self):
        if self.encoding in ("float32", "float16"):
            return self.data[0].astype(np.float32)
        if not self.data:
            return np.zeros(self.shape, dtype=np.float32)
        rows = _decode_delta(*self.data, self.shape[0] * self.shape[1], self.encoding)
        return rows.reshape(self.shape)

    @property
    def nbytes(self):
        return sum(len(d) if isinstance(d, bytes) else d.nbytes for d in self.data)


@dataclass
class StoredStates:
    """A flow's critic states, encoded; ``decode()`` is the float32 array replay uses.

    Built with :meth:`encode`; :meth:`append` adds a continuation's states (their own
    segment); ``nbytes`` is the encoded size.  A run that left stopped flows out of its
    batch has a segment per part of the run, each of the flows it trained: ``pieces``
    decodes them one by one, ``decode`` only where every segment holds every flow.  The
    decoded arrays are cached in memory and never pickled.
    """

    segments: list
    _decoded: np.ndarray | None = field(default=None, repr=False, compare=False)
    _pieces: list | None = field(default=None, repr=False, compare=False)

    @classmethod
    def encode(cls, states, encoding="float32", later=()):
        """Encode ``states`` (n_stored, n_stages, n_params) as ``encoding``, followed by
        the ``(flows, states)`` of ``later`` (``FlowResult.later_states``)."""
        segments = [_Segment.encode(states, encoding)]
        segments += [_Segment.encode(part, encoding, flows) for flows, part in later]
        return cls(segments)

    @property
    def every_flow(self) -> bool:
        """Whether every segment holds the parameters of every flow."""
        return all(s.flows is None for s in self.segments)

    def pieces(self) -> list:
        """``(first, flows, states)`` per non-empty segment: its first stored index, its
        flows (None: all) and its decoded states (n, n_stages, n_params of its flows)."""
        if self.every_flow:
            return [(0, None, self.decode())] if self.shape[0] else []
        if self._pieces is None:
            self._pieces, first = [], 0
            for segment in self.segments:
                if segment.shape[0]:
                    self._pieces.append((first, segment.flows, segment.decode()))
                first += segment.shape[0]
        return self._pieces

    @property
    def encoding(self) -> str:
        return self.segments[-1].encoding

    @property
    def shape(self) -> tuple:
        first = self.segments[0].shape
        return (sum(s.shape[0] for s in self.segments), *first[1:])

    @property
    def nbytes(self) -> int:
        return sum(s.nbytes for s in self.segments)

    def decode(self) -> np.ndarray:
        if not self.every_flow:
            raise ValueError(
                "These states hold some flows only from some step on: decode them with "
                "pieces(), or widen them with LearnedFlow.states."
            )
        if self._decoded is None:
            parts = [s.decode() for s in self.segments]
            self._decoded = parts[0] if len(parts) == 1 else np.concatenate(parts)
        return self._decoded

    def append(self, later: StoredStates) -> StoredStates:
        """These states followed by ``later``'s (a continued run)."""
        return StoredStates(self.segments + later.segments)

    def __getstate__(self):
        return {"segments": self.segments}

    def __setstate__(self, state):
        self.segments, self._decoded, self._pieces = state["segments"], None, None
