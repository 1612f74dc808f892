"""Feasibility probe (not the model): would `torch.compile` make a greedy decoding step cheaper on a CPU?

Greedy decoding is the one speed target of issue 5 not met (AttnMT ÷ Marian ≈ 1.1, target 1.2; RESULTS.md):
a step of the preset's small model is bound by the ~385 torch operations it dispatches, not by arithmetic.
Compiling the step could fuse them, but only with static shapes. This script writes one greedy decoder step at
the preset's size (4 layers, d_model 128, 4 heads, FFN 256, 8k vocabulary, batch 32, 20 source positions) with
a static-shape self-attention cache (a full-length buffer per layer and a mask of the filled positions), and
times it eager and compiled (inductor), 63 steps per repetition, in one process:

    python benchmarks/probe_compiled_decoding_step.py [--freeze] [--no_cache_write]

`--no_cache_write` leaves out the in-place writes of the new key and value into the cache buffers (the
numbers are then wrong, the timing tells what those writes cost the compiled graph). Results in RESULTS.md.
"""

import argparse
import math
import time

import torch
from torch import nn
from torch.nn import functional as F

B, S, L, D, H, FFN, V, LAYERS = 32, 20, 64, 128, 4, 256, 8000, 4
HEAD_DIM = D // H


class GreedyStep(nn.Module):
    """A pre-norm decoder step: self-attention over a static cache, cross-attention, feed-forward, LM head, argmax."""

    def __init__(self, write_cache: bool):
        super().__init__()
        linear = lambda i, o: nn.ModuleList(nn.Linear(i, o) for _ in range(LAYERS))  # noqa: E731
        self.q, self.kv, self.o, self.cross_q, self.cross_o = (linear(D, D), linear(D, 2 * D), linear(D, D),
                                                               linear(D, D), linear(D, D))
        self.ffn_in, self.ffn_out = linear(D, FFN), linear(FFN, D)
        self.norms = nn.ModuleList(nn.LayerNorm(D) for _ in range(3 * LAYERS + 1))
        self.head = nn.Linear(D, V, bias=False)
        self.write_cache = write_cache

    def forward(self, x, position, self_k, self_v, cross_k, cross_v, cross_mask):
        filled = (torch.arange(L) <= position).view(1, 1, 1, L)
        for i in range(LAYERS):
            h = self.norms[3 * i](x)
            q = self.q[i](h).view(B, H, 1, HEAD_DIM)
            k, v = self.kv[i](h).view(B, 2, H, 1, HEAD_DIM).unbind(1)
            if self.write_cache:
                self_k[i].index_copy_(2, position.view(1), k)
                self_v[i].index_copy_(2, position.view(1), v)
            scores = (q @ self_k[i].transpose(-1, -2)) / math.sqrt(HEAD_DIM)
            x = x + self.o[i]((scores.masked_fill(~filled, float("-inf")).softmax(-1) @ self_v[i]).reshape(B, D))
            q = self.cross_q[i](self.norms[3 * i + 1](x)).view(B, H, 1, HEAD_DIM)
            scores = (q @ cross_k[i].transpose(-1, -2)) / math.sqrt(HEAD_DIM) + cross_mask
            x = x + self.cross_o[i]((scores.softmax(-1) @ cross_v[i]).reshape(B, D))
            x = x + self.ffn_out[i](F.relu(self.ffn_in[i](self.norms[3 * i + 2](x))))
        return self.head(self.norms[-1](x)).argmax(-1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--freeze", action="store_true", help="inductor freezing (weights as constants)")
    parser.add_argument("--no_cache_write", action="store_true", help="leave out the in-place cache writes")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.manual_seed(0)
    import torch._inductor.config as inductor_config

    inductor_config.freezing = args.freeze
    model = GreedyStep(write_cache=not args.no_cache_write).eval()
    caches = [torch.zeros(LAYERS, B, H, L, HEAD_DIM) for _ in range(2)]
    cross = [torch.randn(LAYERS, B, H, S, HEAD_DIM) for _ in range(2)]
    cross_mask = torch.zeros(B, 1, 1, S)
    compiled = torch.compile(model, dynamic=False)

    def decode(step, steps=L - 1):
        x = torch.randn(B, D)
        for position in range(steps):
            step(x, torch.tensor(position), *caches, *cross, cross_mask)

    with torch.inference_mode():
        start = time.perf_counter()
        decode(compiled, 3)
        print(f"compilation: {time.perf_counter() - start:.1f} s")
        times = {"eager": [], "compiled": []}
        for _ in range(args.repeats):
            for name, step in (("eager", model), ("compiled", compiled)):
                start = time.perf_counter()
                decode(step)
                times[name].append((time.perf_counter() - start) / (L - 1) * 1e3)
    eager, compiled_ms = (sorted(t)[len(t) // 2] for t in times.values())
    print(f"ms per step (median of {args.repeats}): eager {eager:.2f}, compiled {compiled_ms:.2f}, "
          f"eager ÷ compiled {eager / compiled_ms:.2f}")


if __name__ == "__main__":
    main()
