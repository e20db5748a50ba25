#!/usr/bin/env python3
"""Helpers for contrib/bench/run.sh (standard library only).

  bench.py free-ports N                  N free TCP ports on 127.0.0.1
  bench.py tree PID...                   the PIDs and their live descendants
  bench.py ticks PID...                  CPU clock ticks of the PIDs' process trees
  bench.py idle-mem PORT PIDS N DB USER  PSS of the trees of PIDS (comma separated),
                                         idle and with N clients
  bench.py parse FILE                    tps, latency, transactions of a pgbench output
  bench.py table DIR                     the results table of a run directory
  bench.py selftest                      checks the table on made-up results

CPU: for every process of the tree, utime + stime + cutime + cstime from
/proc/<pid>/stat. A worker that has exited and been reaped is in its
parent's cutime/cstime, a live one is counted itself, so the sum covers all
the processes the pooler ever had.
"""

import json
import os
import resource
import socket
import statistics
import struct
import sys
import time

CLK_TCK = os.sysconf("SC_CLK_TCK")


# ---------------------------------------------------------------- processes

def _stat(pid):
    """Fields of /proc/<pid>/stat after the command name, or None."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read().decode("latin-1")
    except OSError:
        return None
    # The command name is in parentheses and may contain anything.
    return data[data.rindex(")") + 2:].split()


def tree(*roots):
    """The roots and all their live descendants, parents before children."""
    children = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        fields = _stat(name)
        if fields is None:
            continue
        ppid = int(fields[1])
        children.setdefault(ppid, []).append(int(name))
    out, todo = [], [r for r in roots if _stat(r) is not None]
    while todo:
        pid = todo.pop(0)
        out.append(pid)
        todo.extend(sorted(children.get(pid, [])))
    return out


def ticks(*roots):
    total = 0
    for pid in tree(*roots):
        fields = _stat(pid)
        if fields is None:
            continue
        # fields[0] is the state (field 3); utime is field 14.
        utime, stime, cutime, cstime = (int(x) for x in fields[11:15])
        total += utime + stime + cutime + cstime
    return total


def pss_kib(roots):
    total, procs = 0, 0
    for pid in tree(*roots):
        try:
            with open(f"/proc/{pid}/smaps_rollup") as f:
                for line in f:
                    if line.startswith("Pss:"):
                        total += int(line.split()[1])
                        procs += 1
                        break
        except OSError:
            pass
    return total, procs


# ---------------------------------------------------------------- idle clients

def _startup(db, user):
    body = struct.pack("!I", 196608)
    for k, v in (("user", user), ("database", db), ("application_name", "bench-idle")):
        body += k.encode() + b"\0" + v.encode() + b"\0"
    body += b"\0"
    return struct.pack("!I", len(body) + 4) + body


def _until_ready(sock):
    """Reads messages until ReadyForQuery; raises on ErrorResponse."""
    buf = b""
    while True:
        while len(buf) >= 5:
            tag = buf[0:1]
            (length,) = struct.unpack("!I", buf[1:5])
            if len(buf) < 1 + length:
                break
            body, buf = buf[5:1 + length], buf[1 + length:]
            if tag == b"E":
                raise RuntimeError("server error: " + body.replace(b"\0", b" ").decode(errors="replace"))
            if tag == b"R" and struct.unpack("!I", body[:4])[0] != 0:
                raise RuntimeError("server asks for a password; the benchmark needs trust")
            if tag == b"Z":
                return
        chunk = sock.recv(65536)
        if not chunk:
            raise RuntimeError("connection closed during startup")
        buf += chunk


def _enough_descriptors(n):
    """Raises the soft RLIMIT_NOFILE for n sockets, as far as the hard one allows."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = n + 64
    if soft != resource.RLIM_INFINITY and soft < want:
        new = want if hard == resource.RLIM_INFINITY else min(want, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))
        if new < want:
            raise RuntimeError(f"{n} clients need {want} descriptors; the hard limit is {hard}")


