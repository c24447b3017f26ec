#!/usr/bin/env python3
"""Scale-out: the same Kafka backlog drained by a consumer group of 1, 2 and 3 `replicate`
processes into a local directory, and a Markdown table of the result.

Run through bench/groups.sh, which builds the release binary, installs the test bed and
starts one cluster whose filer publishes to tansu (6 partitions; tansu completes
cooperative rebalances). Arguments: RUN_DIR REPLICATE_BIN.

Each round starts every member of a fresh group at once (and, for comparison, one process
in offset-file mode) and times until the sink holds every file with its size; the replica
is then checked byte for byte. "Drain" counts from
the first event applied to the last (from the members' logs), which leaves out the time
the group takes to form; "wall" includes it. Shares are the events each member applied.
"""

import hashlib
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
os.environ.setdefault("BIG", "0")
import throughput  # noqa: E402  (corpus, upload, proc_stats, local_done, env_of, median)

MEMBERS = [int(n) for n in os.environ.get("MEMBERS", "1 2 3").split()]
ROUNDS = int(os.environ.get("ROUNDS", "3"))


def applied_times(log):
    """Timestamps (seconds of the day) of the events a member finished, from its log."""
    out = []
    for line in open(log, errors="replace"):
        if "seaweed_replicate::pipeline: " in line and " at partition " in line:
            stamp = line.split()[0]  # 2026-11-24T12:30:45.086448Z
            h, m, s = stamp[11:-1].split(":")
            out.append(int(h) * 3600 + int(m) * 60 + float(s))
    return out


def drain(run, replicate_bin, a, members, tag, sizes, want, group=True):
    target = os.path.join(run, f"out-{tag}")
    procs, works = [], []
    start = time.time()
    for i in range(members):
        work = os.path.join(run, f"{tag}-m{i}")
        os.makedirs(work, exist_ok=True)
        with open(os.path.join(work, "replication.toml"), "w") as f:
            f.write(f'[sink.local]\nenabled = true\ndirectory = "{target}"\n'
                    f'[source.filer]\nenabled = true\ngrpcAddress = "{a["FILER_GRPC"]}"\n'
                    'directory = "/bench"\n')
        with open(os.path.join(work, "notification.toml"), "w") as f:
            mode = (f'group_id = "bench-{tag}"\nsession_timeout_seconds = 10\n' if group
                    else 'offsetFile = "./last.offset"\n')
            f.write(f'[notification.kafka]\nenabled = true\nhosts = ["{a["KAFKA_ADDR"]}"]\n'
                    f'topic = "{a["TOPIC"]}"\noffsetSaveIntervalSeconds = 1\n{mode}')
        log = open(os.path.join(work, "log"), "w")
        procs.append(subprocess.Popen([replicate_bin, "-v=1"], cwd=work, stdout=log, stderr=log,
                                      env=dict(os.environ, HOME=work)))
        works.append(work)
    try:
        done = throughput.local_done(target, sizes)
        while not done():
            if time.time() - start > 900:
                raise SystemExit(f"{tag}: not drained after 900 s")
            time.sleep(0.2)
        wall = time.time() - start
        stats = [throughput.proc_stats(p.pid) for p in procs]
    finally:
        for p in procs:
            p.terminate()
        for p in procs:
            p.wait(timeout=60)
    bad = 0
    for rel, h in want.items():
        with open(os.path.join(target, rel), "rb") as f:
            bad += hashlib.sha256(f.read()).hexdigest() != h
    times = [applied_times(os.path.join(w, "log")) for w in works]
    every = sorted(t for ts in times for t in ts)
    drained = every[-1] - every[0] if len(every) > 1 else wall
    shares = [len(ts) for ts in times]
    return wall, drained, max(s[0] for s in stats), sum(s[1] for s in stats), shares, bad


def main():
    run, replicate_bin = sys.argv[1:3]
    a = throughput.env_of(os.path.join(run, "a"))
    files = throughput.corpus()
    want = {rel: hashlib.sha256(data).hexdigest() for rel, data in files}
    sizes = {rel: len(data) for rel, data in files}
    total = sum(sizes.values())
    load = throughput.upload(a["FILER_HTTP"], "/bench", files)
    del files
    print(f"corpus: {len(sizes)} files, {total / 1e6:.0f} MB, loaded in {load:.1f} s", file=sys.stderr)

    # "file": one process in upstream's offset-file mode, for comparison.
    kinds = ["file"] + MEMBERS
    results = {}
    for round_no in range(ROUNDS):
        for members in kinds if round_no % 2 == 0 else kinds[::-1]:
            tag = f"n{members}-r{round_no}"
            r = drain(run, replicate_bin, a, 1 if members == "file" else members, tag, sizes, want,
                      group=members != "file")
            results.setdefault(members, []).append(r)
            print(f"{tag}: wall {r[0]:.1f} s, drain {r[1]:.1f} s, shares {r[4]}, {r[5]} files differ",
                  file=sys.stderr)

    n = len(sizes)
    print(f"Corpus: {n} files of 1-64 KiB ({total / 1e6:.0f} MB) in one backlog on a 6-partition "
          f"topic (tansu); local sink; median of {ROUNDS} rounds.\n")
    print("| members | wall time (incl. joining) | drain time | files/s (drain) | events per member "
          "| CPU seconds (all) | peak RSS (largest) | wrong files |")
    print("|---|---|---|---|---|---|---|---|")
    base = None
    for members in MEMBERS + ["file"]:
        runs = results[members]
        wall = throughput.median([r[0] for r in runs])
        drained = throughput.median([r[1] for r in runs])
        cpu = throughput.median([r[3] for r in runs])
        peak = throughput.median([r[2] for r in runs])
        shares = min(runs, key=lambda r: abs(r[1] - drained))[4]
        bad = sum(r[5] for r in runs)
        base = base or n / drained
        label = "1, offset file (no group)" if members == "file" else members
        print(f"| {label} | {wall:.1f} s | {drained:.1f} s | {n / drained:.0f} ({n / drained / base:.2f}x) | "
              f"{' / '.join(map(str, shares))} | {cpu:.1f} | {peak / 2**20:.0f} MiB | {bad} |")


if __name__ == "__main__":
    main()
