#!/usr/bin/env python3
"""Drain the same Kafka backlog with upstream `weed filer.replicate` and with `replicate`,
into a local directory and into another cluster's filer, and print a Markdown table.

Run through bench/throughput.sh, which builds the release binary, installs the test bed and
starts two clusters (A: source + broker, B: target). Arguments: RUN_DIR REPLICATE_BIN WEED_BIN.

The corpus is deterministic: SMALL files of 1-64 KiB and BIG files of 64 MiB (4 MiB chunks).
Each run is timed from start until the sink holds every file with its size; the replicas
are then checked byte for byte against the corpus (a fast wrong answer does not count).
Peak RSS is VmHWM, CPU is utime+stime from /proc; idle CPU is measured over 20 s after the
drain, with no events.
"""

import concurrent.futures
import hashlib
import json
import os
import random
import subprocess
import sys
import time
import urllib.request

SMALL = int(os.environ.get("SMALL", "5000"))
BIG = int(os.environ.get("BIG", "4"))
BIG_SIZE = 64 * 1024 * 1024
IDLE_SECONDS = int(os.environ.get("IDLE_SECONDS", "20"))
ROUNDS = int(os.environ.get("ROUNDS", "3"))
TOOLS = os.environ.get("TOOLS", "upstream replicate").split()
SINKS = os.environ.get("SINKS", "filer local").split()
PERF = os.environ.get("PERF", "") not in ("", "0")
PERF_DIR = os.environ.get("PERF_DIR")  # keep the perf.data files there
TICK = os.sysconf("SC_CLK_TCK")


def env_of(run):
    out = {}
    for line in open(os.path.join(run, "env")):
        if "=" in line:
            k, v = line.strip().split("=", 1)
            out[k] = v.strip("'")
    return out


def corpus():
    """(relative path, bytes) for every file, deterministic."""
    rnd = random.Random(42)
    files = []
    for i in range(SMALL):
        size = rnd.randint(1024, 64 * 1024)
        files.append((f"small/d{i % 50:02d}/f{i:05d}.bin", rnd.randbytes(size)))
    for i in range(BIG):
        files.append((f"big/b{i}.bin", random.Random(1000 + i).randbytes(BIG_SIZE)))
    return files


def upload(http, root, files, workers=16):
    """POST every file to the filer under root; returns seconds taken."""

    def one(item):
        rel, data = item
        query = "?maxMB=4" if len(data) > 4 * 1024 * 1024 else ""
        boundary = "benchboundary7d93"
        body = (
            f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{os.path.basename(rel)}\"\r\n"
            "Content-Type: application/octet-stream\r\n\r\n"
        ).encode() + data + f"\r\n--{boundary}--\r\n".encode()
        req = urllib.request.Request(
            f"http://{http}{root}/{rel}{query}",
            data=body,
            headers={"Content-Type": f"multipart/form-data; boundary={boundary}"},
        )
        urllib.request.urlopen(req, timeout=120).read()

    start = time.time()
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        list(pool.map(one, files))
    return time.time() - start


def proc_stats(pid):
    """(peak RSS bytes, CPU seconds) of a live process."""
    peak = 0
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                peak = int(line.split()[1]) * 1024
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    cpu = (int(fields[11]) + int(fields[12])) / TICK
    return peak, cpu


def local_done(root, sizes):
    """A check that every file is in place with its size. It stats only the files not yet
    seen complete, so that polling costs the machine little (walking all 5,000 files
    five times a second took an eighth of both cores away from the tools being measured)."""
    remaining = dict(sizes)

    def done():
        for rel, size in list(remaining.items()):
            try:
                if os.path.getsize(os.path.join(root, rel)) == size:
                    del remaining[rel]
            except FileNotFoundError:
                pass
        return not remaining

    return done


def filer_list(http, path):
    req = urllib.request.Request(
        f"http://{http}{path}/?limit=100000", headers={"Accept": "application/json"}
    )
    try:
        return json.load(urllib.request.urlopen(req, timeout=30)).get("Entries") or []
    except Exception:
        return []


def filer_state(http, root):
    out = {}
    stack = [root]
    while stack:
        d = stack.pop()
        for e in filer_list(http, d):
            full = e["FullPath"]
            if e.get("Mode", 0) & (1 << 31):
                stack.append(full)
            else:
                out[os.path.relpath(full, root)] = e.get("FileSize", 0)
    return out