def idle_mem(port, roots, n, db, user):
    _enough_descriptors(n)
    time.sleep(0.5)
    base, base_procs = pss_kib(roots)
    socks = []
    try:
        for _ in range(n):
            s = socket.create_connection(("127.0.0.1", port), timeout=30)
            s.sendall(_startup(db, user))
            socks.append(s)
        for s in socks:
            _until_ready(s)
        time.sleep(1.0)
        loaded, procs = pss_kib(roots)
    finally:
        for s in socks:
            try:
                s.sendall(b"X\0\0\0\4")
            except OSError:
                pass
            s.close()
    print(json.dumps({"idle_kib": base, "idle_procs": base_procs,
                      "loaded_kib": loaded, "loaded_procs": procs, "clients": n}))


# ---------------------------------------------------------------- pgbench output

def parse(path):
    tps = lat = txns = failed = None
    with open(path, errors="replace") as f:
        for line in f:
            line = line.strip()
            if line.startswith("tps = "):
                tps = float(line.split()[2])
            elif line.startswith("latency average = "):
                lat = float(line.split()[3])
            elif line.startswith("number of transactions actually processed:"):
                txns = int(line.split(":")[1].split()[0].split("/")[0])
            elif line.startswith("number of failed transactions:"):
                failed = int(line.split(":")[1].split()[0])
    if tps is None or txns is None:
        return None
    return {"tps": tps, "lat_ms": lat, "txns": txns, "failed": failed or 0}


def record(d, rnd, workload, mode, target, status, outfile, ticks_delta):
    """Appends one run to DIR/runs.jsonl."""
    r = {"round": int(rnd), "workload": workload, "mode": mode, "target": target,
         "status": status, "output": os.path.basename(outfile)}
    if status == "ok":
        p = parse(outfile) if os.path.exists(outfile) else None
        if p is None:
            r["status"] = "failed"
        else:
            r.update(p)
            if p["failed"]:
                r["status"] = "failed"
            if ticks_delta != "-":
                cpu_s = int(ticks_delta) / CLK_TCK
                r["cpu_s"] = cpu_s
                r["cpu_per_1k"] = cpu_s / (p["txns"] / 1000.0) if p["txns"] else None
                r["cpu_us_per_tx"] = cpu_s * 1e6 / p["txns"] if p["txns"] else None
    with open(os.path.join(d, "runs.jsonl"), "a") as f:
        f.write(json.dumps(r) + "\n")
    if r["status"] == "ok":
        extra = f", {r['cpu_us_per_tx']:.1f} CPU µs/tx" if r.get("cpu_us_per_tx") is not None else ""
        lat = f"{r['lat_ms']:.3f} ms" if r.get("lat_ms") is not None else "? ms"
        print(f"{r['tps']:>10,.0f} tps  {lat}{extra}")
    else:
        print(r["status"])


# ---------------------------------------------------------------- table

MEM_SKIP_NOTE = ("pgcorral's session and performance pipelines keep a server connection for each client, "
                 "so more idle clients than the pool would wait for one; not measured.")


def _fmt(x, digits=0):
    if x is None:
        return "–"
    if digits == 0:
        return f"{x:,.0f}"
    return f"{x:.{digits}f}"


def _ratio(a, b):
    if a is None or b is None or b == 0:
        return None
    return a / b


def _ratio_cell(per_round, median_ratio):
    """Median ratio of the medians, with the range of the per-round ratios."""
    if median_ratio is None:
        return "–"
    rs = [r for r in per_round if r is not None]
    if len(rs) > 1:
        return f"{median_ratio:.2f} ({min(rs):.2f}–{max(rs):.2f})"
    return f"{median_ratio:.2f}"


def _grid(hdr, rows):
    """A Markdown table, columns padded to their widest cell."""
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(hdr)]
    lines = ["| " + " | ".join(h.ljust(widths[i]) for i, h in enumerate(hdr)) + " |",
             "|" + "|".join("-" * (w + 2) for w in widths) + "|"]
    for r in rows:
        lines.append("| " + " | ".join(c.ljust(widths[i]) for i, c in enumerate(r)) + " |")
    return lines


