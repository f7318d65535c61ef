"""Parsing and the side-by-side table for scripts/compare-ray (Python 3 standard library only).

    compare_table.py parse-ray [--allow-empty] RAY_TXT OUT_JSON
        `ray microbenchmark` output -> {case: {"per_second": x, "stddev": y}}
    compare_table.py regex-escape TEXT
        TEXT as a regex (Rust `regex` syntax) matching TEXT literally
    compare_table.py table --ray JSON [--ray JSON...] --manta JSON [--manta-cluster JSON]
                           [--md FILE] [--caption TEXT]
        prints case | Ray 2.60 | Manta | Manta/Ray for every case in both, writes it as Markdown;
        with --manta-cluster also | Manta (worker processes) | its ratio to Ray

A case holds per_second (and stddev), p50_us/p99_us, or seconds. The ratio column always reads
"how many times better Manta is": Manta/Ray for rates, Ray/Manta for latencies and times.
Keys starting with "_" are metadata, never cases.
"""

import argparse
import json
import re
import sys

RAY_LINE = re.compile(r"^(?P<case>.+?) per second (?P<mean>[-+0-9.eE]+) \+- (?P<sd>[-+0-9.eE]+)\s*$")
# (field, label suffix, unit, higher is better)
METRICS = [
    ("per_second", "", "/s", True),
    ("p50_us", " (p50)", "µs", False),
    ("p99_us", " (p99)", "µs", False),
    ("seconds", "", "s", False),
]


def parse_ray(text):
    cases = {}
    for line in text.splitlines():
        m = RAY_LINE.match(line.strip())
        if m:
            cases[m["case"]] = {"per_second": float(m["mean"]), "stddev": float(m["sd"])}
    return cases


def regex_escape(text):
    return re.sub(r"([\\.+*?()|\[\]{}^$#&\-~])", r"\\\1", text)


def num(x):
    if abs(x) >= 100:
        return f"{x:,.0f}"
    if abs(x) >= 10:
        return f"{x:.1f}"
    if abs(x) >= 1:
        return f"{x:.2f}"
    return f"{x:.3g}"


def cell(case, field, unit):
    text = num(case[field])
    if field == "per_second" and "stddev" in case:
        text += f" ± {num(case['stddev'])}"
    return f"{text} {unit}"


def ratio_text(rv, mv, higher_better):
    if rv > 0 and mv > 0:
        ratio = mv / rv if higher_better else rv / mv
        text = f"{ratio:,.2f}×" if ratio < 100 else f"{ratio:,.0f}×"
        return text + ("" if higher_better else " †")
    return "n/a"


def build_rows(ray, manta, cluster=None):
    rows, only = [], []
    for name in list(ray) + [n for n in manta if n not in ray]:
        if name.startswith("_"):
            continue
        r, m = ray.get(name), manta.get(name)
        fields = [f for f in METRICS if r and m and f[0] in r and f[0] in m]
        if not fields:
            only.append((name, "Ray" if r else "Manta", "no shared metric" if r and m else None))
            continue
        for field, suffix, unit, higher_better in fields:
            rv, mv = float(r[field]), float(m[field])
            row = [name + suffix, cell(r, field, unit), cell(m, field, unit),
                   ratio_text(rv, mv, higher_better)]
            if cluster is not None:
                c = cluster.get(name)
                if c and field in c:
                    row += [cell(c, field, unit), ratio_text(rv, float(c[field]), higher_better)]
                else:
                    row += ["–", "–"]
            rows.append(tuple(row))
    return rows, only


def header(rows):
    h = ["case", "Ray 2.60", "Manta", "Manta/Ray"]
    if rows and len(rows[0]) > 4:
        h += ["Manta, worker processes", "its ratio"]
    return h


def markdown(rows, only, caption):
    out = []
    if caption:
        out += [caption, ""]
    h = header(rows)
    out += ["| " + " | ".join(h) + " |", "|---|" + "---:|" * (len(h) - 1)]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    out += ["", "Ratios read \"times better for Manta\": Manta/Ray for rates (/s); † marks latency "
            "and time rows, where the ratio is Ray/Manta (how many times faster Manta is)."]
    if only:
        out += ["", "Not comparable (measured on one side only):", ""]
        for name, side, why in only:
            out.append(f"- {name}: {why or side + ' only'}")
    return "\n".join(out) + "\n"


def plain(rows):
    h = tuple(header(rows))
    n = len(h)
    widths = [max(len(r[i]) for r in [h] + rows) for i in range(n)]
    line = lambda r: "  ".join(  # noqa: E731
        r[i].ljust(widths[i]) if i == 0 else r[i].rjust(widths[i]) for i in range(n)
    )
    return "\n".join([line(h), "  ".join("-" * w for w in widths)] + [line(r) for r in rows])


def load(path):
    with open(path) as f:
        data = json.load(f)
    if not isinstance(data, dict):
        sys.exit(f"compare_table: {path} is not a JSON object of cases")
    return data


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("parse-ray")
    p.add_argument("--allow-empty", action="store_true", help="no case is not an error")
    p.add_argument("ray_txt")
    p.add_argument("out_json")
    p = sub.add_parser("regex-escape")
    p.add_argument("text")
    p = sub.add_parser("table")
    p.add_argument("--ray", action="append", required=True, help="Ray JSON (repeatable)")
    p.add_argument("--manta", required=True)
    p.add_argument("--manta-cluster", help="Manta run as a driver of a local cluster")
    p.add_argument("--md", help="also write the table here as Markdown")
    p.add_argument("--caption", default="")
    args = parser.parse_args()

    if args.cmd == "parse-ray":
        with open(args.ray_txt) as f:
            cases = parse_ray(f.read())
        if not cases and not args.allow_empty:
            sys.exit(f"compare_table: no '<case> per second <mean> +- <sd>' line in {args.ray_txt}")
        with open(args.out_json, "w") as f:
            json.dump(cases, f, indent=1)
            f.write("\n")
        print(f"compare_table: {len(cases)} Ray cases -> {args.out_json}")
    elif args.cmd == "regex-escape":
        print(regex_escape(args.text))
    else:
        ray = {}
        for path in args.ray:
            ray.update(load(path))
        cluster = load(args.manta_cluster) if args.manta_cluster else None
        rows, only = build_rows(ray, load(args.manta), cluster)
        if not rows:
            sys.exit("compare_table: no case measured on both sides")
        print(plain(rows))
        md = markdown(rows, only, args.caption)
        print(md[md.index("Ratios"):])
        if args.md:
            with open(args.md, "w") as f:
                f.write(md)


if __name__ == "__main__":
    main()
