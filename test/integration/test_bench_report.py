"""bench/report.py on a small synthetic run (no services): the report computes its
figures from the JSON it is given, judges the targets and draws every plot."""
import json
import os
import subprocess
import sys

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
REPORT = os.path.join(ROOT, "bench", "report.py")


def fixture(d):
    data = os.path.join(d, "report-data")
    os.makedirs(data)

    def dump(name, obj):
        with open(os.path.join(data, name + ".json"), "w") as f:
            json.dump(obj, f)

    cmd = {n: {"command": f"BK_PGBIN=$BK_PGBIN /usr/bin/python3 bench/{n}/run.py --x",
               "exit": 0, "ok": True, "seconds": 60.0, "json": f"{n}.json", "log": f"{n}.log"}
           for n in ("upsert", "capture", "oltp", "flush", "metrics")}
    dump("run", {"profile": "report", "started_at": "2026-01-01T00:00:00Z",
                 "finished_at": "2026-01-01T00:04:00Z", "benchmarks": cmd,
                 "machine": {"cpus": 2, "cpu_model": "Test CPU", "ram_bytes": 2**33,
                             "git_commit": "abc123", "git_branch": "t", "git_dirty": []},
                 "loadavg_samples": [{"t": i, "load1": 1.0 + i, "load5": 1, "load15": 1,
                                      "bench": "flush"} for i in range(5)]})
    # staging 1M rows in 4 s (250k/s), jsonb in 2 s (500k/s): ratio 2.00x
    up = {"rows": 1_000_000, "row_by_row": 1000, "reps": 1, "methods": [
        {"key": "staging", "label": "staging", "side": "server"},
        {"key": "recordset", "label": "recordset", "side": "server"},
        {"key": "jsonb", "label": "jsonb", "side": "server"},
        {"key": "values", "label": "values", "side": "peer"},
        {"key": "rowbyrow", "label": "rowbyrow", "side": "peer"},
        {"key": "copy", "label": "copy", "side": "client"}]}
    walls = {"staging": 4.0, "recordset": 3.0, "jsonb": 2.0, "values": 5.0, "rowbyrow": 0.1,
             "copy": 2.5}
    up["samples"] = {k: [{"wall": w, "client_cpu": w / 2, "backend_cpu": w / 2, "load": 1.0,
                          "rows": 1000 if k == "rowbyrow" else 1_000_000}] for k, w in walls.items()}
    dump("upsert", up)
    bulk = {m: [{"seconds": s, "wal_bytes": 10**8, "backend_cpu_s": s, "loadavg1": 1}]
            for m, s in (("none", 2.0), ("batchkit", 2.6), ("row_trg", 9.0), ("stmt_trg", 6.0),
                         ("pgq", 17.0))}
    oltp = {m: [{"seconds": s, "tps": 10000 / s, "latency_ms": 0.1}]
            for m, s in (("none", 10.0), ("batchkit", 12.0), ("row_trg", 13.0),
                         ("stmt_trg", 14.0), ("pgq", 15.0))}
    dump("capture", {"params": {"reps": 1, "pgbench_tx": 10000},
                     "machine": {"postgres": "PostgreSQL 15.99 on x86_64"},
                     "bulk": {"1000000": bulk}, "oltp": oltp,
                     "storage": {"rows": 2_000_000, "final_bytes": 300_000,
                                 "empty_bytes": 100_000, "peak_bytes": 10**9}})
    # pgbench TPC-B: paused 2850/3000 = 0.95x (met), 2850/2400 = 1.19x PgQ (not met),
    # delivering 2700/3000 = 0.90x (met)
    tps = {"plain": 3000.0, "pgq": 2400.0, "outbox": 2000.0, "bk_paused": 2850.0,
           "bk_delivering": 2700.0}
    dump("oltp", {"params": {"scale": 10, "clients": 8, "threads": 2, "seconds": 20, "reps": 1,
                             "methods": list(tps)},
                  "runs": {m: [{"tps": t, "wal_per_tx": 4000.0, "cpu_us_per_tx": 1.6e6 / t,
                                "loadavg_before": [1.5, 1, 1],
                                "flush_worker_cpu_s": 2.0, "flush_worker_cpu_us_per_row": 8.0,
                                "redis_cpu_s": 1.0, "verified_accounts": 40000}]
                           for m, t in tps.items()}})
    lat = sorted([1.0 + (i % 50) for i in range(1000)])
    steady = {s: {"achieved_rows_per_s": 20000.0, "steady": {"p50_ms": 0, "p90_ms": 0,
                                                            "p99_ms": 0, "max_ms": 0, "n": 1000},
                  "commit_to_sink": {"p50_ms": 1.0, "p99_ms": 2.0}, "samples_ms_sorted": lat}
              for s in ("redis", "kafka")}
    drain = {f"{sy}/{s}": {"rows_per_s": r} for s in ("redis", "kafka")
             for sy, r in (("batchkit", 350_000.0), ("outbox", 100_000.0), ("pgq", 140_000.0))}
    e2e = {f"{sy}/{s}": {"seconds": t} for s in ("redis", "kafka")
           for sy, t in (("batchkit", 4.0), ("outbox", 14.0), ("pgq", 16.0))}
    points = [{"sink": s, "batch_size": b, "rows_per_s": r, "rows_per_s_10_90": r * 1.5,
               "worker_cpu_s": 1.0, "sink_stats": {"avg_batch_size": b}}
              for s in ("redis", "kafka")
              for b, r in ((100, 20_000.0), (1000, 90_000.0), (10000, 100_000.0))]
    dump("flush", {"params": {"sinks": "redis,kafka", "rows": 1_000_000, "rate": 20000,
                              "seconds": 20, "writers": 4},
                   "drain": [drain], "e2e": [e2e], "steady": steady,
                   "memory": {"backlog": 5_000_000, **{s: {
                       "worker_peak": {"RssAnon": 30 * 2**20, "VmRSS": 180 * 2**20},
                       "rows_per_s": 60000.0} for s in ("redis", "kafka")}},
                   "sweep": {"rows": 300_000, "defaults": {"batch_size": 10000,
                                                           "max_batch_bytes": 16777216},
                             "points": points}})
    dump("metrics", {"rows": 1_000_000, "reps": 3, "hz": 10.0, "median_quiet": 100_000.0,
                     "median_readers": 99_000.0, "ratio_of_medians": 0.99,
                     "median_pair_ratio": 0.985, "pair_ratios": [0.98, 0.99],
                     "interleaved_rows": 0, "slice_s": 2.0})


