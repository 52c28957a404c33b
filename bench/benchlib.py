"""Shared plumbing of batchkit's benchmarks (bench/capture, bench/flush).

Every benchmark starts its OWN throwaway services under one /tmp directory and
stops them by pid when it ends (normally, on an exception, or on SIGINT/SIGTERM):

  * PostgreSQL 15 from $BK_PGBIN via scripts/pg.sh (batchkit preloaded, fsync on,
    default shared_buffers/work_mem), plus the settings in PG_EXTRA_CONF;
  * optionally redis-server (no persistence) and the Kafka dev broker
    (tools/kafka-dev-broker) with pre-created many-partition topics.

Also: medians, the result table every script prints, the JSON it writes to
bench/out/, load average and CPU-time snapshots (the machine is shared: each
measurement records the load around it so a noisy one can be spotted).
"""
import atexit
import json
import os
import platform
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

import psycopg2

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
PGBIN = os.environ.get("BK_PGBIN", "/usr/lib/postgresql/15/bin")
OUT_DIR = os.path.join(ROOT, "bench", "out")
BROKER = os.path.join(ROOT, "tools", "kafka-dev-broker", "kafka-dev-broker")

# Settings on top of scripts/pg.sh's (fsync on, shared_buffers 128MB, work_mem 4MB):
# a large max_wal_size so that no method pays for a checkpoint the previous run
# triggered (every measurement starts right after an explicit CHECKPOINT).
PG_EXTRA_CONF = """
max_wal_size = 8GB
checkpoint_timeout = 30min
"""


# ---- realistic rows ----------------------------------------------------------------
FIRST = ["James", "Mary", "Robert", "Patricia", "John", "Jennifer", "Michael", "Linda",
         "David", "Elizabeth", "William", "Barbara", "Richard", "Susan", "Joseph", "Jessica",
         "Thomas", "Sarah", "Christopher", "Karen", "Charles", "Lisa", "Daniel", "Nancy",
         "Matthew", "Betty", "Anthony", "Margaret", "Mark", "Sandra", "Donald", "Ashley",
         "Steven", "Kimberly", "Paul", "Emily", "Andrew", "Donna", "Joshua", "Michelle",
         "Kenneth", "Carol", "Kevin", "Amanda", "Brian", "Dorothy", "George", "Melissa",
         "Timothy", "Deborah", "Ahmed", "Yuki", "Chloé", "Zoë", "Mateo", "Léa", "Oluwaseun",
         "Siobhán", "Björn", "Priya"]
LAST = ["Smith", "Johnson", "Williams", "Brown", "Jones", "Garcia", "Miller", "Davis",
        "Rodriguez", "Martinez", "Hernandez", "Lopez", "Gonzalez", "Wilson", "Anderson",
        "Thomas", "Taylor", "Moore", "Jackson", "Martin", "Lee", "Perez", "Thompson", "White",
        "Harris", "Sanchez", "Clark", "Ramirez", "Lewis", "Robinson", "Walker", "Young",
        "Allen", "King", "Wright", "Scott", "Torres", "Nguyen", "Hill", "Flores", "Green",
        "Adams", "Nelson", "Baker", "Hall", "Rivera", "Campbell", "Mitchell", "Carter",
        "Roberts", "O'Brien", "Müller", "Kowalski", "Yamamoto", "Okafor", "Dubois",
        "Fernández", "Andersson", "Novák", "Van der Berg"]
DOMAINS = ["gmail.com", "yahoo.com", "outlook.com", "hotmail.com", "icloud.com",
           "proton.me", "example.org", "acme-corp.com", "mail.ru", "web.de"]

def sql_array(xs):
    return "ARRAY[" + ",".join("'" + x.replace("'", "''") + "'" for x in xs) + "]"


