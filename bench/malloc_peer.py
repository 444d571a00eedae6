"""PyTorch peers with Vitrine's malloc settings, for bench/inference.py and train_speed.py.

vitrine::keep_freed_memory (src/core/memory.cpp) sets glibc's mmap threshold to 1 GiB and
its trim threshold to 2 GiB with mallopt at start-up. glibc reads the same settings for a
new process from GLIBC_TUNABLES, so a bench re-runs itself as a child process with them to
time PyTorch under the conditions Vitrine runs in.
"""
import json
import os
import subprocess
import sys

KEEP_FREED_MEMORY = ("glibc.malloc.mmap_threshold=1073741824:"
                     "glibc.malloc.trim_threshold=2147483647")


def run_with_vitrine_malloc(script, args):
    """Runs `python3 script args` with Vitrine's malloc settings; its last JSON line."""
    env = dict(os.environ, GLIBC_TUNABLES=KEEP_FREED_MEMORY)
    proc = subprocess.run([sys.executable, os.path.abspath(script)] + [str(a) for a in args],
                          capture_output=True, text=True, env=env)
    return last_json_line(proc)


def last_json_line(proc):
    """A peer process's result: its last JSON line, or its last error line raised."""
    lines = [l for l in proc.stdout.splitlines() if l.startswith("{")]
    if not lines:
        tail = proc.stderr.strip().splitlines()[-1:] or [f"exited with {proc.returncode}"]
        raise RuntimeError(tail[0])
    return json.loads(lines[-1])