def run_tool(name, cmd, workdir, done, verify, env, idle_seconds, perf, perf_roles=None):
    start = time.time()
    proc = subprocess.Popen(
        cmd, cwd=workdir, stdout=open(os.path.join(workdir, "log"), "w"),
        stderr=subprocess.STDOUT, env=env,
    )
    peak, cpu = 0, 0.0
    polls = 0
    while True:
        if proc.poll() is not None:
            sys.exit(f"{name} exited early; see {workdir}/log")
        peak, cpu = proc_stats(proc.pid)
        polls += 1
        # Listing a filer costs the target something: check it less often.
        if polls % (1 if "local" in name else 5) == 0 and done():
            break
        time.sleep(0.2)
    elapsed = time.time() - start
    peak, cpu = proc_stats(proc.pid)
    if perf:
        perf_stop(*perf, proc.pid, perf_roles)
    time.sleep(idle_seconds)
    _, cpu_after = proc_stats(proc.pid)
    proc.terminate()
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
    bad = verify()
    return elapsed, peak, cpu, (cpu_after - cpu) / idle_seconds if idle_seconds else 0.0, bad


def perf_start(out):
    """System-wide CPU sampling (software clock; hardware counters may be missing)."""
    return subprocess.Popen(
        ["perf", "record", "-a", "-F", "499", "-o", out, "--", "sleep", "3600"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )


def perf_stop(proc, out, pid, roles):
    """Stop sampling; print where the machine's CPU went, by process, then replicate's hot spots."""
    proc.send_signal(2)
    proc.wait(60)
    # perf's own "pid" sort key is the thread; count samples per process instead.
    samples = subprocess.run(["perf", "script", "-i", out, "-F", "pid,comm"],
                             capture_output=True, text=True).stdout.splitlines()
    counts, names = {}, {}
    for line in samples:
        parts = line.split()
        if len(parts) >= 2:
            counts[parts[-1]] = counts.get(parts[-1], 0) + 1
            names.setdefault(parts[-1], " ".join(parts[:-1]))
    roles = dict(roles, **{str(pid): "the tool under test", "0": "idle"})
    total_samples = max(1, sum(counts.values()))
    lines = [f"    {100 * n / total_samples:5.1f}%  {names[p]:<16} {roles.get(p, '')}"
             for p, n in sorted(counts.items(), key=lambda kv: -kv[1]) if n / total_samples >= 0.005]
    top = subprocess.run(
        ["perf", "report", "-i", out, "--pid", str(pid), "--sort", "dso,sym",
         "--stdio", "--no-children", "-g", "none", "--percent-limit", "0.7"],
        capture_output=True, text=True,
    ).stdout
    keep = lambda text: "\n".join(l for l in text.splitlines() if l.strip() and not l.startswith("#"))
    print(f"perf: share of the machine's CPU by process ({out})\n" + "\n".join(lines) + "\n"
          f"perf: replicate's symbols over 0.7% of all samples\n{keep(top)}\n", file=sys.stderr)


def median(xs):
    xs = sorted(xs)
    return xs[len(xs) // 2]


def main():
    run, replicate_bin, weed_bin = sys.argv[1:4]
    a, b = env_of(os.path.join(run, "a")), env_of(os.path.join(run, "b"))
    files = corpus()
    want = {rel: hashlib.sha256(data).hexdigest() for rel, data in files}
    sizes = {rel: len(data) for rel, data in files}
    total = sum(sizes.values())
    # The ceiling: the target cluster accepting the same corpus written directly.
    ceiling = upload(b["FILER_HTTP"], "/ceiling", files)
    load = upload(a["FILER_HTTP"], "/bench", files)
    del files
    print(f"corpus: {SMALL} files of 1-64 KiB + {BIG} x 64 MiB = {total / 1e6:.0f} MB; "
          f"loaded into the source in {load:.1f} s", file=sys.stderr)

    results = {}  # (sink, tool) -> [(elapsed, peak, cpu, idle, bad)]
    for round_no in range(ROUNDS):
        for sink in SINKS:
            # Alternate who goes first: a run can leave the machine slower for the next
            # (page cache, inode tables), and the median should not favour either tool.
            for tool in TOOLS if round_no % 2 == 0 else TOOLS[::-1]:
                name = f"{tool}-{sink}-{round_no}"
                work = os.path.join(run, name)
                os.makedirs(work, exist_ok=True)
                if sink == "local":
                    target = os.path.join(run, "out-" + name)
                    section = f'[sink.local]\nenabled = true\ndirectory = "{target}"\n'
                    done = local_done(target, sizes)
                    def verify(t=target):
                        bad = 0
                        for rel, h in want.items():
                            with open(os.path.join(t, rel), "rb") as f:
                                bad += hashlib.sha256(f.read()).hexdigest() != h
                        return bad
                else:
                    target = "/" + name
                    section = (f'[sink.filer]\nenabled = true\ngrpcAddress = "{b["FILER_GRPC"]}"\n'
                               f'directory = "{target}"\n')
                    done = lambda t=target: filer_state(b["FILER_HTTP"], t) == sizes
                    def verify(t=target):
                        def one(rel):
                            data = urllib.request.urlopen(f"http://{b['FILER_HTTP']}{t}/{rel}", timeout=120).read()
                            return hashlib.sha256(data).hexdigest() != want[rel]
                        with concurrent.futures.ThreadPoolExecutor(8) as pool:
                            return sum(pool.map(one, want))
                with open(os.path.join(work, "replication.toml"), "w") as f:
                    f.write(section + f'[source.filer]\nenabled = true\ngrpcAddress = "{a["FILER_GRPC"]}"\n'
                            'directory = "/bench"\n')
                with open(os.path.join(work, "notification.toml"), "w") as f:
                    f.write(f'[notification.kafka]\nenabled = true\nhosts = ["{a["KAFKA_ADDR"]}"]\n'
                            f'topic = "{a["TOPIC"]}"\noffsetFile = "./last.offset"\noffsetSaveIntervalSeconds = 10\n')
                cmd = [weed_bin, "filer.replicate"] if tool == "upstream" else [replicate_bin]
                env = dict(os.environ, HOME=work)
                profile = PERF and tool == "replicate"
                perf_data = os.path.join(PERF_DIR or work, f"{name}.perf.data")
                perf = (perf_start(perf_data), perf_data) if profile else None
                # Idle CPU is a property of the tool, not of the round: measure it once.
                idle_seconds = IDLE_SECONDS if round_no == 0 else 0
                roles = {a["WEED_PID"]: "source SeaweedFS (A)", b["WEED_PID"]: "target SeaweedFS (B)",
                         a["BROKER_PID"]: "Kafka broker (A)", b["BROKER_PID"]: "Kafka broker (B; B's filer publishes its own events)"}
                elapsed, peak, cpu, idle, bad = run_tool(name, cmd, work, done, verify, env,
                                                         idle_seconds, perf, roles)
                results.setdefault((sink, tool), []).append((elapsed, peak, cpu, idle, bad))
                print(f"{name}: {elapsed:.1f} s, {bad} files differ", file=sys.stderr)
                # Local replicas stay until the run ends: on ext4 without a journal (as
                # here), every new inode skips over those deleted in the last minutes, so
                # deleting 5,000 files would slow down whichever run came next.

    print(f"Corpus: {SMALL} files of 1-64 KiB and {BIG} files of 64 MiB ({total / 1e6:.0f} MB), "
          f"drained from one Kafka backlog; median of {ROUNDS} rounds, range in brackets.\n")
    print("| sink | tool | drain time | files/s | MB/s | peak RSS | CPU seconds | idle CPU (20 s) | wrong files |")
    print("|---|---|---|---|---|---|---|---|---|")
    n = len(sizes)
    med = {}
    for (sink, tool), runs in results.items():
        elapsed = median([r[0] for r in runs])
        peak = median([r[1] for r in runs])
        cpu = median([r[2] for r in runs])
        idle = runs[0][3]
        bad = sum(r[4] for r in runs)
        med[(sink, tool)] = (elapsed, peak)
        spread = f" [{min(r[0] for r in runs):.1f}–{max(r[0] for r in runs):.1f}]" if len(runs) > 1 else ""
        print(f"| {sink} | {tool} | {elapsed:.1f} s{spread} | {n / elapsed:.0f} | {total / 1e6 / elapsed:.0f} | "
              f"{peak / 2**20:.0f} MiB | {cpu:.1f} | {idle * 100:.1f}% | {bad} |")
    for sink in SINKS:
        if (sink, "upstream") in med and (sink, "replicate") in med:
            (up, up_mem), (us, us_mem) = med[(sink, "upstream")], med[(sink, "replicate")]
            print(f"\n{sink} sink: replicate is {up / us:.1f}x faster with {us_mem / up_mem:.2f}x the peak memory.",
                  end="")
    print(f"\n\nCeiling: the target cluster accepted the same corpus, written directly by 16 HTTP "
          f"clients, in {ceiling:.1f} s ({n / ceiling:.0f} files/s, {total / 1e6 / ceiling:.0f} MB/s).")


if __name__ == "__main__":
    main()