def src_select(lo, hi):
    """Deterministic realistic rows for ids lo..hi: 'First Last', first.last123@domain."""
    return f"""
        SELECT i AS id, f || ' ' || l AS name,
               lower(translate(f, 'éëöüáóèñ''', 'eeouaoen')) || '.' ||
               lower(translate(replace(l, ' ', ''), 'éëöüáóèñ''', 'eeouaoen')) ||
               (abs(hashint8(i)) % 1000) || '@' || d AS email
          FROM generate_series({lo}, {hi}) i,
               LATERAL (SELECT ({sql_array(FIRST)})[1 + abs(hashint8(i)) % {len(FIRST)}] AS f,
                               ({sql_array(LAST)})[1 + abs(hashint8(i * 31)) % {len(LAST)}] AS l,
                               ({sql_array(DOMAINS)})[1 + abs(hashint8(i * 17)) % {len(DOMAINS)}] AS d) x
    """


def log(*a):
    print(*a, file=sys.stderr, flush=True)


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def loadavg():
    with open("/proc/loadavg") as f:
        return [float(x) for x in f.read().split()[:3]]


def cpu_times():
    """(busy, total) jiffies of the whole machine, for the share of CPU used by others."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    idle = v[3] + v[4]
    return sum(v) - idle, sum(v)


def median(xs):
    return statistics.median(xs) if xs else None


def pctl(sorted_xs, p):
    if not sorted_xs:
        return None
    k = (len(sorted_xs) - 1) * p / 100.0
    lo = int(k)
    hi = min(lo + 1, len(sorted_xs) - 1)
    return sorted_xs[lo] + (sorted_xs[hi] - sorted_xs[lo]) * (k - lo)


def proc_status(pid):
    """VmRSS, VmHWM, RssAnon, RssShmem of a process in bytes (from /proc/pid/status)."""
    out = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                k, _, v = line.partition(":")
                if k in ("VmRSS", "VmHWM", "RssAnon", "RssFile", "RssShmem"):
                    out[k] = int(v.split()[0]) * 1024
    except FileNotFoundError:
        pass
    return out


def proc_cpu_seconds(pid):
    """utime + stime of a process in seconds."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (FileNotFoundError, IndexError):
        return None


def thread_cpu_seconds(pid):
    """{thread name: utime + stime in seconds} of a process, threads of one name summed
    (librdkafka names its threads rdk:main, rdk:broker<N>, ...)."""
    out = {}
    tick = os.sysconf("SC_CLK_TCK")
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except FileNotFoundError:
        return out
    for t in tids:
        try:
            with open(f"/proc/{pid}/task/{t}/stat") as f:
                s = f.read()
        except FileNotFoundError:
            continue
        name = s[s.index("(") + 1:s.rindex(")")]
        fields = s.rsplit(")", 1)[1].split()
        out[name] = out.get(name, 0.0) + (int(fields[11]) + int(fields[12])) / tick
    return out


