#!/usr/bin/env python3
"""Helpers for contrib/bench/run.sh (standard library only).

  bench.py free-ports N                 N free TCP ports on 127.0.0.1
  bench.py tree PID                     PID and its live descendants
  bench.py ticks PID                    CPU clock ticks of PID's process tree
  bench.py idle-mem PORT PID N DB USER  PSS of PID's tree, idle and with N clients
  bench.py parse FILE                   tps, latency, transactions of a pgbench output
  bench.py table DIR                    the results table of a run directory

CPU: for every process of the tree, utime + stime + cutime + cstime from
/proc/<pid>/stat. A worker that has exited and been reaped is in its
parent's cutime/cstime, a live one is counted itself, so the sum covers all
the processes the pooler ever had.
"""

import json
import os
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


def tree(root):
    """root and all its live descendants, parents before children."""
    children = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        fields = _stat(name)
        if fields is None:
            continue
        ppid = int(fields[1])
        children.setdefault(ppid, []).append(int(name))
    if _stat(root) is None:
        return []
    out, todo = [], [root]
    while todo:
        pid = todo.pop(0)
        out.append(pid)
        todo.extend(sorted(children.get(pid, [])))
    return out


def ticks(root):
    total = 0
    for pid in tree(root):
        fields = _stat(pid)
        if fields is None:
            continue
        # fields[0] is the state (field 3); utime is field 14.
        utime, stime, cutime, cstime = (int(x) for x in fields[11:15])
        total += utime + stime + cutime + cstime
    return total


def pss_kib(root):
    total, procs = 0, 0
    for pid in tree(root):
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


def idle_mem(port, root, n, db, user):
    time.sleep(0.5)
    base, base_procs = pss_kib(root)
    socks = []
    try:
        for _ in range(n):
            s = socket.create_connection(("127.0.0.1", port), timeout=30)
            s.sendall(_startup(db, user))
            socks.append(s)
        for s in socks:
            _until_ready(s)
        time.sleep(1.0)
        loaded, procs = pss_kib(root)
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
    with open(os.path.join(d, "runs.jsonl"), "a") as f:
        f.write(json.dumps(r) + "\n")
    if r["status"] == "ok":
        extra = f", {r['cpu_per_1k']:.3f} CPU s/1k tx" if r.get("cpu_per_1k") is not None else ""
        lat = f"{r['lat_ms']:.3f} ms" if r.get("lat_ms") is not None else "? ms"
        print(f"{r['tps']:>10,.0f} tps  {lat}{extra}")
    else:
        print(r["status"])


