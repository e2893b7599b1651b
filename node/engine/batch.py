"""A reusable `llama_batch` backed by numpy arrays: filling it costs no per-token allocation."""

from __future__ import annotations

import ctypes
from collections.abc import Sequence

import llama_cpp
import numpy as np


class TokenBatch:
    """Tokens for one `llama_decode`, each with its position, sequence id and output flag."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.token = np.zeros(capacity, dtype=np.int32)
        self.pos = np.zeros(capacity, dtype=np.int32)
        self.seq = np.zeros(capacity, dtype=np.int32)  # one sequence id per token
        self.output = np.zeros(capacity, dtype=np.int8)
        self._n_seq_id = np.ones(capacity, dtype=np.int32)
        seq_ptr = ctypes.POINTER(llama_cpp.llama_seq_id)
        base = self.seq.ctypes.data
        self._seq_ptrs = (seq_ptr * capacity)(
            *(ctypes.cast(base + 4 * i, seq_ptr) for i in range(capacity))
        )
        self.struct = llama_cpp.llama_batch()
        self.struct.token = self.token.ctypes.data_as(ctypes.POINTER(llama_cpp.llama_token))
        self.struct.embd = None
        self.struct.pos = self.pos.ctypes.data_as(ctypes.POINTER(llama_cpp.llama_pos))
        self.struct.n_seq_id = self._n_seq_id.ctypes.data_as(ctypes.POINTER(ctypes.c_int32))
        self.struct.seq_id = ctypes.cast(self._seq_ptrs, ctypes.POINTER(seq_ptr))
        self.struct.logits = self.output.ctypes.data_as(ctypes.POINTER(ctypes.c_int8))
        self.n = 0

    def clear(self) -> None:
        self.n = 0

    def add(self, token: int, pos: int, seq_id: int, output: bool) -> int:
        """Append one token; returns its index (the index to sample its logits at)."""
        i = self.n
        self.token[i] = token
        self.pos[i] = pos
        self.seq[i] = seq_id
        self.output[i] = output
        self.n = i + 1
        return i

    def add_run(self, tokens: Sequence[int], start_pos: int, seq_id: int, output_last: bool) -> int:
        """Append consecutive tokens of one sequence; returns the index of the last one."""
        i, k = self.n, len(tokens)
        end = i + k
        self.token[i:end] = tokens
        self.pos[i:end] = np.arange(start_pos, start_pos + k, dtype=np.int32)
        self.seq[i:end] = seq_id
        self.output[i:end] = 0
        if output_last:
            self.output[end - 1] = 1
        self.n = end
        return end - 1

    def decode(self, ctx: llama_cpp.llama_context_p) -> int:
        """`llama_decode` over the tokens added since `clear` (the GIL is released meanwhile)."""
        self.struct.n_tokens = self.n
        return llama_cpp.llama_decode(ctx, self.struct)