class Services:
    """Throwaway Postgres (+ redis, + Kafka dev broker) under one /tmp directory."""

    def __init__(self, prefix, redis=False, kafka_topics=None, kafka_brokers=3, pg_conf=None):
        self.pg_conf = [c.strip() for c in (pg_conf or "").split(",") if c.strip()]
        self.dir = tempfile.mkdtemp(prefix=f"bk-bench-{prefix}-")
        os.chmod(self.dir, 0o755)
        self.pgdir = os.path.join(self.dir, "pg")
        self.pgport = None
        self.redis_port = None
        self.redis_pid = None
        self.kafka_proc = None
        self.kafka_bootstrap = None
        self._stopped = False
        self._brokers = []
        atexit.register(self.stop)
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, self._on_signal)
        try:
            self._start_pg()
            if redis:
                self._start_redis()
            if kafka_topics is not None:
                self._start_kafka(kafka_topics, kafka_brokers)
        except BaseException:
            self.stop()
            raise

    def _on_signal(self, signum, frame):
        self.stop()
        sys.exit(128 + signum)

    def _pg(self, *args):
        env = dict(os.environ, BK_PGBIN=PGBIN)
        subprocess.run(["bash", os.path.join(ROOT, "scripts", "pg.sh"), *map(str, args)],
                       check=True, env=env)

    def _start_pg(self):
        os.makedirs(self.pgdir)
        self.pgport = free_port()
        self._pg("init", self.pgdir, self.pgport)
        conf = os.path.join(self.pgdir, "data", "postgresql.conf")
        # the file belongs to the postgres OS user when we are root; append as root
        with open(conf, "a") as f:
            f.write(PG_EXTRA_CONF)
            for c in self.pg_conf:
                k, _, v = c.partition("=")
                f.write(f"{k.strip()} = '{v.strip()}'\n")
        self._pg("start", self.pgdir)

    def _start_redis(self):
        rdir = os.path.join(self.dir, "redis")
        os.makedirs(rdir)
        self.redis_port = free_port()
        pidfile = os.path.join(rdir, "redis.pid")
        subprocess.run(["redis-server", "--port", str(self.redis_port), "--bind", "127.0.0.1",
                        "--save", "", "--appendonly", "no", "--daemonize", "yes",
                        "--pidfile", pidfile, "--logfile", os.path.join(rdir, "redis.log"),
                        "--dir", rdir], check=True, stdout=subprocess.DEVNULL)
        import redis
        r = redis.Redis(port=self.redis_port)
        for _ in range(100):
            try:
                r.ping()
                break
            except redis.ConnectionError:
                time.sleep(0.05)
        r.ping()
        with open(pidfile) as f:
            self.redis_pid = int(f.read().split()[0])

    def _start_kafka(self, topics, brokers):
        self.kafka = KafkaBroker(os.path.join(self.dir, "kafka"), topics, brokers)
        self.kafka_proc = self.kafka.proc
        self.kafka_bootstrap = self.kafka.bootstrap

    def kafka_broker(self, topics, brokers=3):
        """A fresh Kafka dev broker (stop it when done): one per measurement keeps the
        broker's memory to one run's messages."""
        self._nbroker = getattr(self, "_nbroker", 0) + 1
        b = KafkaBroker(os.path.join(self.dir, f"kafka{self._nbroker}"), topics, brokers)
        self._brokers.append(b)
        return b

    def connect(self, dbname="postgres", autocommit=True):
        conn = psycopg2.connect(host=os.path.join(self.pgdir, "sock"), port=self.pgport,
                                user="postgres", dbname=dbname)
        conn.autocommit = autocommit
        return conn

    def pg_env(self):
        return dict(os.environ, PGHOST=os.path.join(self.pgdir, "sock"), PGPORT=str(self.pgport),
                    PGUSER="postgres", PGDATABASE="postgres")

    def kafka_pid(self):
        return self.kafka_proc.pid if self.kafka_proc else None

    def stop(self):
        if self._stopped:
            return
        self._stopped = True
        if self.kafka_proc is not None:
            self.kafka.stop()
        for b in self._brokers:
            b.stop()
        if self.redis_pid:
            _kill_pid(self.redis_pid)
        if os.path.exists(os.path.join(self.pgdir, "data", "postmaster.pid")):
            try:
                self._pg("stop", self.pgdir, "fast")
            except subprocess.CalledProcessError:
                pass
            pidfile = os.path.join(self.pgdir, "data", "postmaster.pid")
            if os.path.exists(pidfile):
                with open(pidfile) as f:
                    _kill_pid(int(f.readline()))
        shutil.rmtree(self.dir, ignore_errors=True)


class KafkaBroker:
    """tools/kafka-dev-broker with pre-created topics [(name, partitions)]."""

    def __init__(self, kdir, topics, brokers=3):
        if not os.path.exists(BROKER):
            subprocess.run(["make", "-s", "-C", os.path.dirname(BROKER)], check=True)
        os.makedirs(kdir)
        self.dir = kdir
        bootfile = os.path.join(kdir, "bootstrap")
        args = [BROKER, "--brokers", str(brokers), "--quiet", "--bootstrap-file", bootfile]
        for name, parts in topics:
            args += ["--topic", f"{name}:{parts}"]
        self.log = open(os.path.join(kdir, "broker.log"), "w")
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=self.log,
                                     stdin=subprocess.DEVNULL)
        self.pid = self.proc.pid
        for _ in range(400):
            if os.path.exists(bootfile) and os.path.getsize(bootfile) > 0:
                break
            if self.proc.poll() is not None:
                raise RuntimeError("kafka-dev-broker exited: " +
                                   open(os.path.join(kdir, "broker.log")).read())
            time.sleep(0.05)
        with open(bootfile) as f:
            self.bootstrap = f.read().strip()

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.log.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    def topic_counts(self, topic):
        """(messages appended, messages still readable, partitions) from the offsets."""
        from kafka import KafkaConsumer, TopicPartition
        c = KafkaConsumer(bootstrap_servers=self.bootstrap.split(","))
        try:
            parts = sorted(c.partitions_for_topic(topic) or [])
            tps = [TopicPartition(topic, p) for p in parts]
            beg = c.beginning_offsets(tps)
            end = c.end_offsets(tps)
        finally:
            c.close()
        appended = sum(end[t] for t in tps)
        readable = sum(end[t] - beg[t] for t in tps)
        return appended, readable, len(tps)

    def distinct_keys(self, topic):
        """Read the whole topic back with kcat: (messages, distinct keys)."""
        p = subprocess.run(["kcat", "-C", "-b", self.bootstrap, "-t", topic, "-e", "-q",
                            "-o", "beginning", "-f", "%k\\n"], capture_output=True, timeout=600)
        if p.returncode != 0:
            raise RuntimeError(f"kcat failed: {p.stderr.decode()[:500]}")
        keys = p.stdout.split(b"\n")[:-1]
        return len(keys), len(set(keys))


