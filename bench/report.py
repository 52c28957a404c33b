#!/usr/bin/env python3
"""Write bench/REPORT.md and bench/plots/*.png from one `make bench` run's JSON.

Reads DIR/report-data/{run,upsert,capture,oltp,flush,metrics}.json (each also as
.json.gz), as bench/run_all.py writes them; every figure in the report is computed
here from those files (the only constants typed in are the issues' targets, in
TARGETS). A benchmark that is missing or failed gets a line saying so.

    /usr/bin/python3 bench/report.py [--dir bench] [--readme README.md]

--readme rewrites the block between the README's `bench:headline` markers with
the headline figures (run_all.py does it for the default output directory only).
"""
import argparse
import gzip
import json
import os
import statistics
import sys

HERE = os.path.abspath(os.path.dirname(__file__))
ROOT = os.path.dirname(HERE)

# The targets, as the issues state them (issue number, wording).
TARGETS = {
    "upsert_jsonb_staging": (3, 1.0), "upsert_jsonb_recordset": (3, 1.2),
    "upsert_from_staging": (3, 1.2), "upsert_client_values": (3, 2.0),
    "upsert_client_rowbyrow": (3, 20.0),
    "capture_bulk": (4, 1.5), "capture_oltp": (4, 1.1), "capture_storage": (4, 2.0),
    "drain_redis": (5, 300_000), "drain_kafka": (5, 400_000), "e2e": (5, 3.0),
    "steady_p50": (5, 20.0), "steady_p99": (5, 100.0), "memory_mb": (5, 100.0),
    "metrics_change": (6, 0.02),
    "oltp_paused": (18, 0.92), "oltp_paused_pgq": (18, 1.2), "oltp_delivering": (18, 0.85),
}
CAPTURE_LABEL = {"none": "no capture (baseline)", "batchkit": "batchkit capture",
                 "row_trg": "PL/pgSQL row trigger -> outbox",
                 "stmt_trg": "PL/pgSQL statement trigger -> outbox", "pgq": "PgQ logutriga"}
FLUSH_LABEL = {"batchkit": "batchkit flush worker",
               "batchkit_noheaders": "batchkit flush worker, `\"headers\": false` (not the target)",
               "outbox": "statement trigger + outbox, Python relay",
               "pgq": "PgQ, Python consumer"}


def load(data_dir, name):
    for fn, opener in ((f"{name}.json", open), (f"{name}.json.gz", gzip.open)):
        p = os.path.join(data_dir, fn)
        if os.path.exists(p):
            with opener(p, "rt") as f:
                return json.load(f)
    return None