# ---------------------------------------------------------------- table

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

    # Results per (workload, mode, target): list of runs.
    cells = {}
    for r in runs:
        cells.setdefault((r["workload"], r["mode"], r["target"]), []).append(r)

    def ok(rs):
        return [r for r in rs if r.get("status") == "ok"]

    def med(rs, key):
        vals = [r[key] for r in ok(rs) if r.get(key) is not None]
        return statistics.median(vals) if vals else None

    def by_round(rs, key):
        return {r["round"]: r[key] for r in ok(rs) if r.get(key) is not None}

    lines = []
    out = lines.append
    out(f"pgcorral benchmark — {meta['started']}")
    out(f"machine: {meta['nproc']} CPUs, {meta['cpu']}, Linux {meta['kernel']}, {meta['mem']}")
    out(f"versions: {meta['postgres']}; {meta['pgbouncer']}; {meta['pgbench']}; pgcorral {meta['pgcorral']}")
    out(f"runs: {meta['rounds']} round(s) × {meta['duration']} s per cell, interleaved "
        f"(direct, pgbouncer, pgcorral per workload, every round); pgbench -j {meta['jobs']} -n, "
        f"over TCP 127.0.0.1; PostgreSQL {meta['pg_settings']}")
    out("")
    out("TPS and latency: medians over rounds. Ratios: of the medians, (range of the per-round ratios).")
    out("CPU: pooler CPU seconds per 1,000 transactions, all its processes (user + system, reaped children included).")
    out("")
    hdr = ["workload", "mode", "pool", "direct TPS", "pgbouncer TPS", "pgcorral TPS",
           "pgcorral/pgbouncer", "pgcorral/direct", "latency ms d / b / c",
           "CPU s/1k tx b / c", "CPU pgcorral/pgbouncer"]
    rows = []
    skipped_note = None
    for w in meta["workloads"]:
        for m in meta["modes"]:
            if m not in w["modes"]:
                rows.append([w["name"], m, "", "", "", "skipped (1)", "", "", "", "", ""])
                skipped_note = w["skip_note"]
                continue
            d_rs = cells.get((w["name"], "-", "direct"), [])
            b_rs = cells.get((w["name"], m, "pgbouncer"), [])
            c_rs = cells.get((w["name"], m, "pgcorral"), [])
            pool = meta["pools"][m]
            if w["clients"] > pool:
                pool_s = f"{pool} (queue)"
            else:
                pool_s = str(pool)
            d_tps, b_tps, c_tps = med(d_rs, "tps"), med(b_rs, "tps"), med(c_rs, "tps")
            c_cell = _fmt(c_tps)
            if not ok(c_rs):
                na = [r for r in c_rs if r.get("status") == "unavailable"]
                c_cell = "not available" if na or not c_rs else "failed"
            elif len(ok(c_rs)) < len(c_rs):
                c_cell += f" ({len(c_rs) - len(ok(c_rs))} failed)"
            b_cell = _fmt(b_tps) if ok(b_rs) else ("failed" if b_rs else "–")
            if ok(b_rs) and len(ok(b_rs)) < len(b_rs):
                b_cell += f" ({len(b_rs) - len(ok(b_rs))} failed)"
            bd, bb, bc = by_round(d_rs, "tps"), by_round(b_rs, "tps"), by_round(c_rs, "tps")
            r_cb = [_ratio(bc[k], bb[k]) for k in bc if k in bb]
            r_cd = [_ratio(bc[k], bd[k]) for k in bc if k in bd]
            lat = " / ".join(_fmt(med(x, "lat_ms"), 3) for x in (d_rs, b_rs, c_rs))
            b_cpu, c_cpu = med(b_rs, "cpu_per_1k"), med(c_rs, "cpu_per_1k")
            cb, cc = by_round(b_rs, "cpu_per_1k"), by_round(c_rs, "cpu_per_1k")
            r_cpu = [_ratio(cc[k], cb[k]) for k in cc if k in cb]
            rows.append([
                w["name"], m, pool_s, _fmt(d_tps), b_cell, c_cell,
                _ratio_cell(r_cb, _ratio(c_tps, b_tps)),
                _ratio_cell(r_cd, _ratio(c_tps, d_tps)),
                lat,
                f"{_fmt(b_cpu, 3)} / {_fmt(c_cpu, 3)}",
                _ratio_cell(r_cpu, _ratio(c_cpu, b_cpu)),
            ])
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(hdr)]
    out("| " + " | ".join(h.ljust(widths[i]) for i, h in enumerate(hdr)) + " |")
    out("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for r in rows:
        out("| " + " | ".join(c.ljust(widths[i]) for i, c in enumerate(r)) + " |")
    out("")
    if mem:
        out("Memory, PSS summed over the pooler's processes (MiB): idle, and with 100 idle clients connected")
        out("")
        mh = ["mode", "pool", "pgbouncer idle", "pgbouncer 100 clients", "pgcorral idle",
              "pgcorral 100 clients (processes)", "pgcorral/pgbouncer"]
        mrows = []
        for m in meta["modes"]:
            get = {x["target"]: x for x in mem if x["mode"] == m}
            b, c = get.get("pgbouncer"), get.get("pgcorral")

            def mib(x, k):
                return f"{x[k] / 1024:.1f}" if x and x.get(k) is not None else "–"
            c_loaded = mib(c, "loaded_kib")
            if c and c.get("status") != "ok":
                c_loaded = c.get("status")
            elif c:
                c_loaded += f" ({c['loaded_procs']})"
            ratio = "–"
            if b and c and b.get("loaded_kib") and c.get("loaded_kib"):
                ratio = f"{c['loaded_kib'] / b['loaded_kib']:.1f}"
            mrows.append([m, str(meta["pools"][m]), mib(b, "idle_kib"), mib(b, "loaded_kib"),
                          mib(c, "idle_kib"), c_loaded, ratio])
        mw = [max(len(h), *(len(r[i]) for r in mrows)) for i, h in enumerate(mh)]
        out("| " + " | ".join(h.ljust(mw[i]) for i, h in enumerate(mh)) + " |")
        out("|" + "|".join("-" * (w + 2) for w in mw) + "|")
        for r in mrows:
            out("| " + " | ".join(c.ljust(mw[i]) for i, c in enumerate(r)) + " |")
        out("")
    if skipped_note:
        out("(1) " + skipped_note)
    for note in meta.get("notes", []):
        out("* " + note)
    print("\n".join(lines))


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
        print(" ".join(map(str, tree(int(argv[2])))))
    elif cmd == "ticks":
        print(ticks(int(argv[2])))
    elif cmd == "clk-tck":
        print(CLK_TCK)
    elif cmd == "idle-mem":
        idle_mem(int(argv[2]), int(argv[3]), int(argv[4]), argv[5], argv[6])
    elif cmd == "parse":
        r = parse(argv[2])
        if r is None:
            return 1
        print(json.dumps(r))
    elif cmd == "record":
        record(*argv[2:])
    elif cmd == "table":
        table(argv[2])
    else:
        print(__doc__, file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
