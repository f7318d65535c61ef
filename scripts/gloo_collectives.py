#!/usr/bin/env python3
"""Gloo's collectives through torch.distributed, timed as benches/collectives.rs times Manta's.

One rank per process; MASTER_ADDR, MASTER_PORT, RANK and WORLD_SIZE say where and who.
Prints `gloo <op> <bytes> <mean µs>` per op and size (the same sizes, counts and iteration
counts as the Rust bench).
"""
import argparse
import os
import time

import torch
import torch.distributed as dist


def iters(nbytes):
    return max(3, min(100, (64 << 20) // max(1, nbytes)))


def count(op, nbytes, n):
    return max(1, nbytes // 4) if op == "allreduce" else max(1, nbytes // 4 // n)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--ops", required=True)
    p.add_argument("--sizes", required=True)
    a = p.parse_args()
    dist.init_process_group("gloo")
    n = dist.get_world_size()
    for op in a.ops.split(","):
        for nbytes in (int(s) for s in a.sizes.split(",")):
            c = count(op, nbytes, n)
            if op == "allreduce":
                x = torch.ones(c, dtype=torch.float32)
                call = lambda: dist.all_reduce(x)
            elif op == "allgather":
                x = torch.ones(c, dtype=torch.float32)
                out = torch.zeros(c * n, dtype=torch.float32)
                call = lambda: dist.all_gather_into_tensor(out, x)
            else:
                x = torch.ones(c * n, dtype=torch.float32)
                out = torch.zeros(c, dtype=torch.float32)
                # Gloo has no reduce_scatter_tensor; reduce_scatter of a list is its form.
                chunks = list(x.chunk(n))
                call = lambda: dist.reduce_scatter(out, chunks)
            try:
                call()
                call()
            except RuntimeError as e:
                if dist.get_rank() == 0:
                    print(f"# gloo {op}: {e}".splitlines()[0], flush=True)
                break
            dist.barrier()
            k = iters(nbytes)
            t = time.perf_counter()
            for _ in range(k):
                call()
            us = (time.perf_counter() - t) * 1e6 / k
            print(f"gloo {op} {nbytes} {us:.3}", flush=True)
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