def _ok(rs):
    return [r for r in rs if r.get("status") == "ok"]


def _med(rs, key):
    vals = [r[key] for r in _ok(rs) if r.get(key) is not None]
    return statistics.median(vals) if vals else None


def _by_round(rs, key):
    return {r["round"]: r[key] for r in _ok(rs) if r.get(key) is not None}


def _tps_cell(rs):
    if not _ok(rs):
        if not rs or any(r.get("status") == "unavailable" for r in rs):
            return "not available"
        return "failed"
    cell = _fmt(_med(rs, "tps"))
    if len(_ok(rs)) < len(rs):
        cell += f" ({len(rs) - len(_ok(rs))} failed)"
    return cell


def _perf_row(w, m, pool, cells):
    d_rs = cells.get((w["name"], "-", "direct"), [])
    b_rs = cells.get((w["name"], m, "pgbouncer"), [])
    c_rs = cells.get((w["name"], m, "pgcorral"), [])
    pool_s = f"{pool} (queue)" if w["clients"] > pool else str(pool)
    d_tps, b_tps, c_tps = _med(d_rs, "tps"), _med(b_rs, "tps"), _med(c_rs, "tps")
    bd, bb, bc = _by_round(d_rs, "tps"), _by_round(b_rs, "tps"), _by_round(c_rs, "tps")
    r_cb = [_ratio(bc[k], bb[k]) for k in bc if k in bb]
    r_cd = [_ratio(bc[k], bd[k]) for k in bc if k in bd]
    lat = " / ".join(_fmt(_med(x, "lat_ms"), 3) for x in (d_rs, b_rs, c_rs))
    b_cpu, c_cpu = _med(b_rs, "cpu_us_per_tx"), _med(c_rs, "cpu_us_per_tx")
    cb, cc = _by_round(b_rs, "cpu_us_per_tx"), _by_round(c_rs, "cpu_us_per_tx")
    r_cpu = [_ratio(cc[k], cb[k]) for k in cc if k in cb]
    return [
        w["name"], m, pool_s, _fmt(d_tps),
        _tps_cell(b_rs) if b_rs else "–", _tps_cell(c_rs),
        _ratio_cell(r_cb, _ratio(c_tps, b_tps)),
        _ratio_cell(r_cd, _ratio(c_tps, d_tps)),
        lat,
        f"{_fmt(b_cpu, 1)} / {_fmt(c_cpu, 1)}",
        _ratio_cell(r_cpu, _ratio(c_cpu, b_cpu)),
    ]


def _mem_rows(meta, mem):
    def cell(x, k, procs_k):
        if not x:
            return "–"
        if x.get("status") != "ok":
            return "skipped (2)" if x.get("status") == "skipped" else x.get("status", "?")
        return f"{x[k] / 1024:.1f} ({x[procs_k]})"

    rows = []
    for m in meta["modes"]:
        get = {x["target"]: x for x in mem if x["mode"] == m}
        b, c = get.get("pgbouncer"), get.get("pgcorral")
        ratio = "–"
        if b and c and b.get("loaded_kib") and c.get("loaded_kib"):
            ratio = f"{c['loaded_kib'] / b['loaded_kib']:.1f}"
        rows.append([m, str(meta["pools"][m]),
                     cell(b, "idle_kib", "idle_procs"), cell(b, "loaded_kib", "loaded_procs"),
                     cell(c, "idle_kib", "idle_procs"), cell(c, "loaded_kib", "loaded_procs"), ratio])
    return rows


