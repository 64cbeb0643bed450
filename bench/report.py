#!/usr/bin/env python3
"""Turns the raw measurements of bench/run into medians, a JSON file and a Markdown table."""

import argparse
import json
import statistics
import sys

TESTS_TITLES = {
    "h1": "HTTP/1.1 throughput, closed loop",
    "h2": "HTTP/2 (h2c) throughput, closed loop",
    "tls": "HTTPS throughput (HTTP/1.1 over TLS), closed loop",
}


def load_lines(path):
    out = []
    with open(path) as f:
        for line in f:
            line = line.strip()
            if line:
                out.append(json.loads(line))
    return out


def median(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def max_or_none(xs):
    xs = [x for x in xs if x is not None]
    return max(xs) if xs else None


def reason_for(notes, target, test):
    for n in notes:
        if n["target"] == target and n["test"] in (test, "all"):
            return n["reason"]
    return None


def least_squares(points):
    """Slope and intercept of the least-squares line through (x, y) points; None without two x."""
    points = [(x, y) for x, y in points if y is not None]
    if len({x for x, _ in points}) < 2:
        return None, None
    n = len(points)
    mx = sum(x for x, _ in points) / n
    my = sum(y for _, y in points) / n
    slope = sum((x - mx) * (y - my) for x, y in points) / sum((x - mx) ** 2 for x, _ in points)
    return slope, my - slope * mx


def summarize_filters(meta, raw, notes):
    """The filters test: per kind and chain length, medians over rounds, and the per-filter cost
    as the least-squares slope of proxy CPU µs/req over the chain lengths. The empty chain is one
    run per round, shared by every kind."""
    s = meta["settings"]
    chains = sorted(set(s.get("filter_chains", [])))
    recs = [r for r in raw if r["test"] == "filters"]
    out = {"chains": chains, "kinds": {}}
    if not [r for r in recs if not r.get("failed")]:
        out["reason"] = reason_for(notes, "weft", "filters") or ("every run failed" if recs else "not run")
        return out

    def runs(kind, n):
        return [r for r in recs if r["filters"] == n and r["kind"] == ("none" if n == 0 else kind)]

    for kind in s.get("filter_kinds", []):
        rows = []
        for n in chains:
            all_runs = runs(kind, n)
            good = [r for r in all_runs if not r.get("failed")]
            if not good:
                rows.append({"filters": n, "rps": None, "failed_runs": len(all_runs)})
                continue
            rps = [r["wrk"]["requests"] / r["wrk"]["duration_us"] * 1e6 for r in good]
            calls = [r["filter_calls"] / r["wrk"]["requests"] / n for r in good
                     if n > 0 and r.get("filter_calls") is not None and r["wrk"]["requests"] > 0]
            rows.append({
                "filters": n,
                "rps": median(rps),
                "rps_rounds": [round(x, 1) for x in rps],
                "cpu_us_per_req": median([r.get("cpu_us_per_req") for r in good]),
                "cpu_us_per_req_rounds": [r.get("cpu_us_per_req") for r in good],
                "errors": sum(r["wrk"]["errors"] for r in good),
                "non2xx": sum(r["wrk"]["non2xx"] for r in good),
                "filter_failures": sum(r.get("filter_failures") or 0 for r in good),
                "filter_calls_per_req_per_filter": median(calls),
                "failed_runs": len(all_runs) - len(good),
                "other_cpu_pct_max": max_or_none([r.get("other_cpu_pct") for r in good]),
                "steal_pct_max": max_or_none([r.get("steal_pct") for r in good]),
            })
        slope, intercept = least_squares([(r["filters"], r.get("cpu_us_per_req")) for r in rows])
        per_round = []
        for rnd in sorted({r["round"] for r in recs}):
            pts = []
            for n in chains:
                got = [r.get("cpu_us_per_req") for r in runs(kind, n) if r["round"] == rnd and not r.get("failed")]
                if got and got[0] is not None:
                    pts.append((n, got[0]))
            if len(pts) == len(chains):
                per_round.append(least_squares(pts)[0])
        out["kinds"][kind] = {
            "rows": rows,
            "per_filter_cpu_us": slope,
            "intercept_cpu_us": intercept,
            "per_filter_cpu_us_rounds": per_round,
        }
    return out


def summarize(meta, raw, notes):
    targets = meta["settings"]["targets"]
    summary = {"throughput": {}, "latency": {}, "idle": {}}

    for test in ("h1", "h2", "tls"):
        if test not in meta["settings"]["tests"]:
            continue
        per = {}
        for t in targets:
            recs = [r for r in raw if r["test"] == test and r["target"] == t]
            good = [r for r in recs if not r.get("failed")]
            if not good:
                per[t] = {"rps": None, "reason": reason_for(notes, t, test)
                          or ("every run failed" if recs else "not run")}
                continue
            if test == "h2":
                rps = [r["rps"] for r in good]
                errors = sum(r.get("errors", 0) for r in good)
            else:
                rps = [r["wrk"]["requests"] / r["wrk"]["duration_us"] * 1e6 for r in good]
                errors = sum(r["wrk"]["errors"] for r in good)
            per[t] = {
                "rps": median(rps),
                "rps_rounds": [round(x, 1) for x in rps],
                "cpu_us_per_req": median([r.get("cpu_us_per_req") for r in good]),
                "cpu_us_per_req_rounds": [r.get("cpu_us_per_req") for r in good],
                "errors": errors,
                "failed_runs": len(recs) - len(good),
                "other_cpu_pct_max": max_or_none([r.get("other_cpu_pct") for r in good]),
                "steal_pct_max": max_or_none([r.get("steal_pct") for r in good]),
            }
        for t, v in per.items():
            for base in ("direct", "nginx"):
                b = per.get(base, {}).get("rps")
                v["vs_" + base] = (v["rps"] / b) if (v["rps"] and b) else None
        summary["throughput"][test] = per

    if "latency" in meta["settings"]["tests"]:
        for rate in meta["settings"]["rates"]:
            per = {}
            for t in targets:
                recs = [r for r in raw if r["test"] == "latency" and r["target"] == t and r["rate"] == rate]
                good = [r["loadgen"] for r in recs if not r.get("failed")]
                if not good:
                    per[t] = {"reason": reason_for(notes, t, "latency")
                              or ("every run failed" if recs else "not run")}
                    continue
                per[t] = {
                    q: median([g["latency_us"][q] for g in good]) for q in ("p50", "p90", "p99", "p999", "max")
                }
                per[t]["rounds"] = [{q: g["latency_us"][q] for q in ("p50", "p99", "p999")} for g in good]
                per[t]["errors"] = sum(g["errors"] for g in good)
                per[t]["achieved_rps"] = median([g["achieved_rps"] for g in good])
                per[t]["pacer_lag_p99_us"] = max(g["pacer_lag_us"]["p99"] for g in good)
                ok_recs = [r for r in recs if not r.get("failed")]
                per[t]["other_cpu_pct_max"] = max_or_none([r.get("other_cpu_pct") for r in ok_recs])
                per[t]["steal_pct_max"] = max_or_none([r.get("steal_pct") for r in ok_recs])
            d = per.get("direct", {})
            for t, v in per.items():
                for q in ("p50", "p99", "p999"):
                    v["added_" + q] = (v[q] - d[q]) if (q in v and q in d) else None
            summary["latency"][str(rate)] = per

    if "idle" in meta["settings"]["tests"]:
        for t in targets:
            if t == "direct":
                continue
            recs = [r for r in raw if r["test"] == "idle" and r["target"] == t]
            good = [r["loadgen"] for r in recs if not r.get("failed")]
            if not good:
                summary["idle"][t] = {"reason": reason_for(notes, t, "idle")
                                      or ("the run failed" if recs else "not run")}
                continue
            summary["idle"][t] = {"cycles": good[0]["cycles"]}

    if "filters" in meta["settings"]["tests"]:
        summary["filters"] = summarize_filters(meta, raw, notes)
    return summary


def fmt(x, nd=0, signed=False):
    if x is None:
        return "n/a"
    s = f"{x:+,.{nd}f}" if signed else f"{x:,.{nd}f}"
    return s


def markdown(meta, summary, notes):
    s = meta["settings"]
    v = meta["versions"]
    lines = []
    lines.append(f"## Benchmark run {meta['date']}")
    lines.append("")
    lines.append(f"Machine: {meta['machine']['cpu']}, {meta['machine']['cores']} cores, Linux {meta['machine']['kernel']}. "
                 f"Proxy on core {s['proxy_cpu']}, origin and load on core {s['load_cpu']}. "
                 f"Medians of {s['rounds']} interleaved rounds. "
                 f"Machine busy before start: {meta['machine'].get('busy_pct_before_start', 'n/a')}%.")
    lines.append("")
    lines.append(f"Versions: weft {v.get('weft')}, nginx {v.get('nginx')}, haproxy {v.get('haproxy')}, "
                 f"wrk {v.get('wrk')}, h2load {v.get('h2load')}, OpenSSL {v.get('openssl')}.")
    targets = s["targets"]

    for test, per in summary["throughput"].items():
        lines.append("")
        if test == "h1":
            how = f"wrk -t1 -c{s['conns']} -d{s['duration_s']}s"
        elif test == "h2":
            how = f"h2load -t1 -c{s['conns']} -m{s['h2_streams']} -D{s['aux_duration_s']}, prior knowledge"
        else:
            how = f"wrk -t1 -c{s['conns']} -d{s['aux_duration_s']}s over TLS, self-signed ECDSA P-256"
        lines.append(f"### {TESTS_TITLES[test]} ({how})")
        lines.append("")
        lines.append("| target | req/s | vs direct | vs nginx | proxy CPU µs/req | errors | other CPU % |")
        lines.append("|---|---:|---:|---:|---:|---:|---:|")
        for t in targets:
            r = per.get(t, {})
            if r.get("rps") is None:
                lines.append(f"| {t} | n/a | | | | {r.get('reason', '')} | |")
                continue
            cpu = "—" if t == "direct" else fmt(r["cpu_us_per_req"], 2)
            lines.append(f"| {t} | {fmt(r['rps'])} | {fmt(r['vs_direct'], 2)} | {fmt(r['vs_nginx'], 2)} | {cpu} | {r['errors']} | "
                         f"{fmt(r['other_cpu_pct_max'], 1)} |")

    if summary["latency"]:
        lines.append("")
        lines.append(f"### Latency at fixed rates (open loop, HTTP/1.1, {s['latency_conns']} connections, "
                     f"{s['latency_duration_s']} s per run; µs from the intended send time)")
        lines.append("")
        lines.append("| target | rate | p50 | p99 | p99.9 | added p50 | added p99 | added p99.9 | errors | other CPU % |")
        lines.append("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
        for rate, per in summary["latency"].items():
            for t in targets:
                r = per.get(t, {})
                if "p50" not in r:
                    lines.append(f"| {t} | {rate} | n/a | | | | | | {r.get('reason', '')} | |")
                    continue
                added = ["—"] * 3 if t == "direct" else [fmt(r["added_" + q], 0, True) for q in ("p50", "p99", "p999")]
                lines.append(f"| {t} | {rate} | {fmt(r['p50'])} | {fmt(r['p99'])} | {fmt(r['p999'])} | "
                             f"{added[0]} | {added[1]} | {added[2]} | {r['errors']} | {fmt(r['other_cpu_pct_max'], 1)} |")
        lags = [r["pacer_lag_p99_us"] for per in summary["latency"].values() for r in per.values()
                if "pacer_lag_p99_us" in r]
        if lags:
            lines.append("")
            lines.append(f"Generator check: its request release lagged the schedule by at most {max(lags):,.0f} µs "
                         f"at p99 in any run (that lag is part of every target's latency, direct included). "
                         f"Added = proxy median − direct median.")

    if summary["idle"]:
        lines.append("")
        lines.append(f"### Memory per idle keep-alive connection ({s['idle_conns']} connections, each after one request)")
        lines.append("")
        hdr = " | ".join(f"cycle {i + 1} B/conn" for i in range(s["idle_cycles"]))
        lines.append(f"| target | {hdr} | RSS before → open → closed, per cycle (MiB) | open / alive |")
        lines.append("|---|" + "---:|" * s["idle_cycles"] + "---|---|")
        for t in targets:
            if t == "direct":
                continue
            r = summary["idle"].get(t, {})
            if "cycles" not in r:
                lines.append(f"| {t} | " + "n/a | " * s["idle_cycles"] + f"{r.get('reason', '')} | |")
                continue
            cyc = r["cycles"]
            per = " | ".join(fmt(c["bytes_per_conn"]) for c in cyc)
            mib = lambda b: f"{b / 1048576:.1f}"
            rss = "; ".join(f"{mib(c['rss_before'])} → {mib(c['rss_open'])} → {mib(c['rss_after_close'])}" for c in cyc)
            oa = "; ".join(f"{c['opened']} / {c['alive_at_measure']}" for c in cyc)
            lines.append(f"| {t} | {per} | {rss} | {oa} |")

    if "filters" in summary:
        lines += markdown_filters(s, summary["filters"])

    others = [r.get("other_cpu_pct_max") for per in list(summary["throughput"].values()) + list(summary["latency"].values())
              for r in per.values()]
    others += [r.get("other_cpu_pct_max") for k in summary.get("filters", {}).get("kinds", {}).values() for r in k["rows"]]
    others = [x for x in others if x is not None]
    lines.append("")
    lines.append("*other CPU %*: the largest share of the machine's CPU used by anything but the bench during "
                 "any round of that row (the hypervisor's steal not included). Rows above a few percent were "
                 "disturbed by other work: rerun on an idle machine.")
    if others and max(others) > 5:
        lines.append("")
        lines.append(f"**Warning: other work used up to {max(others):.0f}% of the machine during this run; "
                     "its numbers are not reliable.**")

    general = [n for n in notes if n["test"] == "all"]
    if general:
        lines.append("")
        lines.append("Not measured: " + "; ".join(f"{n['target']}: {n['reason']}" for n in general) + ".")
    return "\n".join(lines) + "\n"


def markdown_filters(s, f):
    lines = ["", f"### Filter cost: weft through a chain of N filters (HTTP/1.1, wrk -t1 -c{s['conns']} -d{s['duration_s']}s)", ""]
    if f.get("reason"):
        lines.append(f"n/a: {f['reason']}")
        return lines
    kinds = list(f["kinds"])
    lines.append("| filters | " + " | ".join(f"{k} req/s | {k} CPU µs/req" for k in kinds) + " | errors | other CPU % |")
    lines.append("|---:|" + "---:|---:|" * len(kinds) + "---:|---:|")
    for i, n in enumerate(f["chains"]):
        cells, errors, other = [], 0, []
        for k in kinds:
            r = f["kinds"][k]["rows"][i]
            if r.get("rps") is None:
                cells += ["n/a", ""]
                continue
            cells += [fmt(r["rps"]), fmt(r["cpu_us_per_req"], 2)]
            # The empty chain is one run shared by every kind: count its errors once.
            if n > 0 or k == kinds[0]:
                errors += r["errors"] + r["filter_failures"] + r["failed_runs"]
            other.append(r["other_cpu_pct_max"])
        lines.append(f"| {n} | " + " | ".join(cells) + f" | {errors} | {fmt(max_or_none(other), 1)} |")
    lines.append("")
    chains = ", ".join(str(n) for n in f["chains"])
    costs = []
    for k in kinds:
        v = f["kinds"][k]
        rounds = ", ".join(fmt(x, 2) for x in v["per_filter_cpu_us_rounds"])
        costs.append(f"{k} **{fmt(v['per_filter_cpu_us'], 2)} µs** (rounds: {rounds or 'n/a'}; "
                     f"intercept {fmt(v['intercept_cpu_us'], 2)} µs)")
    lines.append(f"Per-filter cost, the least-squares slope of proxy CPU µs/req over {chains} filters: "
                 + "; ".join(costs) + ".")
    calls = [r["filter_calls_per_req_per_filter"] for k in kinds for r in f["kinds"][k]["rows"]
             if r.get("filter_calls_per_req_per_filter") is not None]
    failures = sum(r.get("filter_failures", 0) for k in kinds for r in f["kinds"][k]["rows"])
    if calls:
        lines.append("")
        lines.append(f"Check: filter callbacks per request and filter, from the admin `/filters`: "
                     f"{min(calls):.2f}–{max(calls):.2f} (3 expected: request headers, response headers, and the response body in one piece); "
                     f"filter failures: {failures}. The 0 row is one run shared by every kind; errors count "
                     f"non-2xx answers, socket errors, filter failures and failed runs.")
    return lines


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--meta", required=True)
    ap.add_argument("--raw", required=True)
    ap.add_argument("--notes", required=True)
    ap.add_argument("--json", required=True)
    ap.add_argument("--markdown", required=True)
    a = ap.parse_args()
    meta = json.load(open(a.meta))
    raw = load_lines(a.raw)
    notes = load_lines(a.notes)
    summary = summarize(meta, raw, notes)
    md = markdown(meta, summary, notes)
    with open(a.json, "w") as f:
        json.dump(dict(meta, summary=summary, notes=notes, raw=raw), f, indent=1)
        f.write("\n")
    with open(a.markdown, "w") as f:
        f.write(md)
    sys.stdout.write("\n" + md)


if __name__ == "__main__":
    main()
