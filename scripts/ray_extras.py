"""Ray measurements that `ray microbenchmark` lacks, for scripts/compare-ray (run in the Ray venv).

    python scripts/ray_extras.py [--quick] [--cases TEXT] [--out FILE]

Cases (the same names and fields as the extra cases of `manta microbenchmark --json`):
  "task round trip"            ray.get(f.remote()) of a no-op task: p50_us, p99_us
  "actor call round trip"      the same through an actor method: p50_us, p99_us
  "reduction tree 10k leaves"  pairwise remote adds over 10,000 leaves returning 1: seconds
  "100k no-op tasks"           submit 100,000 no-op tasks, then get them all: per_second
  "init to first result"       ray.init() to the first get(f.remote()), fresh process: seconds
--quick shrinks the sizes for testing the script (10x fewer samples, leaves and tasks; the two
size-named cases are then named after their actual size, so they do not pass for the full ones).
--cases keeps the cases whose name contains TEXT (like Ray's TESTS_TO_RUN). Ray's workers run at
the niceness in RAY_worker_niceness (Ray's default is 15; compare-ray sets 0); the niceness seen
in a worker is printed and written under "_meta".
"""

import argparse
import json
import os
import subprocess
import sys
import time

import ray


@ray.remote
def noop():
    return None


@ray.remote
def one():
    return 1


@ray.remote
def add(a, b):
    return a + b


@ray.remote
def worker_niceness():
    return os.nice(0)


@ray.remote
class Echo:
    def noop(self):
        return None


def size_name(n):
    """10000 -> '10k', 100000 -> '100k'."""
    return f"{n // 1000}k" if n % 1000 == 0 else str(n)


def percentiles_us(call, warmup, samples):
    for _ in range(warmup):
        call()
    times = []
    for _ in range(samples):
        start = time.perf_counter_ns()
        call()
        times.append(time.perf_counter_ns() - start)
    times.sort()

    def pick(q):
        return round(times[min(len(times) - 1, int(q * len(times)))] / 1000, 1)

    return {"p50_us": pick(0.50), "p99_us": pick(0.99)}


def reduction_tree(leaves):
    start = time.perf_counter()
    level = [one.remote() for _ in range(leaves)]
    while len(level) > 1:
        nxt = [add.remote(level[i], level[i + 1]) for i in range(0, len(level) - 1, 2)]
        if len(level) % 2:
            nxt.append(level[-1])
        level = nxt
    total = ray.get(level[0])
    seconds = time.perf_counter() - start
    if total != leaves:
        sys.exit(f"ray_extras: reduction tree summed to {total}, expected {leaves}")
    return {"seconds": round(seconds, 3)}


def many_tasks(n):
    start = time.perf_counter()
    refs = [noop.remote() for _ in range(n)]
    ray.get(refs)
    return {"per_second": round(n / (time.perf_counter() - start), 2)}


def init_probe():
    """Runs in a fresh process: ray.init() to the first result, printed in seconds."""
    start = time.perf_counter()
    ray.init()
    ray.get(noop.remote())
    print(json.dumps({"seconds": round(time.perf_counter() - start, 3)}))
    ray.shutdown()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, to test the script")
    parser.add_argument("--cases", default="", help="run the cases whose name contains this")
    parser.add_argument("--out", default="target/compare-ray/ray-extras.json")
    parser.add_argument("--init-probe", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.init_probe:
        return init_probe()

    scale = 10 if args.quick else 1
    warmup, samples = 200 // scale, 2000 // scale
    leaves, tasks = 10_000 // scale, 100_000 // scale
    wanted = lambda name: args.cases in name  # noqa: E731
    results = {}

    def record(name, value):
        results[name] = value
        print(f"{name}: {json.dumps(value)}", flush=True)

    # First, before this process starts a cluster: init in a process of its own.
    name = "init to first result"
    if wanted(name):
        probe = subprocess.run(
            [sys.executable, __file__, "--init-probe"], check=True, stdout=subprocess.PIPE, text=True
        )
        record(name, json.loads(probe.stdout.strip().splitlines()[-1]))

    ray.init()
    niceness = ray.get(worker_niceness.remote())
    print(f"Ray worker niceness: {niceness} (driver: {os.nice(0)})", flush=True)
    if niceness != os.nice(0):
        print("ray_extras: warning: Ray's workers run at another priority than this driver;"
              " set RAY_worker_niceness=0", file=sys.stderr, flush=True)
    name = "task round trip"
    if wanted(name):
        record(name, percentiles_us(lambda: ray.get(noop.remote()), warmup, samples))
    name = "actor call round trip"
    if wanted(name):
        actor = Echo.remote()
        record(name, percentiles_us(lambda: ray.get(actor.noop.remote()), warmup, samples))
    name = f"reduction tree {size_name(leaves)} leaves"
    if wanted(name):
        record(name, reduction_tree(leaves))
    name = f"{size_name(tasks)} no-op tasks"
    if wanted(name):
        record(name, many_tasks(tasks))
    ray.shutdown()

    results["_meta"] = {"ray_version": ray.__version__, "worker_niceness": niceness,
                        "quick": args.quick}
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w") as f:
        json.dump(results, f, indent=1)
        f.write("\n")
    print(f"ray_extras: wrote {args.out}")


if __name__ == "__main__":
    main()