def _kill_pid(pid):
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    for _ in range(100):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.05)
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def machine_info(conn=None):
    info = {
        "host": platform.node(),
        "cpus": os.cpu_count(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "loadavg_start": loadavg(),
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    try:
        info["git_commit"] = subprocess.run(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"],
                                            capture_output=True, text=True).stdout.strip()
    except OSError:
        pass
    if conn is not None:
        cur = conn.cursor()
        cur.execute("SELECT version()")
        info["postgres"] = cur.fetchone()[0]
        for g in ("shared_buffers", "work_mem", "fsync", "synchronous_commit", "max_wal_size",
                  "wal_level"):
            cur.execute(f"SHOW {g}")
            info[g] = cur.fetchone()[0]
    return info


class Table:
    """The table every script prints: measurement, value, baseline, ratio."""

    def __init__(self, title):
        self.title = title
        self.rows = []

    def add(self, measurement, value, unit="", baseline=None, ratio=None, target=None, note=""):
        self.rows.append(dict(measurement=measurement, value=value, unit=unit, baseline=baseline,
                              ratio=ratio, target=target, note=note))

    @staticmethod
    def _fmt(v, unit=""):
        if v is None:
            return "-"
        if isinstance(v, str):
            return v
        if unit == "s":
            return f"{v:.3f} s"
        if unit == "ms":
            return f"{v:.1f} ms"
        if unit == "rows/s":
            return f"{v:,.0f} rows/s"
        if unit == "MB":
            return f"{v:.1f} MB"
        if unit == "bytes":
            return f"{v:,.0f} B"
        if isinstance(v, float):
            return f"{v:.3f}"
        return f"{v:,}"

    def render(self):
        head = ("measurement", "value", "baseline", "ratio", "target", "note")
        lines = []
        for r in self.rows:
            ratio = "-" if r["ratio"] is None else f"{r['ratio']:.2f}x"
            lines.append((r["measurement"], self._fmt(r["value"], r["unit"]),
                          self._fmt(r["baseline"], r["unit"]), ratio, r["target"] or "",
                          r["note"] or ""))
        w = [max(len(h), *(len(l[i]) for l in lines)) if lines else len(h)
             for i, h in enumerate(head)]
        out = [f"== {self.title}",
               "  ".join(h.ljust(w[i]) for i, h in enumerate(head)),
               "  ".join("-" * w[i] for i in range(len(head)))]
        for l in lines:
            out.append("  ".join((l[0].ljust(w[0]), l[1].rjust(w[1]), l[2].rjust(w[2]),
                                  l[3].rjust(w[3]), l[4].ljust(w[4]), l[5])).rstrip())
        return "\n".join(out)

    def as_json(self):
        return {"title": self.title, "rows": self.rows}


def write_json(name, data):
    os.makedirs(OUT_DIR, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    path = os.path.join(OUT_DIR, f"{name}-{stamp}.json")
    with open(path, "w") as f:
        json.dump(data, f, indent=1, default=str)
    latest = os.path.join(OUT_DIR, f"{name}-latest.json")
    shutil.copyfile(path, latest)
    return path
