"""Side-by-side report of ralm-index-bench and bench_faiss.py results (JSON lines), with a
comparison at equal recall and a recall / queries-per-second plot (SVG, no dependencies).

    python3 scripts/bench_report.py RALM.jsonl FAISS.jsonl [--plot OUT.svg]

Equal recall: where an IVF-PQ setting was run at several nprobe values, each engine's points
form a curve of queries/s against recall; each ralm point is compared with FAISS's curve at the
same recall, interpolated between the two FAISS points around it (queries/s on a log scale).
Points outside FAISS's recall range are not compared.
"""
import argparse
import json
import math


def load(path):
    rows = {}
    with open(path) as f:
        for line in f:
            r = json.loads(line)
            key = (r["index"], r.get("nlist"), r.get("m"), r.get("nbits"), r.get("nprobe"),
                   r.get("rerank"))
            rows[key] = r
    return rows


def name(key):
    index, nlist, m, nbits, nprobe, rerank = key
    if index == "flat":
        return "flat"
    return f"ivfpq {nlist},{m}x{nbits},{nprobe} rr={rerank}"


def curves(rows):
    """IVF-PQ points grouped by (nlist, m, nbits, rerank), sorted by recall."""
    out = {}
    for key, r in rows.items():
        if key[0] == "ivfpq":
            out.setdefault((key[1], key[2], key[3], key[5]), []).append(r)
    for pts in out.values():
        pts.sort(key=lambda r: r["recall"])
    return out


def at_recall(pts, recall, field):
    """Queries/s of the curve `pts` at `recall` (log-linear interpolation), None outside it."""
    for a, b in zip(pts, pts[1:]):
        if a["recall"] <= recall <= b["recall"]:
            if b["recall"] == a["recall"]:
                return max(a[field], b[field])
            t = (recall - a["recall"]) / (b["recall"] - a["recall"])
            return math.exp((1 - t) * math.log(a[field]) + t * math.log(b[field]))
    return None


def table(ralm, faiss):
    print(f"{'setting':<30}{'engine':>7}{'build s':>9}{'B/key':>7}{'qps 1t':>10}{'qps 2t':>10}"
          f"{'recall':>8}")
    for key, r in ralm.items():
        f = faiss.get(key)
        for eng, x in (("ralm", r), ("faiss", f)):
            if x:
                print(f"{name(key):<30}{eng:>7}{x['build_s']:>9.2f}{x['bytes_per_key']:>7}"
                      f"{x['qps_1t']:>10.0f}{x['qps_2t']:>10.0f}{x['recall']:>8.3f}")
        if f:
            print(f"{'':<30}{'ratio':>7}{'':>16}{r['qps_1t'] / f['qps_1t']:>10.2f}"
                  f"{r['qps_2t'] / f['qps_2t']:>10.2f}")


def equal_recall(ralm, faiss):
    fc = curves(faiss)
    lines = []
    for group, pts in curves(ralm).items():
        other = fc.get(group, [])
        if len(other) < 2:
            continue
        nlist, m, nbits, rerank = group
        for r in pts:
            f1 = at_recall(other, r["recall"], "qps_1t")
            f2 = at_recall(other, r["recall"], "qps_2t")
            setting = f"ivfpq {nlist},{m}x{nbits},{r['nprobe']} rr={rerank}"
            if f1 is None:
                lines.append(f"{setting:<30}{r['recall']:>8.3f}   outside FAISS's recall range")
            else:
                lines.append(f"{setting:<30}{r['recall']:>8.3f}{r['qps_1t']:>10.0f}{r['qps_2t']:>10.0f}"
                             f"{f1:>10.0f}{f2:>10.0f}{r['qps_1t'] / f1:>10.2f}{r['qps_2t'] / f2:>10.2f}")
    if lines:
        print("\nAt equal recall (FAISS's queries/s interpolated on its nprobe curve):")
        print(f"{'ralm setting':<30}{'recall':>8}{'ralm 1t':>10}{'ralm 2t':>10}{'FAISS 1t':>10}"
              f"{'FAISS 2t':>10}{'ratio 1t':>10}{'ratio 2t':>10}")
        print("\n".join(lines))