def render(meta, runs, mem):
    """The results table, from meta.json, runs.jsonl and memory.jsonl's contents."""
    for r in runs:
        # Runs recorded before CPU was given per transaction.
        if r.get("cpu_us_per_tx") is None and r.get("cpu_per_1k") is not None:
            r["cpu_us_per_tx"] = r["cpu_per_1k"] * 1000.0
    cells = {}
    for r in runs:
        cells.setdefault((r["workload"], r["mode"], r["target"]), []).append(r)

    lines = []
    out = lines.append
    if "jobs" in meta:
        jobs = f"-j {meta['jobs']}"
    else:
        jobs = f"-j {meta['nproc']} (the CPUs; the client count where that is lower)"
    n_pgb = meta.get("pgbouncers", 1)
    out(f"pgcorral benchmark — {meta['started']}")
    out(f"machine: {meta['nproc']} CPUs, {meta['cpu']}, Linux {meta['kernel']}, {meta['mem']}")
    out(f"versions: {meta['postgres']}; {meta['pgbouncer']}; {meta['pgbench']}; pgcorral {meta['pgcorral']}")
    out(f"runs: {meta['rounds']} round(s) × {meta['duration']} s per cell, interleaved "
        f"(direct, pgbouncer, pgcorral per workload, every round); pgbench -n {jobs}, "
        f"over TCP 127.0.0.1; PostgreSQL {meta['pg_settings']}; "
        f"{n_pgb} pgbouncer process{'es' if n_pgb > 1 else ''} per pool")
    out("")
    out("TPS and latency: medians over rounds. Ratios: of the medians, (range of the per-round ratios).")
    out("CPU: pooler CPU µs per transaction, all its processes (user + system, reaped children included).")
    out("")
    hdr = ["workload", "mode", "pool", "direct TPS", "pgbouncer TPS", "pgcorral TPS",
           "pgcorral/pgbouncer", "pgcorral/direct", "latency ms d / b / c",
           "CPU µs/tx b / c", "CPU pgcorral/pgbouncer"]
    rows = []
    skipped_note = None
    for w in meta["workloads"]:
        skipped = w.get("skipped", [m for m in meta["modes"] if m not in w["modes"]])
        for m in meta["modes"]:
            if m in w["modes"]:
                rows.append(_perf_row(w, m, w.get("pool") or meta["pools"][m], cells))
            elif m in skipped:
                rows.append([w["name"], m, "", "", "", "skipped (1)", "", "", "", "", ""])
                skipped_note = w["skip_note"]
    if rows:
        lines.extend(_grid(hdr, rows))
    out("")
    mem_skipped = False
    if mem:
        n = mem[0].get("clients", 100)
        out(f"Memory, PSS summed over the pooler's processes (MiB, processes in parentheses): idle, "
            f"and with {n} idle clients connected")
        out("")
        mh = ["mode", "pool", "pgbouncer idle", f"pgbouncer {n} clients", "pgcorral idle",
              f"pgcorral {n} clients", "pgcorral/pgbouncer"]
        mrows = _mem_rows(meta, mem)
        mem_skipped = any(x.get("status") == "skipped" for x in mem)
        lines.extend(_grid(mh, mrows))
        out("")
    if skipped_note:
        out("(1) " + skipped_note)
    if mem_skipped:
        out("(2) " + MEM_SKIP_NOTE)
    for note in meta.get("notes", []):
        out("* " + note)
    return "\n".join(lines)


def table(d):
    runs = []
    with open(os.path.join(d, "runs.jsonl")) as f:
        for line in f:
            if line.strip():
                runs.append(json.loads(line))
    with open(os.path.join(d, "meta.json")) as f:
        meta = json.load(f)
    mem = []
    if os.path.exists(os.path.join(d, "memory.jsonl")):
        with open(os.path.join(d, "memory.jsonl")) as f:
            mem = [json.loads(l) for l in f if l.strip()]
    print(render(meta, runs, mem))


