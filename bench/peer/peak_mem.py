#!/usr/bin/env python3
"""Runs a command and records its peak device memory as the NVIDIA driver reports it.

    peak_mem.py --tag '{"tool": "warsha", "setting": "r16-all"}' --out runs.jsonl -- CMD ARGS...

Every 20 ms the driver (NVML) is asked for the device memory each compute process holds; the
figure for the command's process (and any child it starts) includes its CUDA context, cuBLAS
workspaces and whatever its allocator keeps cached, which is what a 4 GB card must fit. The
device-wide used memory is sampled too, and its rise over the value before the start is
reported beside it as a cross-check (valid when nothing else runs on the GPU).

The command's stdout passes through. If its last line that parses as a JSON object exists, the
object is extended with the measured figures and the tag and appended to --out; otherwise
a new object is written with the tag, the exit code and the figures.
"""

import argparse
import json
import os
import subprocess
import sys
import threading
import time


def descendants(pid):
    """PIDs of the process and all its descendants, read from /proc."""
    children = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(ppid, []).append(int(entry))
    out, stack = set(), [pid]
    while stack:
        p = stack.pop()
        if p in out:
            continue
        out.add(p)
        stack.extend(children.get(p, []))
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tag", default="{}", help="JSON object merged into the result")
    ap.add_argument("--out", required=True)
    ap.add_argument("--interval", type=float, default=0.02)
    ap.add_argument("cmd", nargs=argparse.REMAINDER)
    args = ap.parse_args()
    cmd = args.cmd[1:] if args.cmd and args.cmd[0] == "--" else args.cmd
    if not cmd:
        ap.error("no command given")

    import pynvml

    pynvml.nvmlInit()
    handle = pynvml.nvmlDeviceGetHandleByIndex(0)
    before = pynvml.nvmlDeviceGetMemoryInfo(handle).used / 2**20

    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    state = {"proc_peak": 0.0, "dev_peak": before, "pids": {proc.pid}}
    stop = threading.Event()

    def poll():
        n = 0
        while not stop.is_set():
            if n % 25 == 0:
                state["pids"] = descendants(proc.pid)
            n += 1
            try:
                total = 0.0
                for p in pynvml.nvmlDeviceGetComputeRunningProcesses(handle):
                    if p.pid in state["pids"] and p.usedGpuMemory is not None:
                        total += p.usedGpuMemory / 2**20
                state["proc_peak"] = max(state["proc_peak"], total)
                used = pynvml.nvmlDeviceGetMemoryInfo(handle).used / 2**20
                state["dev_peak"] = max(state["dev_peak"], used)
            except pynvml.NVMLError:
                pass
            time.sleep(args.interval)

    th = threading.Thread(target=poll, daemon=True)
    th.start()
    last_json = None
    for line in proc.stdout:
        sys.stdout.write(line)
        sys.stdout.flush()
        s = line.strip()
        if s.startswith("{"):
            try:
                obj = json.loads(s)
                if isinstance(obj, dict):
                    last_json = obj
            except json.JSONDecodeError:
                pass
    rc = proc.wait()
    stop.set()
    th.join()
    wall = time.perf_counter() - t0

    result = dict(last_json or {})
    result.update(json.loads(args.tag))
    result["exit_code"] = rc
    result["wall_s"] = round(wall, 1)
    if "peak_device_mib" in result and result.get("peak_device_mib") is not None:
        result["self_reported_peak_device_mib"] = result["peak_device_mib"]
    result["peak_device_mib"] = round(state["proc_peak"]) if state["proc_peak"] > 0 else None
    result["peak_method"] = f"nvml per-process usedGpuMemory, polled every {int(args.interval * 1000)} ms"
    result["device_used_delta_peak_mib"] = round(state["dev_peak"] - before)
    line = json.dumps(result)
    print("RESULT " + line, flush=True)
    with open(args.out, "a") as f:
        f.write(line + "\n")
    sys.exit(rc)


if __name__ == "__main__":
    main()