def med(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def pctl(xs, p):
    if not xs:
        return None
    k = (len(xs) - 1) * p / 100.0
    lo = int(k)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


def rate(x):
    return "-" if x is None else f"{x:,.0f} rows/s"


def secs(x):
    return "-" if x is None else f"{x:.2f} s"


def ratio(x):
    return "-" if x is None else f"{x:.2f}x"


def verdict(ok):
    return "-" if ok is None else ("**met**" if ok else "**not met**")


INCONCLUSIVE = "**inconclusive**"


def table(head, rows):
    out = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    for r in rows:
        out.append("| " + " | ".join("-" if c is None else str(c) for c in r) + " |")
    return "\n".join(out)


class Report:
    def __init__(self, out_dir):
        self.dir = out_dir
        self.data = os.path.join(out_dir, "report-data")
        self.plots = os.path.join(out_dir, "plots")
        os.makedirs(self.plots, exist_ok=True)
        self.run = load(self.data, "run") or {}
        self.md = []
        self.summary = []       # (capability, measurement, batchkit, target, met)
        self.headline = []      # short lines for the README
        self.plot_files = []
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        self.plt = plt

    def bench(self, name):
        """A benchmark's JSON, only when this run ran it successfully (report-data/ may
        still hold files of an earlier run that --only left out)."""
        b = self.run.get("benchmarks")
        if b is not None and not (b.get(name) or {}).get("ok"):
            return None
        return load(self.data, name)

    def w(self, *lines):
        self.md.extend(lines)

    def cmd(self, name):
        b = self.run.get("benchmarks", {}).get(name)
        if not b:
            return None
        return b["command"]

    def missing(self, name, title):
        b = self.run.get("benchmarks", {}).get(name)
        why = ("not run" if not b else
               f"failed (exit {b['exit']}); see report-data/{b['log']}")
        self.w(f"## {title}", "", f"*No data: the benchmark {why}.*", "")
        self.summary.append((title, "-", "-", "-", f"no data ({why.split(';')[0]})"))

    def savefig(self, fig, name):
        path = os.path.join(self.plots, name)
        fig.tight_layout()
        fig.savefig(path, dpi=100)
        self.plt.close(fig)
        self.plot_files.append(name)
        return f"plots/{name}"

    # ---- header ------------------------------------------------------------------------
    def header(self):
        m = self.run.get("machine", {})
        loads = [s["load1"] for s in self.run.get("loadavg_samples", [])]
        cpus = m.get("cpus") or 1
        total = sum(b["seconds"] for b in self.run.get("benchmarks", {}).values())
        self.w("# batchkit benchmark report", "",
               f"Generated by `make bench` (profile **{self.run.get('profile', '?')}**) from "
               f"{self.run.get('started_at', '?')} to {self.run.get('finished_at', '?')} "
               f"({total / 60:.0f} min). Every figure below is computed by `bench/report.py` "
               "from the JSON files in [report-data/](report-data/) written by that run; "
               "the targets are the issues'. Peers are measured in the same run as batchkit, "
               "so ratios compare like with like. Re-run everything with `make bench` "
               "(`make bench BENCH_ARGS=--quick` for a ~5-minute smoke run); each section gives "
               "the command that produced its numbers.", "")
        if loads:
            lo, md_, hi = min(loads), statistics.median(loads), max(loads)
            noisy = md_ > cpus
            self.w(f"**Load:** the 1-minute load average, sampled every 5 s during the run "
                   f"({len(loads)} samples), was min {lo:.2f}, median {md_:.2f}, max {hi:.2f} "
                   f"on {cpus} cores. The benchmarks alone keep about one or two processes "
                   "busy; " + (
                       f"a median above {cpus} means other work shared the machine: **these "
                       "figures are noisy** (absolute rates are low; the same-run ratios are "
                       "more trustworthy, and a quiet re-run is needed for final numbers)."
                       if noisy else "the machine was otherwise quiet enough for the figures "
                       "to be representative."), "")
        dirty = m.get("git_dirty") or []
        rows = [("CPU", f"{m.get('cpu_model', '?')}, {cpus} cores"),
                ("RAM", f"{m.get('ram_bytes', 0) / 2**30:.1f} GiB"),
                ("OS", f"Debian {m.get('debian', '?')}, Linux {m.get('kernel', '?')}"),
                ("PostgreSQL", self.pg_version() or m.get("postgres", "?")),
                ("batchkit commit", f"`{m.get('git_commit', '?')}` ({m.get('git_branch', '?')})"
                 + (f"; extension code last changed in `{m['git_code_commit'][:10]}`"
                    if m.get("git_code_commit") else "")
                 + (f", with uncommitted changes in {len(dirty)} file(s) under bench/src/sql"
                    if dirty else "")),
                ("load average (1 min) per benchmark", ", ".join(
                    f"{n} {med([s['load1'] for s in self.run.get('loadavg_samples', []) if s['bench'] == n]) or 0:.2f}"
                    for n in self.run.get("benchmarks", {})))]
        self.w("## Machine", "", table(("", ""), rows), "")

    def pg_version(self):
        for name in ("capture", "flush"):
            d = self.bench(name)
            if d and d.get("machine", {}).get("postgres"):
                return d["machine"]["postgres"].split(" on ")[0]
        return None

    # ---- issue 3: upsert -----------------------------------------------------------------
    def upsert(self):
        d = self.bench("upsert")
        title = "Bulk upsert (issue 3)"
        if not d:
            return self.missing("upsert", title)
        self.w(f"## {title}", "",
               f"`users(id bigint primary key, name text, email text, created_at timestamptz)` "
               f"holding {d['rows'] // 2:,} rows; {d['rows']:,} input rows, half of them new "
               f"(row-by-row: the first {d['row_by_row']:,}); median of {d['reps']} run(s) per "
               "method, every result checked against the expected table contents. Rows per "
               "CPU-second count the client process and its backend.", "",
               f"Command: `{self.cmd('upsert')}`", "")
        wall, cpu = {}, {}
        rows = []
        methods = d.get("methods") or [{"key": k, "label": k, "side": "?"} for k in d["samples"]]
        for m in methods:
            ss = d["samples"][m["key"]]
            n = ss[0]["rows"]
            wt = med([x["wall"] for x in ss])
            ct = med([x["client_cpu"] + (x["backend_cpu"] or 0) for x in ss])
            wall[m["key"]], cpu[m["key"]] = n / wt, n / ct
        base = wall.get("staging")
        for m in methods:
            k = m["key"]
            rows.append((f"`{m['label']}`", m["side"], rate(wall[k]), f"{cpu[k]:,.0f}",
                         ratio(wall[k] / base) if base else None))
        self.w(table(("method", "side", "rows/s (wall)", "rows per CPU-s",
                      "vs staging baseline"), rows), "")
        pairs = [("jsonb", "staging", "upsert_jsonb_staging"),
                 ("jsonb", "recordset", "upsert_jsonb_recordset"),
                 ("from", "staging", "upsert_from_staging")]
        clients = [k for k in ("copy", "jsonarrays", "composite", "jsondicts") if k in wall]
        best_client = max(clients, key=lambda k: wall[k]) if clients else None
        if best_client:
            pairs += [(best_client, "values", "upsert_client_values"),
                      (best_client, "rowbyrow", "upsert_client_rowbyrow")]
        rrows = []
        label = {m["key"]: m["label"] for m in methods}
        for a, b, t in pairs:
            if a in wall and b in wall:
                rw, rc = wall[a] / wall[b], cpu[a] / cpu[b]
                tv = TARGETS[t][1]
                ok = rw >= tv
                rrows.append((f"{a} / {b}", ratio(rw), ratio(rc), f">= {tv:g}x", verdict(ok)))
                self.summary.append(("upsert", f"`{label[a]}` vs `{label[b]}`", ratio(rw),
                                     f">= {tv:g}x", verdict(ok)))
        self.w("Ratios (throughput of the first over the second; the CPU column is the same "
               "ratio on rows per CPU-second, a cross-check that load bursts cannot fake):", "",
               table(("ratio", "wall", "CPU", "target", "verdict"), rrows), "")
        if best_client:
            self.w(f"The client-side batchkit method compared with the peers is the fastest "
                   f"one in this run: `{label[best_client]}`.", "")
        if "jsonb" in wall:
            self.headline.append(f"upsert: `batch_upsert` from jsonb {rate(wall['jsonb'])}"
                                 + (f", {wall['jsonb'] / base:.2f}x the hand-tuned staging "
                                    "statement" if base else ""))
        # plot
        plt = self.plt
        fig, ax = plt.subplots(figsize=(8, 4.2))
        keys = [m["key"] for m in methods]
        ys = range(len(keys))
        peers = {"staging": "#5f5f5f", "recordset": "#5f5f5f", "values": "#aaaaaa",
                 "rowbyrow": "#aaaaaa"}
        bk = {"jsonb": "#c8553d", "from": "#c8553d"}     # server-side batchkit; client: lighter
        ax.barh(list(ys), [wall[k] / 1000 for k in keys],
                color=[peers.get(k) or bk.get(k) or "#f0a070" for k in keys])
        ax.set_yticks(list(ys))
        ax.set_yticklabels([f"{k} ({'peer' if k in peers else 'batchkit'}, "
                            f"{'server' if m['side'] == 'server' else 'client'})"
                            for k, m in zip(keys, methods)], fontsize=8)
        ax.invert_yaxis()
        for y, k in zip(ys, keys):
            ax.text(wall[k] / 1000, y, f" {wall[k] / 1000:,.0f}k", va="center", fontsize=8)
        ax.set_xlabel("thousand rows/s (wall time, median)")
        ax.set_title(f"Upsert of {d['rows']:,} rows (half new) by method (same run)\n"
                     "grey: peers, orange: batchkit (dark: input on the server, light: from a "
                     "client)", fontsize=9)
        if base:
            ax.axvline(base / 1000, color="#5f5f5f", ls=":", lw=1)
        ax.set_xlim(0, max(wall.values()) / 1000 * 1.18)
        self.w(f"![upsert throughput by method]({self.savefig(fig, 'upsert.png')})", "")

    # ---- issue 4: capture ----------------------------------------------------------------
    def capture(self):
        d = self.bench("capture")
        title = "Capture: writer overhead (issue 4)"
        if not d:
            return self.missing("capture", title)
        p = d["params"]
        self.w(f"## {title}", "",
               "One autocommit `INSERT INTO users .. SELECT` of N pre-generated realistic rows, "
               "and `pgbench -c 1` single-row inserts, with each capture method attached; the "
               f"ratio is to the same statement without capture in the same run (median of "
               f"{p['reps']} rep(s), methods in alternating order). batchkit's sink is paused.",
               "", f"Command: `{self.cmd('capture')}`", "")
        methods = [m for m in CAPTURE_LABEL if m in next(iter(d.get("bulk", {}).values()), {})]
        plot = {}
        tgt = TARGETS["capture_bulk"][1]
        for n, res in (d.get("bulk") or {}).items():
            n = int(n)
            base = med([x["seconds"] for x in res["none"]])
            cbase = med([x["backend_cpu_s"] for x in res["none"]])
            rows = []
            for m in methods:
                s = med([x["seconds"] for x in res[m]])
                c = med([x["backend_cpu_s"] for x in res[m]])
                wal = med([x["wal_bytes"] for x in res[m]])
                r = s / base
                plot.setdefault(m, {})[f"INSERT..SELECT\n{n:,} rows"] = r
                ok = (r <= tgt) if m == "batchkit" else None
                rows.append((CAPTURE_LABEL[m], secs(s), ratio(r) if m != "none" else "1.00x",
                             ratio(c / cbase) if cbase else None, f"{wal / 1e6:,.0f}",
                             f"<= {tgt:g}x" if m == "batchkit" else "", verdict(ok)
                             if m == "batchkit" else ""))
                if m == "batchkit":
                    self.summary.append(("capture", f"INSERT..SELECT {n:,} rows, overhead",
                                         ratio(r), f"<= {tgt:g}x", verdict(ok)))
            self.w(f"**{n:,} rows in one statement**", "",
                   table(("method", "time", "ratio to no capture", "backend CPU ratio",
                          "WAL MB", "target", "verdict"), rows), "")
            if n == max(int(k) for k in d["bulk"]) and "batchkit" in res:
                peers = [m for m in ("row_trg", "stmt_trg", "pgq") if m in res]
                self.headline.append(
                    f"capture: `INSERT..SELECT` of {n:,} rows costs "
                    f"{med([x['seconds'] for x in res['batchkit']]) / base:.2f}x with batchkit "
                    "vs " + ", ".join(
                        f"{med([x['seconds'] for x in res[m]]) / base:.2f}x ({CAPTURE_LABEL[m]})"
                        for m in peers))
        if d.get("oltp"):
            res = d["oltp"]
            base = med([x["seconds"] for x in res["none"]])
            tgt = TARGETS["capture_oltp"][1]
            rows = []
            for m in methods:
                s = med([x["seconds"] for x in res[m]])
                tps = med([x["tps"] for x in res[m]])
                r = s / base
                plot.setdefault(m, {})[f"pgbench\n{p['pgbench_tx']:,} single-row tx"] = r
                ok = (r <= tgt) if m == "batchkit" else None
                rows.append((CAPTURE_LABEL[m], secs(s), f"{tps:,.0f}",
                             ratio(r) if m != "none" else "1.00x",
                             f"<= {tgt:g}x" if m == "batchkit" else "",
                             verdict(ok) if m == "batchkit" else ""))
                if m == "batchkit":
                    self.summary.append(("capture", f"pgbench {p['pgbench_tx']:,} single-row "
                                         "inserts, overhead", ratio(r), f"<= {tgt:g}x",
                                         verdict(ok)))
            self.w(f"**pgbench: {p['pgbench_tx']:,} single-row autocommit inserts**", "",
                   table(("method", "time", "tps", "ratio to no capture", "target", "verdict"),
                         rows), "")
        if d.get("storage"):
            st = d["storage"]
            tgt = TARGETS["capture_storage"][1]
            r = st["final_bytes"] / st["empty_bytes"]
            ok = r <= tgt
            self.w(f"**Queue storage** after capturing and consuming {st['rows']:,} rows: "
                   f"{st['final_bytes']:,} bytes after `maintain_queue()` vs {st['empty_bytes']:,} "
                   f"right after `CREATE EXTENSION` = {r:.2f}x (target <= {tgt:g}x, issue: 10M "
                   f"rows; {verdict(ok)}); peak {st['peak_bytes'] / 1e6:,.0f} MB with one "
                   "statement's rows waiting.", "")
            self.summary.append(("capture", f"queue storage after {st['rows']:,} rows "
                                 "captured+consumed", ratio(r), f"<= {tgt:g}x", verdict(ok)))
        # plot: overhead ratio per scenario and method
        plt = self.plt
        scen = list(next(iter(plot.values())).keys()) if plot else []
        ms = [m for m in methods if m != "none"]
        if scen and ms:
            fig, ax = plt.subplots(figsize=(8, 4.2))
            width = 0.8 / len(ms)
            colors = {"batchkit": "#dd8452", "row_trg": "#8c8c8c", "stmt_trg": "#b5b5b5",
                      "pgq": "#5f5f5f"}
            for i, m in enumerate(ms):
                xs = [j + (i - (len(ms) - 1) / 2) * width for j in range(len(scen))]
                ys = [plot[m].get(s, 0) for s in scen]
                ax.bar(xs, ys, width, label=CAPTURE_LABEL[m], color=colors.get(m))
                for x, y in zip(xs, ys):
                    ax.text(x, y, f"{y:.2f}", ha="center", va="bottom", fontsize=7)
            ax.axhline(1.0, color="black", lw=0.8)
            ax.axhline(TARGETS["capture_bulk"][1], color="#c44e52", ls="--", lw=1,
                       label=f"target bulk <= {TARGETS['capture_bulk'][1]:g}x")
            ax.axhline(TARGETS["capture_oltp"][1], color="#c44e52", ls=":", lw=1,
                       label=f"target pgbench <= {TARGETS['capture_oltp'][1]:g}x")
            ax.set_xticks(range(len(scen)))
            ax.set_xticklabels(scen, fontsize=8)
            ax.set_ylabel("writer time / time without capture")
            ax.set_title("Writer overhead of capture vs the peers (same run)", fontsize=10)
            ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.16), ncol=3)
            self.w(f"![writer overhead of capture]({self.savefig(fig, 'capture_overhead.png')})",
                   "")

    # ---- issue 5: flush ------------------------------------------------------------------
    def flush(self):
        d = self.bench("flush")
        title = "Flush: delivery (issue 5)"
        if not d:
            return self.missing("flush", title)
        p = d["params"]
        self.w(f"## {title}", "",
               f"batchkit's flush worker against one Python relay per peer, into redis-server "
               f"(XADD) and the Kafka dev broker; every run is read back and verified. "
               f"The relays' clients: Redis {p.get('redis_client', 'redis-py')} "
               f"(resp = RESP written by hand, replies parsed by hiredis), Kafka "
               f"{p.get('kafka_client', 'kafka-python')} (confluent = confluent-kafka, "
               f"librdkafka). "
               f"Command: `{self.cmd('flush')}`", "")
        sinks = p["sinks"].split(",")
        n = p["rows"]
        if d.get("drain"):
            runs = d["drain"]
            rows = []
            for s in sinks:
                rates = {sy: med([r[f"{sy}/{s}"]["rows_per_s"] for r in runs
                                  if f"{sy}/{s}" in r]) for sy in FLUSH_LABEL}
                tgt = TARGETS[f"drain_{s}"][1]
                for sy, v in rates.items():
                    if v is None:
                        continue
                    ok = v >= tgt if sy == "batchkit" else None
                    rows.append((s, FLUSH_LABEL[sy], rate(v),
                                 ratio(rates["batchkit"] / v) if sy != "batchkit"
                                 and rates.get("batchkit") else "",
                                 f">= {tgt:,} rows/s" if sy == "batchkit" else "",
                                 verdict(ok) if sy == "batchkit" else ""))
                if rates.get("batchkit"):
                    self.summary.append(("flush", f"drain {n:,} queued rows into {s}",
                                         rate(rates["batchkit"]), f">= {tgt:,} rows/s",
                                         verdict(rates["batchkit"] >= tgt)))
                    peer = max((v for sy, v in rates.items()
                                if not sy.startswith("batchkit") and v), default=None)
                    self.headline.append(f"flush: drain of {n:,} queued rows into {s} at "
                                         f"{rate(rates['batchkit'])}" +
                                         (f", {rates['batchkit'] / peer:.2f}x the best peer"
                                          if peer else "") + f" (target {tgt:,})")
                    if rates.get("batchkit_noheaders"):
                        self.headline.append(
                            f"flush: the same drain into {s} without batchkit's three headers "
                            f"(`\"headers\": false`) at {rate(rates['batchkit_noheaders'])}, "
                            f"{rates['batchkit_noheaders'] / rates['batchkit']:.2f}x the default")
            self.w(f"**Drain** of {n:,} queued rows (time from `resume_sink()` to `flush()` "
                   "returning; peers: from the relay's start to its last commit):", "",
                   table(("sink", "system", "rows/s", "batchkit / this", "target", "verdict"),
                         rows), "")
            each = []
            for s in sinks:
                for sy in ("batchkit", "batchkit_noheaders"):
                    xs = [r[f"{sy}/{s}"]["rows_per_s"] for r in runs if f"{sy}/{s}" in r]
                    if len(xs) > 1:
                        each.append(f"{FLUSH_LABEL[sy]} into {s}: "
                                    + ", ".join(f"{x:,.0f}" for x in xs))
            if each:
                self.w("batchkit's drains were repeated (the peers' were not: their relays take "
                       "minutes); the table gives the median. Each drain, in order, rows/s: "
                       + "; ".join(each) + ".", "")
        if d.get("e2e"):
            runs = d["e2e"]
            rows = []
            for s in sinks:
                t = {sy: med([r[f"{sy}/{s}"]["seconds"] for r in runs if f"{sy}/{s}" in r])
                     for sy in FLUSH_LABEL}
                peers = [v for sy, v in t.items() if sy != "batchkit" and v is not None]
                best = min(peers) if peers else None
                tgt = TARGETS["e2e"][1]
                r = best / t["batchkit"] if best and t.get("batchkit") else None
                for sy, v in t.items():
                    if v is None:
                        continue
                    bk = sy == "batchkit"
                    rows.append((s, FLUSH_LABEL[sy], secs(v),
                                 ratio(v / t["batchkit"]) if t.get("batchkit") else None,
                                 f"best peer >= {tgt:g}x batchkit's" if bk else "",
                                 verdict(r >= tgt) if bk and r is not None else ""))
                if r is not None:
                    self.headline.append(f"flush: end to end {n:,} rows into {s} in "
                                         f"{secs(t['batchkit'])}, the best peer needs {r:.2f}x "
                                         f"as long (target {tgt:g}x)")
                    self.summary.append(("flush", f"end to end {n:,} rows into {s}, best peer "
                                         "time / batchkit time", ratio(r), f">= {tgt:g}x",
                                         verdict(r >= tgt)))
            self.w(f"**End to end**: {n:,} rows from the start of the `INSERT` to the last "
                   "acknowledgement:", "",
                   table(("sink", "system", "time", "time / batchkit's", "target", "verdict"),
                         rows), "")
        if d.get("steady"):
            self.steady(d, sinks)
        if d.get("memory"):
            m = d["memory"]
            rows = []
            tgt = TARGETS["memory_mb"][1]
            for s in sinks:
                if s not in m:
                    continue
                pk = m[s]["worker_peak"]
                mb = pk.get("RssAnon", 0) / 2**20
                rows.append((s, f"{m['backlog']:,}", f"{mb:.1f} MiB",
                             f"{pk.get('VmRSS', 0) / 2**20:.0f} MiB", rate(m[s]["rows_per_s"]),
                             f"< {tgt:g} MB", verdict(mb < tgt)))
                self.summary.append(("flush", f"worker private memory (RssAnon) draining a "
                                     f"{m['backlog']:,}-row backlog into {s}", f"{mb:.1f} MiB",
                                     f"< {tgt:g} MB", verdict(mb < tgt)))
            self.w("**Worker memory** while draining a backlog (peak of `/proc/<worker>/status`, "
                   "sampled every 50 ms; VmRSS also counts the shared buffers the worker "
                   "touched):", "",
                   table(("sink", "backlog rows", "peak RssAnon", "peak VmRSS", "drain rate",
                          "target", "verdict"), rows), "")
            if m["backlog"] != 5_000_000:
                self.w(f"(The issue's memory test uses a 5,000,000-row backlog; this profile "
                       f"drains {m['backlog']:,}.)", "")
        if d.get("sweep"):
            self.sweep(d["sweep"], sinks)

    def steady(self, d, sinks):
        p = d["params"]
        rows = []
        self.notes = []
        plt = self.plt
        fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4.2))
        colors = {"redis": "#c44e52", "kafka": "#4c72b0"}
        t50, t99 = TARGETS["steady_p50"][1], TARGETS["steady_p99"][1]
        for s in sinks:
            r = d["steady"].get(s)
            if not r:
                continue
            xs = r.get("samples_ms_sorted")
            if xs:
                q = {k: pctl(xs, k) for k in (50, 90, 99, 99.9)}
                q["max"] = xs[-1]
                nsamp = len(xs)
            else:
                q = {50: r["steady"]["p50_ms"], 90: r["steady"]["p90_ms"],
                     99: r["steady"]["p99_ms"], 99.9: None, "max": r["steady"]["max_ms"]}
                nsamp = r["steady"]["n"]
            ok = q[50] <= t50 and q[99] <= t99
            if xs and xs[0] <= 0:
                early = sum(1 for x in xs if x <= 0)
                self.notes.append(f"{s}: {early:,} rows ({early / nsamp:.1%}) were read back "
                                  "before the writer thread had stamped its `COMMIT` as "
                                  "returned (latency <= 0; drawn at the left edge)")
            rows.append((s, f"{nsamp:,}", f"{r['achieved_rows_per_s']:,.0f}",
                         f"{q[50]:.1f}", f"{q[90]:.1f}", f"{q[99]:.1f}",
                         "-" if q[99.9] is None else f"{q[99.9]:.1f}", f"{q['max']:.1f}",
                         f"{r['commit_to_sink']['p50_ms']:.1f} / {r['commit_to_sink']['p99_ms']:.1f}",
                         verdict(ok)))
            self.summary.append(("flush", f"steady {p['rate']:,} rows/s in 100-row tx into {s}: "
                                 "commit-to-ack latency p50 / p99",
                                 f"{q[50]:.1f} / {q[99]:.1f} ms", f"<= {t50:g} / {t99:g} ms",
                                 verdict(ok)))
            self.headline.append(f"flush: steady {p['rate']:,} rows/s into {s}, latency p50 "
                                 f"{q[50]:.1f} ms, p99 {q[99]:.1f} ms")
            if xs:
                import numpy as np
                arr = np.maximum(np.asarray(xs), 0.1)    # log axis: <= 0 at its left edge
                lo = arr.min()
                bins = np.logspace(np.log10(lo), np.log10(arr.max() * 1.01), 60)
                ax1.hist(arr, bins=bins, histtype="step", lw=1.4, color=colors.get(s),
                         label=f"{s} ({nsamp:,} rows)")
                ax2.plot(arr, np.arange(1, len(arr) + 1) / len(arr), color=colors.get(s),
                         lw=1.4, label=s)
        for ax in (ax1, ax2):
            ax.set_xscale("log")
            ax.axvline(t50, color="#555", ls="--", lw=0.8)
            ax.axvline(t99, color="#555", ls=":", lw=0.8)
            ax.set_xlabel("commit -> read back by an independent reader (ms, log)")
        ax1.set_ylabel("rows")
        ax1.set_title("histogram", fontsize=10)
        ax1.legend(fontsize=8)
        ax2.set_ylabel("fraction of rows")
        ax2.set_title(f"CDF (dashed: p50 target {t50:g} ms, dotted: p99 target {t99:g} ms)",
                      fontsize=9)
        ax2.set_ylim(0, 1.0)
        ax2.grid(alpha=0.3)
        fig.suptitle(f"Commit-to-acknowledgement latency, {p['rate']:,} rows/s in 100-row "
                     f"transactions, {p['seconds']:g} s", fontsize=10)
        self.w(f"**Steady state**: {p['writers']} writers commit {p['rate']:,} rows/s in 100-row "
               f"transactions for {p['seconds']:g} s; an independent reader (Redis `XREAD`, "
               "`kcat`) stamps every message; latency = arrival - the writer's `COMMIT` "
               f"returning, per row, after the warm-up (ms):", "",
               table(("sink", "rows", "achieved rows/s", "p50", "p90", "p99", "p99.9", "max",
                      "commit -> sink p50 / p99", "verdict (p50 <= %g, p99 <= %g)" % (t50, t99)),
                     rows), "")
        if self.notes:
            self.w("Note: " + "; ".join(self.notes) + ".", "")
        self.w(f"![commit-to-ack latency]({self.savefig(fig, 'latency.png')})", "")

    def sweep(self, sw, sinks):
        default = sw.get("defaults", {}).get("batch_size")
        self.w("### Throughput vs batch size", "",
               f"A sweep: {sw['rows']:,} queued rows drained per point (batchkit only, "
               "`batch_size` set with the sink's options; both sinks loaded by the same "
               "`INSERT`; one pass). Two rates per point: from `resume_sink()` to `flush()` "
               "returning (as the drain above; includes a fixed start-up and end cost that "
               "weighs on a short drain), and the delivery rate between 10% and 90% of the rows "
               "(`sink_stats.rows_sent` sampled every 50 ms): the batching curve proper. The "
               "worker's CPU per row is the cost of a batch spread over its rows, and much less "
               "sensitive to other load on the machine than the rates. Default `batch_size`: "
               f"{default if default is not None else '?'} (read from `batchkit._sink_config`; "
               f"`max_batch_bytes` {sw.get('defaults', {}).get('max_batch_bytes', '?')}).", "")
        plt = self.plt
        fig, (ax, ax2) = plt.subplots(1, 2, figsize=(10, 4.4))
        colors = {"redis": "#c44e52", "kafka": "#4c72b0"}
        concl = []
        for s in sinks:
            pts = sorted((x for x in sw["points"] if x["sink"] == s), key=lambda x: x["batch_size"])
            if not pts:
                continue
            rows = []
            for x in pts:
                st = x.get("sink_stats") or {}
                cpu = x.get("worker_cpu_s")
                rows.append((f"{x['batch_size']:,}" + (" (default)" if x["batch_size"] == default
                                                       else ""),
                             rate(x["rows_per_s"]), rate(x.get("rows_per_s_10_90")),
                             "-" if cpu is None else f"{cpu:.2f} s",
                             "-" if not cpu else f"{cpu / sw['rows'] * 1e6:.1f}",
                             "-" if st.get("avg_batch_size") is None
                             else f"{st['avg_batch_size']:,.0f}"))
            self.w(f"**{s}**", "", table(("batch_size", "rows/s (resume to flush)",
                                         "rows/s (10-90%)", "worker CPU", "worker µs/row",
                                         "avg batch (sink_stats)"), rows), "")
            key = "rows_per_s_10_90" if all(x.get("rows_per_s_10_90") for x in pts) \
                else "rows_per_s"
            xs = [x["batch_size"] for x in pts]
            ys = [x[key] for x in pts]
            ax.plot(xs, [y / 1000 for y in ys], "o-", color=colors.get(s),
                    label=f"{s}: 10-90% delivery rate" if key != "rows_per_s" else s)
            ax.plot(xs, [x["rows_per_s"] / 1000 for x in pts], "o--", color=colors.get(s),
                    alpha=0.45, lw=1, ms=3, label=f"{s}: resume to flush")
            cpus = [x["worker_cpu_s"] / sw["rows"] * 1e6 if x.get("worker_cpu_s") else None
                    for x in pts]
            ax2.plot([x for x, c in zip(xs, cpus) if c], [c for c in cpus if c], "o-",
                     color=colors.get(s), label=s)
            concl.append(self.flatten(s, xs, ys, cpus, default))
        for a in (ax, ax2):
            if default is not None:
                a.axvline(default, color="#555", ls=":", lw=1)
            a.set_xscale("log")
            a.set_xlabel("batch_size (rows, log)")
            a.grid(alpha=0.3)
            a.legend(fontsize=8)
        if default is not None:
            ax.text(default, 0, f" default {default:,}", fontsize=8, va="bottom")
        ax.set_ylabel("thousand rows/s")
        ax.set_ylim(bottom=0)
        ax.set_title(f"Drain throughput ({sw['rows']:,} rows per point)", fontsize=10)
        ax2.set_yscale("log")
        ax2.set_ylabel("flush worker CPU µs per row (log)")
        ax2.set_title("Worker CPU per row", fontsize=10)
        firsts = sorted(x["first_sent_s"] for x in sw["points"] if x.get("first_sent_s") is not None)
        if firsts:
            slow = sum(1 for f in firsts if f >= 0.5)
            self.w(f"Start-up: the first batch was acknowledged {firsts[0]:.2f}–{firsts[-1]:.2f} s "
                   f"(median {statistics.median(firsts):.2f} s) after the call to `resume_sink()`; "
                   f"{slow} of {len(firsts)} drains waited 0.5 s or more before their first "
                   "batch — a fixed cost that the resume-to-flush rate of a short drain "
                   "includes and the 10–90% rate does not.", "")
        self.w(f"![throughput vs batch size]({self.savefig(fig, 'batch_size.png')})", "")
        self.w("**Where it flattens** (computed from the points above; within 10% of the best "
               "counts as flat; one pass per point, so the rates scatter by about "
               "that — the CPU per row is the steadier signal):", "",
               *[f"- {c}" for c in concl], "")
        self.headline.extend(f"batch size: {c}" for c in concl)

    @staticmethod
    def flatten(s, xs, ys, cpus, default):
        """One sentence: where the rate and the CPU per row stop improving, and the default."""
        best = max(ys)
        bx = xs[ys.index(best)]
        # the plateau: the smallest batch_size from which every larger one in the sweep
        # delivers within 10% of the best rate
        flat = next((x for i, x in enumerate(xs) if all(y >= 0.9 * best for y in ys[i:])), None)
        at_def = next((y for x, y in zip(xs, ys) if x == default), None)
        txt = f"{s}: best {best:,.0f} rows/s at batch_size {bx:,}"
        if flat is None:
            txt += (f"; no plateau: the rate falls again after batch_size {bx:,} "
                    f"(largest {xs[-1]:,}: {ys[-1] / best:.0%} of the best)")
        elif flat == xs[-1] and len(xs) > 1:
            txt += (f"; the rate has not flattened within the sweep (still rising at its "
                    f"largest batch_size; {xs[-2]:,} reaches {ys[-2] / best:.0%})")
        else:
            txt += (f"; the rate flattens at batch_size {flat:,} (every larger size within 10% "
                    f"of the best)")
        if default is not None and at_def is not None:
            txt += f"; the default {default:,} reaches {at_def / best:.0%} of the best rate"
        cs = [(x, c) for x, c in zip(xs, cpus) if c]
        if cs:
            cmin = min(c for _, c in cs)
            cflat = next((x for i, (x, _) in enumerate(cs)
                          if all(c <= 1.1 * cmin for _, c in cs[i:])), None)
            cdef = next((c for x, c in cs if x == default), None)
            if cflat is None:
                cx = next(x for x, c in cs if c == cmin)
                txt += (f". Worker CPU per row is lowest at batch_size {cx:,} ({cmin:.1f} µs) "
                        f"and more than 10% higher again at {cs[-1][0]:,} ({cs[-1][1]:.1f} µs)")
                if default is not None and cdef is not None:
                    txt += f"; the default costs {cdef:.1f} µs/row"
            else:
                txt += (f". Worker CPU per row falls from {cs[0][1]:.1f} µs at batch_size "
                        f"{cs[0][0]:,} to {cmin:.1f} µs and stays within 10% of that from "
                        f"batch_size {cflat:,} on")
            if cflat is not None and default is not None and cdef is not None:
                cx = next(x for x, c in cs if c == cmin)
                if default >= cflat:
                    txt += ": the default is on that plateau, so larger batches save no worker CPU"
                elif cx <= default:
                    # the cheapest point is a smaller batch: the CPU per row is flat but noisy
                    # around the default, not still falling
                    txt += (f": the default costs {cdef:.1f} µs/row, {cdef / cmin - 1:.0%} above "
                            f"the cheapest point (batch_size {cx:,}), which is a smaller batch: "
                            "the cost per row has stopped falling; the differences are noise")
                else:
                    txt += (f": the default is below it ({cdef:.1f} µs/row): larger batches "
                            "would still save worker CPU")
        return txt + "."

    # ---- issue 6: metrics ----------------------------------------------------------------
    def metrics(self):
        d = self.bench("metrics")
        title = "Metrics overhead (issue 6)"
        if not d:
            return self.missing("metrics", title)
        tgt = TARGETS["metrics_change"][1]
        rows = []
        noise = None
        ab_summary = ab_headline = None
        if d.get("median_quiet"):
            ch = d["ratio_of_medians"] - 1
            pr = d.get("pair_ratios") or []
            # pairs that moved by more than the target in BOTH directions: the machine's
            # noise is larger than the effect to be judged
            if pr and min(pr) < 1 - tgt and max(pr) > 1 + tgt:
                noise = (min(pr) - 1, max(pr) - 1)
                v = INCONCLUSIVE
            else:
                v = verdict(abs(ch) < tgt)
            rows.append((f"A/B drains of {d['rows']:,} rows into Redis, {d['reps']} pair(s)",
                         rate(d["median_quiet"]), rate(d["median_readers"]), f"{ch:+.2%}",
                         ", ".join(f"{x - 1:+.1%}" for x in pr) or None, v))
            ab_headline = (
                f"metrics: reading them {d['hz']:g} times a second changed drain throughput by "
                f"{ch:+.1%} (target: less than {tgt:.0%})" +
                (f"; inconclusive: the A/B pairs scattered from {noise[0]:+.0%} to "
                 f"{noise[1]:+.0%}" if noise else ""))
            ab_summary = ("metrics", f"drain with a {d['hz']:g} Hz reader of sink_stats "
                          "+ metrics() vs without (A/B drains)", f"{ch:+.2%}",
                          f"change < {tgt:.0%}", v)
        il = d.get("interleaved")
        dose = None
        if il and "at_hz" in il:
            # blocks of randomly ordered slices (quiet, quiet, hz, high rates) in long
            # drains; the effect at hz from the slope of ln(throughput) against reads/s
            lo, hi = il["at_hz_ci"]
            dose = il
            v = verdict(-tgt < lo and hi < tgt)
            modes = il["modes"]
            q = modes.get("0.0") or modes.get("0")
            rates = [h for h in il["rates"] if h > 0]
            desc = (f"{il['drains']} drain(s) of {il['rows_per_drain']:,} rows, "
                    f"{il['blocks']} blocks of {il['slice_s']:g} s slices (quiet, quiet, "
                    + ", ".join(f"{h:g} Hz" for h in rates) + ") in random order")
            hzk = next((k for k in modes if float(k) == d["hz"]), None)
            rows.append((desc + f": change at {d['hz']:g} Hz from the slope over all rates",
                         rate(q["median_rows_per_s"]) if q else "-",
                         rate(modes[hzk]["median_rows_per_s"]) if hzk else "-",
                         f"{il['at_hz']:+.2%} (95% CI {lo:+.2%} .. {hi:+.2%})",
                         f"direct: {il['direct']:+.2%} ({il['direct_ci'][0]:+.1%} .. "
                         f"{il['direct_ci'][1]:+.1%})", v))
            self.headline.append(
                f"metrics: reading them {d['hz']:g} times a second changes drain throughput by "
                f"{il['at_hz']:+.2%} (95% CI {lo:+.2%} .. {hi:+.2%}; target: less than "
                f"{tgt:.0%})")
            self.summary.append(("metrics", f"change of drain throughput at {d['hz']:g} reads/s "
                                 "of sink_stats + metrics() (slope over randomized reader-rate "
                                 "slices, 95% CI)", f"{il['at_hz']:+.2%} ({lo:+.2%} .. {hi:+.2%})",
                                 f"change < {tgt:.0%}", v))
        elif il and il.get("median_quiet"):
            ch = il["median_reading"] / il["median_quiet"] - 1
            rows.append((f"one drain of {d['interleaved_rows']:,} rows, reader {d['slice_s']:g} s "
                         "on / off", rate(il["median_quiet"]), rate(il["median_reading"]),
                         f"{ch:+.2%}", "-" if il["median_paired_ratio"] is None
                         else f"{il['median_paired_ratio'] - 1:+.2%}", verdict(abs(ch) < tgt)))
        if ab_summary and dose is None:
            # without the randomized-rate drains, the A/B drains are the judged figure
            self.headline.append(ab_headline)
            self.summary.append(ab_summary)
        self.w(f"## {title}", "",
               f"Drain throughput with and without a process reading `batchkit.sink_stats` and "
               f"`batchkit.metrics()` {d['hz']:g} times a second. Command: "
               f"`{self.cmd('metrics')}`", "",
               table(("measurement", "quiet", f"reading {d['hz']:g}/s", "change",
                      "other estimate (A/B: per pair)", f"target: < {tgt:.0%}"), rows), "")
        if dose is not None:
            self.w("How the main figure is measured: long drains cut into blocks of "
                   f"{dose['slice_s']:g} s slices, one per reader rate (two quiet ones, "
                   + ", ".join(f"{h:g}" for h in dose["rates"] if h > 0) +
                   " reads/s) in a random order per block, so nothing periodic lines up with "
                   "one mode; rows counted from Redis. Per block, ln(throughput / quiet) of each "
                   "reading slice is fitted against the reads per second actually done (a line "
                   "through the origin): the high-rate slices make the cost large enough to "
                   f"measure and the slope scales it to {d['hz']:g} reads/s "
                   f"({100 * dose['slope_per_hz']:+.4f}% per read/s). 95% intervals from a "
                   "bootstrap over blocks. The direct comparison of the "
                   f"{d['hz']:g} Hz slices is shown beside it; its interval is wide because "
                   "one-second slices vary by ~10% on this machine" +
                   (f" — the A/A comparison of the two quiet slices of each block gives "
                    f"{dose['aa']:+.2%} ({dose['aa_ci'][0]:+.1%} .. {dose['aa_ci'][1]:+.1%}) "
                    "for identical conditions" if "aa" in dose else "") + ".", "",
                   table(("reader rate asked", "slices", "reads/s done", "median rows/s"),
                         [(f"{float(h):g} Hz", m["slices"], f"{m['reads_per_s']:.1f}",
                           rate(m["median_rows_per_s"])) for h, m in dose["modes"].items()]), "")
        if noise:
            self.w(f"**Inconclusive:** the A/B pairs disagree in sign, from {noise[0]:+.1%} to "
                   f"{noise[1]:+.1%}: the drains' run-to-run noise on this machine is far larger "
                   f"than the {tgt:.0%} effect to be measured. More pairs (`--reps`) or a quiet "
                   "machine are needed; the read cost below bounds the effect independently of "
                   "timing noise.", "")
        rc = d.get("read_cost")
        if rc:
            self.w(f"One read of both costs {rc['backend_cpu_s'] * 1000:.2f} ms of backend CPU "
                   f"+ {rc['client_cpu_s'] * 1000:.2f} ms client CPU (measured with "
                   f"{d['rows']:,} rows queued, from /proc): {rc['core_share_at_hz']:.2%} of one "
                   f"core at {d['hz']:g} Hz — the most the reader can take from the drain.", "")

    # ---- issue 18: capture on a busy OLTP database ------------------------------------------
    def oltp(self):
        d = self.bench("oltp")
        title = "Capture under OLTP load: pgbench TPC-B (issue 18)"
        if not d:
            return self.missing("oltp", title)
        p = d["params"]
        self.w(f"## {title}", "",
               f"`pgbench -n -c {p['clients']} -j {p['threads']} -T {p['seconds']}` (TPC-B) at "
               f"scale {p['scale']} with `pgbench_accounts`, `_tellers`, `_branches` and "
               "`_history` captured (batchkit: two Redis sinks; PgQ: `logutriga` row triggers; "
               "outbox: PL/pgSQL statement triggers), fresh `pgbench -i` and `CHECKPOINT` "
               f"before every run, median of {p['reps']} run(s) in alternating order; ratios "
               "to no capture in the same run. The load column is the 1-minute load average "
               "before the runs (2 cores). CPU per tx counts every process of the cluster, "
               "pgbench and redis-server: other load changes it far less than tps, and its "
               "ratio is the tps ratio of a dedicated CPU-bound machine.", "", f"Command: `{self.cmd('oltp')}`", "")
        res = d["runs"]
        base = med([x["tps"] for x in res["plain"]])
        pgq = med([x["tps"] for x in res["pgq"]]) if "pgq" in res else None
        label = {"plain": "no capture (baseline)", "pgq": "PgQ logutriga (no consumer)",
                 "outbox": "PL/pgSQL statement trigger -> outbox (no relay)",
                 "bk_paused": "batchkit, sinks paused", "bk_delivering":
                 "batchkit, sinks delivering to Redis"}
        cbase = med([x.get("cpu_us_per_tx") for x in res["plain"]])
        rows = []
        for m in p["methods"]:
            xs = [x["tps"] for x in res[m]]
            cpu = med([x.get("cpu_us_per_tx") for x in res[m]])
            t = med(xs)
            loads = [x["loadavg_before"][0] for x in res[m]]
            tgt, ok = "", None
            if m == "bk_paused":
                tgt = f">= {TARGETS['oltp_paused'][1]:g}x"
                ok = t / base >= TARGETS["oltp_paused"][1]
                self.summary.append(("oltp", "pgbench TPC-B, sinks paused, vs no capture",
                                     ratio(t / base), tgt, verdict(ok)))
                if pgq:
                    okp = t / pgq >= TARGETS["oltp_paused_pgq"][1]
                    self.summary.append(("oltp", "pgbench TPC-B, sinks paused, vs PgQ",
                                         ratio(t / pgq),
                                         f">= {TARGETS['oltp_paused_pgq'][1]:g}x", verdict(okp)))
                self.headline.append(f"OLTP capture: pgbench TPC-B with 4 tables captured at "
                                     f"{t / base:.2f}x the tps without capture (sinks paused)")
            elif m == "bk_delivering":
                tgt = f">= {TARGETS['oltp_delivering'][1]:g}x"
                ok = t / base >= TARGETS["oltp_delivering"][1]
                self.summary.append(("oltp", "pgbench TPC-B, sinks delivering, vs no capture",
                                     ratio(t / base), tgt, verdict(ok)))
            rows.append((label.get(m, m), f"{t:,.0f}", f"{min(xs):,.0f}-{max(xs):,.0f}",
                         "1.00x" if m == "plain" else ratio(t / base),
                         ratio(t / pgq) if pgq and m.startswith("bk_") else "",
                         f"{cpu:,.0f} µs = {cbase / cpu:.2f}x" if cpu and cbase else "-",
                         f"{med([x['wal_per_tx'] for x in res[m]]):,.0f} B",
                         f"{min(loads):.1f}-{max(loads):.1f}", tgt, verdict(ok)))
        self.w(table(("method", "tps (median)", "spread", "ratio to no capture", "ratio to PgQ",
                      "CPU per tx (ratio to no capture)", "WAL per tx", "load", "target", "verdict"), rows), "")
        if "bk_delivering" in res:
            dl = res["bk_delivering"]
            self.w(f"Delivering: the flush worker used {med([x['flush_worker_cpu_s'] or 0 for x in dl]):.2f} s "
                   f"of CPU per run ({med([x.get('flush_worker_cpu_us_per_row') or 0 for x in dl]):.1f} "
                   f"µs per delivered row), redis-server {med([x['redis_cpu_s'] or 0 for x in dl]):.2f} s; "
                   f"after each run every touched account's hash in Redis was checked against the "
                   f"table ({med([x.get('verified_accounts') or 0 for x in dl]):,.0f} accounts).", "")

    # ---- summary, reproduction, output ---------------------------------------------------
    def write(self, readme=None):
        self.header()
        body_start = len(self.md)
        self.upsert()
        self.capture()
        self.oltp()
        self.flush()
        self.metrics()
        body = self.md[body_start:]
        self.md = self.md[:body_start]
        met = sum(1 for r in self.summary if r[4] == "**met**")
        judged = sum(1 for r in self.summary if r[4] in ("**met**", "**not met**"))
        inc = sum(1 for r in self.summary if r[4] == INCONCLUSIVE)
        self.w("## Targets at a glance", "",
               f"{met} of {judged} targets met in this run" +
               (f"; {inc} inconclusive (noise larger than the effect)" if inc else "") + ".", "",
               table(("area", "measurement", "batchkit", "target", "verdict"), self.summary), "")
        self.md.extend(body)
        self.w("## Reproduce", "",
               "Everything: `make bench` (it builds and installs batchkit into the PostgreSQL "
               "of `PG_CONFIG`, then runs `bench/run_all.py`). One benchmark: the command below "
               "with `BK_PGBIN` set to that PostgreSQL's `bin/`. The report alone, from the "
               "stored JSON: `/usr/bin/python3 bench/report.py`.", "")
        rows = [(n, f"`{b['command']}`", f"{b['seconds'] / 60:.1f} min",
                 "ok" if b["ok"] else f"failed (exit {b['exit']})", f"[{b['log']}](report-data/"
                 f"{b['log']})") for n, b in self.run.get("benchmarks", {}).items()]
        self.w(table(("benchmark", "command", "took", "status", "log"), rows), "")
        with open(os.path.join(self.dir, "REPORT.md"), "w") as f:
            f.write("\n".join(self.md).rstrip() + "\n")
        if readme:
            self.update_readme(readme)
        return os.path.join(self.dir, "REPORT.md")

    def update_readme(self, path):
        start, end = "<!-- bench:headline:start -->", "<!-- bench:headline:end -->"
        with open(path) as f:
            text = f.read()
        if start not in text or end not in text:
            print(f"report.py: no {start} block in {path}; README not updated", file=sys.stderr)
            return
        m = self.run.get("machine", {})
        loads = [s["load1"] for s in self.run.get("loadavg_samples", [])]
        block = [start,
                 f"Headline figures of the last `make bench` (profile {self.run.get('profile')}, "
                 f"{self.run.get('started_at', '?')[:10]}, commit "
                 f"`{m.get('git_commit', '?')[:10]}`, {m.get('cpus')} cores, median load "
                 f"average {statistics.median(loads) if loads else 0:.1f}; generated by "
                 "`bench/report.py`):", ""]
        block += [f"- {h}" for h in self.headline]
        met = sum(1 for r in self.summary if r[4] == "**met**")
        judged = sum(1 for r in self.summary if r[4] in ("**met**", "**not met**"))
        inc = sum(1 for r in self.summary if r[4] == INCONCLUSIVE)
        block += ["", f"Targets met: {met} of {judged}" + (f", {inc} inconclusive" if inc else "")
                  + " (see the table in [bench/REPORT.md](bench/REPORT.md)).", end]
        pre, rest = text.split(start, 1)
        _, post = rest.split(end, 1)
        with open(path, "w") as f:
            f.write(pre + "\n".join(block) + post)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dir", default=HERE,
                    help="directory with report-data/; REPORT.md and plots/ are written there")
    ap.add_argument("--readme", default=None,
                    help="README to update between the bench:headline markers (default: the "
                         "repository's README.md when --dir is bench/)")
    args = ap.parse_args()
    out = os.path.abspath(args.dir)
    readme = args.readme or (os.path.join(ROOT, "README.md") if out == HERE else None)
    if not os.path.isdir(os.path.join(out, "report-data")):
        raise SystemExit(f"no {out}/report-data: run `make bench` first")
    rep = Report(out)
    path = rep.write(readme)
    print(f"# wrote {os.path.relpath(path, ROOT)} and {len(rep.plot_files)} plot(s) in "
          f"{os.path.relpath(rep.plots, ROOT)}/: {', '.join(rep.plot_files)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