def plot(ralm, faiss, path):
    """Queries/s (log scale) against recall, one panel per thread count, one line per engine
    and setting."""
    series = []
    for eng, rows, dash in (("ralm", ralm, ""), ("FAISS", faiss, "6,4")):
        for (nlist, m, nbits, rerank), pts in curves(rows).items():
            label = f"{eng} {nlist},{m}x{nbits}" + (f" rr{rerank}" if rerank else "")
            series.append((label, pts, dash))
    if not series:
        return
    colours = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#17becf",
               "#e377c2"]
    groups = sorted({s[0].split(" ", 1)[1] for s in series})
    colour = {g: colours[i % len(colours)] for i, g in enumerate(groups)}
    all_pts = [p for s in series for p in s[1]]
    r0 = min(p["recall"] for p in all_pts)
    r1 = max(p["recall"] for p in all_pts)
    q0 = min(min(p["qps_1t"], p["qps_2t"]) for p in all_pts)
    q1 = max(max(p["qps_1t"], p["qps_2t"]) for p in all_pts)
    lq0, lq1 = math.log10(q0) - 0.05, math.log10(q1) + 0.05
    r0, r1 = r0 - 0.01, min(1.0, r1 + 0.01)
    w, h, pad, gap = 420, 320, 60, 40
    width = 2 * w + gap + 2 * pad + 220
    svg = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{h + 2 * pad}" '
           f'font-family="sans-serif" font-size="11">',
           f'<rect width="100%" height="100%" fill="white"/>']
    for panel, field in enumerate(("qps_1t", "qps_2t")):
        x0 = pad + panel * (w + gap)
        def xy(p):
            x = x0 + (p["recall"] - r0) / (r1 - r0) * w
            y = pad + h - (math.log10(p[field]) - lq0) / (lq1 - lq0) * h
            return x, y
        svg.append(f'<rect x="{x0}" y="{pad}" width="{w}" height="{h}" fill="none" stroke="#888"/>')
        svg.append(f'<text x="{x0 + w / 2}" y="{pad - 10}" text-anchor="middle" font-size="13">'
                   f'{"1 thread" if panel == 0 else "2 threads"}</text>')
        svg.append(f'<text x="{x0 + w / 2}" y="{pad + h + 35}" text-anchor="middle">recall</text>')
        for i in range(6):
            r = r0 + (r1 - r0) * i / 5
            x = x0 + w * i / 5
            svg.append(f'<text x="{x}" y="{pad + h + 15}" text-anchor="middle">{r:.3f}</text>')
        for e in range(math.floor(lq0), math.ceil(lq1) + 1):
            for mult in (1, 2, 5):
                lq = e + math.log10(mult)
                if lq0 <= lq <= lq1:
                    y = pad + h - (lq - lq0) / (lq1 - lq0) * h
                    svg.append(f'<line x1="{x0}" x2="{x0 + w}" y1="{y:.1f}" y2="{y:.1f}" '
                               f'stroke="#eee"/>')
                    svg.append(f'<text x="{x0 - 5}" y="{y + 4:.1f}" text-anchor="end">'
                               f'{mult * 10 ** e:g}</text>')
        if panel == 0:
            svg.append(f'<text x="{x0 - 45}" y="{pad + h / 2}" text-anchor="middle" '
                       f'transform="rotate(-90 {x0 - 45} {pad + h / 2})">queries/s (log)</text>')
        for label, pts, dash in series:
            c = colour[label.split(" ", 1)[1]]
            line = " ".join(f"{x:.1f},{y:.1f}" for x, y in map(xy, pts))
            svg.append(f'<polyline points="{line}" fill="none" stroke="{c}" stroke-width="1.8" '
                       f'stroke-dasharray="{dash}"/>')
            for x, y in map(xy, pts):
                svg.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="2.5" fill="{c}"/>')
    lx = pad + 2 * w + gap + 20
    for i, (label, _, dash) in enumerate(series):
        y = pad + 10 + 16 * i
        c = colour[label.split(" ", 1)[1]]
        svg.append(f'<line x1="{lx}" x2="{lx + 24}" y1="{y}" y2="{y}" stroke="{c}" '
                   f'stroke-width="1.8" stroke-dasharray="{dash}"/>')
        svg.append(f'<text x="{lx + 30}" y="{y + 4}">{label}</text>')
    svg.append("</svg>")
    with open(path, "w") as f:
        f.write("\n".join(svg) + "\n")
    print(f"\nplot: {path}")


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("ralm")
    ap.add_argument("faiss")
    ap.add_argument("--plot", help="write a recall / queries-per-second SVG here")
    a = ap.parse_args()
    ralm, faiss = load(a.ralm), load(a.faiss)
    table(ralm, faiss)
    equal_recall(ralm, faiss)
    if a.plot:
        plot(ralm, faiss, a.plot)


if __name__ == "__main__":
    main()