def test_report_from_fixture(tmp_path):
    fixture(str(tmp_path))
    p = subprocess.run([sys.executable, REPORT, "--dir", str(tmp_path)], capture_output=True,
                       text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    md = open(tmp_path / "REPORT.md").read()
    # ratios computed from the fixture, not typed in
    assert "| jsonb / staging | 2.00x |" in md
    assert "ratio to no capture" in md and "1.30x" in md            # 2.6 s / 2.0 s
    assert "3.50x" in md                                            # e2e: 14 s / 4 s
    assert "Test CPU, 2 cores" in md and "PostgreSQL 15.99" in md
    assert "median 3.00" in md                                      # load samples 1..5
    assert "**these figures are noisy**" in md                      # median 3 > 2 cores
    # the targets: drain into Kafka (350k < 400k) is not met, into Redis it is
    assert "| flush | drain 1,000,000 queued rows into redis | 350,000 rows/s | >= 300,000 " \
           "rows/s | **met** |" in md
    assert "| flush | drain 1,000,000 queued rows into kafka | 350,000 rows/s | >= 400,000 " \
           "rows/s | **not met** |" in md
    # the sweep flattens at 1000 (135k >= 90% of 150k) and the default 10000 is past it
    assert "the rate flattens at batch_size 1,000" in md
    assert "the default 10,000 reaches 100% of the best rate" in md
    # the same worker CPU at every size: flat from the smallest one
    assert "stays within 10% of that from batch_size 100 on: the default is on that plateau" in md
    assert "-1.00%" in md                                           # metrics change
    assert "| oltp | pgbench TPC-B, sinks paused, vs no capture | 0.95x | >= 0.92x | **met** |" in md
    assert "| oltp | pgbench TPC-B, sinks paused, vs PgQ | 1.19x | >= 1.2x | **not met** |" in md
    assert "| oltp | pgbench TPC-B, sinks delivering, vs no capture | 0.90x | >= 0.85x | " \
        "**met** |" in md
    assert "| batchkit, sinks paused | 2,850 |" in md and "561 µs = 0.95x" in md
    assert "13 of 19 targets met in this run." in md
    for png in ("upsert.png", "capture_overhead.png", "latency.png", "batch_size.png"):
        f = tmp_path / "plots" / png
        assert f.exists() and f.stat().st_size > 5000, png
        assert f"(plots/{png})" in md


def test_report_marks_missing_benchmark(tmp_path):
    fixture(str(tmp_path))
    os.remove(tmp_path / "report-data" / "metrics.json")
    run = json.load(open(tmp_path / "report-data" / "run.json"))
    run["benchmarks"]["metrics"].update(exit=1, ok=False, json=None)
    json.dump(run, open(tmp_path / "report-data" / "run.json", "w"))
    p = subprocess.run([sys.executable, REPORT, "--dir", str(tmp_path)], capture_output=True,
                       text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    md = open(tmp_path / "REPORT.md").read()
    assert "*No data: the benchmark failed (exit 1); see report-data/metrics.log.*" in md


def test_report_noise_larger_than_the_effect_is_inconclusive(tmp_path):
    fixture(str(tmp_path))
    path = tmp_path / "report-data" / "metrics.json"
    m = json.load(open(path))
    m["pair_ratios"] = [0.90, 1.25]         # the A/B pairs disagree in sign, beyond 2%
    json.dump(m, open(path, "w"))
    p = subprocess.run([sys.executable, REPORT, "--dir", str(tmp_path)], capture_output=True,
                       text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    md = open(tmp_path / "REPORT.md").read()
    assert "| -1.00% | change < 2% | **inconclusive** |" in md
    assert "12 of 18 targets met in this run; 1 inconclusive" in md


def test_report_sweep_without_plateau(tmp_path):
    """Rate and CPU per row best in the middle of the sweep: no plateau is claimed."""
    fixture(str(tmp_path))
    path = tmp_path / "report-data" / "flush.json"
    f = json.load(open(path))
    for p in f["sweep"]["points"]:
        p["rows_per_s_10_90"] = {100: 50_000.0, 1000: 150_000.0, 10000: 60_000.0}[p["batch_size"]]
        p["worker_cpu_s"] = {100: 3.0, 1000: 1.0, 10000: 2.0}[p["batch_size"]]
    json.dump(f, open(path, "w"))
    p = subprocess.run([sys.executable, REPORT, "--dir", str(tmp_path)], capture_output=True,
                       text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    md = open(tmp_path / "REPORT.md").read()
    assert "no plateau: the rate falls again after batch_size 1,000" in md
    assert "Worker CPU per row is lowest at batch_size 1,000" in md


def dose_result(at_hz, ci):
    return {"blocks": 12, "direct": at_hz, "direct_ci": [at_hz - 0.05, at_hz + 0.05],
            "slope_per_hz": at_hz / 10, "at_hz": at_hz, "at_hz_ci": ci,
            "aa": 0.001, "aa_ci": [-0.06, 0.06], "rows_per_drain": 6_000_000, "drains": 3,
            "rates": [0.0, 0.0, 10.0, 100.0], "slice_s": 1.0, "seed": 1,
            "modes": {"0.0": {"slices": 24, "reads_per_s": 0.1, "median_rows_per_s": 300_000.0},
                      "10.0": {"slices": 12, "reads_per_s": 10.1, "median_rows_per_s": 299_000.0},
                      "100.0": {"slices": 12, "reads_per_s": 99.0,
                                "median_rows_per_s": 290_000.0}}}


def test_report_judges_metrics_by_the_dose_interval(tmp_path):
    """With randomized reader-rate drains, the verdict is the 95% interval of the change
    at 10 Hz: met when it lies inside +-2%, not met when it reaches past it."""
    for ci, verdict in (([-0.012, -0.004], "**met**"), ([-0.025, -0.004], "**not met**")):
        d = tmp_path / verdict.strip("*").replace(" ", "_")
        fixture(str(d))
        path = d / "report-data" / "metrics.json"
        m = json.load(open(path))
        m["pair_ratios"] = [0.90, 1.25]     # noisy A/B pairs no longer decide
        m["interleaved"] = dose_result(-0.008, ci)
        json.dump(m, open(path, "w"))
        p = subprocess.run([sys.executable, REPORT, "--dir", str(d)], capture_output=True,
                           text=True, timeout=120)
        assert p.returncode == 0, p.stderr
        md = open(d / "REPORT.md").read()
        assert (f"| -0.80% ({ci[0]:+.2%} .. {ci[1]:+.2%}) | change < 2% | {verdict} |"
                in md), verdict
        assert "10 Hz | 12 | 10.1 | 299,000 rows/s" in md


def test_metrics_dose_analysis():
    """bench/metrics/run.py's analysis on synthetic blocks: each read/s costs 0.1% of
    the throughput, the quiet slices are identical: the slope gives -1.0% at 10 Hz,
    the direct 10 Hz comparison too, the A/A comparison 0."""
    import random
    sys.path.insert(0, os.path.join(ROOT, "bench", "metrics"))
    import run as metrics_run
    rng = random.Random(1)
    blocks = []
    for i in range(10):
        base = 250_000 + 10_000 * i         # drift between blocks cancels within a block
        blocks.append([(h, h, base * (1 - 0.001) ** h) for h in rng.sample([0, 0, 10, 100], 4)])
    res = metrics_run.analyse(blocks, 10.0, rng)
    assert abs(res["at_hz"] - (0.999 ** 10 - 1)) < 1e-9
    assert abs(res["direct"] - (0.999 ** 10 - 1)) < 1e-9
    assert abs(res["aa"]) < 1e-12
    lo, hi = res["at_hz_ci"]
    assert lo <= res["at_hz"] <= hi and hi - lo < 1e-9
    assert res["modes"]["100"]["slices"] == 10 and res["blocks"] == 10