def selftest():
    """The table from made-up results: every row present, the figures where they belong."""
    meta = {
        "started": "now", "nproc": 2, "cpu": "cpu", "kernel": "k", "mem": "m", "postgres": "pg",
        "pgbouncer": "pgb", "pgbench": "pgbench", "pgcorral": "c", "rounds": 2, "duration": 3,
        "pgbouncers": 2, "pg_settings": "s", "modes": ["session", "transaction"],
        "pools": {"session": 100, "transaction": 20, "performance": 100}, "notes": ["a note"],
        "workloads": [
            {"name": "select-c10-prepared", "clients": 10, "pool": None, "modes": ["session"],
             "skipped": ["transaction"], "skip_note": "no prepared"},
            {"name": "select-c256-on32", "clients": 256, "pool": 32, "modes": ["transaction"],
             "skipped": [], "skip_note": ""},
        ],
    }
    runs = []
    for rnd in (1, 2):
        runs.append({"round": rnd, "workload": "select-c256-on32", "mode": "-", "target": "direct",
                     "status": "ok", "tps": 1000.0 * rnd, "lat_ms": 1.0, "txns": 1000})
        for target, tps, cpu in (("pgbouncer", 500.0, 20.0), ("pgcorral", 750.0, 30.0)):
            runs.append({"round": rnd, "workload": "select-c256-on32", "mode": "transaction",
                         "target": target, "status": "ok", "tps": tps * rnd, "lat_ms": 2.0,
                         "txns": 1000, "cpu_us_per_tx": cpu})
        runs.append({"round": rnd, "workload": "select-c10-prepared", "mode": "session",
                     "target": "pgcorral", "status": "unavailable"})
    # An older record, CPU per 1,000 transactions only.
    runs.append({"round": 1, "workload": "select-c10-prepared", "mode": "session", "target": "pgbouncer",
                 "status": "ok", "tps": 10.0, "lat_ms": 1.0, "txns": 10, "cpu_per_1k": 0.02})
    mem = [
        {"mode": "session", "target": "pgbouncer", "clients": 1000, "status": "ok", "idle_kib": 2048,
         "idle_procs": 2, "loaded_kib": 4096, "loaded_procs": 2},
        {"mode": "session", "target": "pgcorral", "clients": 1000, "status": "skipped"},
        {"mode": "transaction", "target": "pgbouncer", "clients": 1000, "status": "ok", "idle_kib": 2048,
         "idle_procs": 2, "loaded_kib": 4096, "loaded_procs": 2},
        {"mode": "transaction", "target": "pgcorral", "clients": 1000, "status": "ok", "idle_kib": 1024,
         "idle_procs": 1, "loaded_kib": 122880, "loaded_procs": 1001},
    ]
    text = render(meta, runs, mem)
    rows = {tuple(c.strip() for c in line.strip("|").split("|")[:2]): line
            for line in text.splitlines() if line.startswith("| ")}
    on32 = rows[("select-c256-on32", "transaction")]
    assert "| 32 (queue) " in on32, on32
    assert "1.50 (1.50–1.50)" in on32 and "20.0 / 30.0" in on32, on32
    assert "skipped (1)" in rows[("select-c10-prepared", "transaction")]
    prepared = rows[("select-c10-prepared", "session")]
    assert "not available" in prepared and "20.0 / –" in prepared, prepared
    assert ("select-c256-on32", "session") not in rows
    assert "120.0 (1001)" in rows[("transaction", "20")] and "skipped (2)" in rows[("session", "100")]
    assert "with 1000 idle clients" in text and "2 pgbouncer processes per pool" in text
    assert "(2) " + MEM_SKIP_NOTE in text
    print("selftest passed")


def main(argv):
    cmd = argv[1] if len(argv) > 1 else ""
    if cmd == "free-ports":
        socks, ports = [], []
        for _ in range(int(argv[2])):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
            ports.append(s.getsockname()[1])
        for s in socks:
            s.close()
        print(" ".join(map(str, ports)))
    elif cmd == "tree":
        print(" ".join(map(str, tree(*(int(a) for a in argv[2:])))))
    elif cmd == "ticks":
        print(ticks(*(int(a) for a in argv[2:])))
    elif cmd == "clk-tck":
        print(CLK_TCK)
    elif cmd == "idle-mem":
        idle_mem(int(argv[2]), [int(a) for a in argv[3].split(",")], int(argv[4]), argv[5], argv[6])
    elif cmd == "parse":
        r = parse(argv[2])
        if r is None:
            return 1
        print(json.dumps(r))
    elif cmd == "record":
        record(*argv[2:])
    elif cmd == "table":
        table(argv[2])
    elif cmd == "selftest":
        selftest()
    else:
        print(__doc__, file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
