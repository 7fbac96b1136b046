"""A host whose clock is off: an LD_PRELOAD shim that shifts the wall clock of a process.

It shifts CLOCK_REALTIME (and CLOCK_REALTIME_COARSE), gettimeofday and time by
ERRANDS_CHAOS_CLOCK_OFFSET_SECONDS, and nothing else: the monotonic clock, by
which Python times its waits and errands its leases locally, keeps going as
the kernel's. (libfaketime shifts the monotonic clock too, which hangs
Python's timed waits.) Built on the spot with the system's C compiler, so the
harness ships source, not a binary.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Mapping
from pathlib import Path

from errands.errors import ConfigurationError

OFFSET_VARIABLE = "ERRANDS_CHAOS_CLOCK_OFFSET_SECONDS"

SOURCE = r"""
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdlib.h>
#include <sys/time.h>
#include <time.h>

typedef int (*clock_gettime_fn)(clockid_t, struct timespec *);

static clock_gettime_fn real_clock_gettime;
static long long offset_ns;

__attribute__((constructor)) static void load(void) {
    const char *seconds = getenv("ERRANDS_CHAOS_CLOCK_OFFSET_SECONDS");
    real_clock_gettime = (clock_gettime_fn)dlsym(RTLD_NEXT, "clock_gettime");
    offset_ns = seconds ? (long long)(strtod(seconds, NULL) * 1e9) : 0;
}

int clock_gettime(clockid_t id, struct timespec *ts) {
    if (!real_clock_gettime) load();
    int failed = real_clock_gettime(id, ts);
    if (!failed && (id == CLOCK_REALTIME || id == CLOCK_REALTIME_COARSE)) {
        long long ns = (long long)ts->tv_sec * 1000000000LL + ts->tv_nsec + offset_ns;
        ts->tv_sec = ns / 1000000000LL;
        ts->tv_nsec = ns % 1000000000LL;
        if (ts->tv_nsec < 0) {
            ts->tv_nsec += 1000000000LL;
            ts->tv_sec -= 1;
        }
    }
    return failed;
}

int gettimeofday(struct timeval *restrict tv, void *restrict tz) {
    struct timespec ts;
    (void)tz;  /* obsolete: no time zone is reported */
    if (clock_gettime(CLOCK_REALTIME, &ts)) return -1;
    if (tv) {
        tv->tv_sec = ts.tv_sec;
        tv->tv_usec = ts.tv_nsec / 1000;
    }
    return 0;
}

time_t time(time_t *t) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    if (t) *t = ts.tv_sec;
    return ts.tv_sec;
}
"""


def build(directory: Path) -> Path:
    """Compile the shim into `directory`; its path, for LD_PRELOAD."""
    compiler = shutil.which("cc")
    if compiler is None:
        raise ConfigurationError("clock skew needs a C compiler, cc, to build its LD_PRELOAD shim")
    source, library = directory / "skew.c", directory / "skew.so"
    source.write_text(SOURCE)
    result = subprocess.run(
        [compiler, "-shared", "-fPIC", "-O2", "-o", str(library), str(source), "-ldl"],
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        raise ConfigurationError(f"could not build the clock shim: {result.stderr.strip()}")
    return library


def skewed(env: Mapping[str, str], library: Path, offset_seconds: float) -> dict[str, str]:
    """`env` for a process whose wall clock is `offset_seconds` off."""
    preload = " ".join(p for p in (str(library), env.get("LD_PRELOAD", "")) if p)
    return {**env, "LD_PRELOAD": preload, OFFSET_VARIABLE: repr(offset_seconds)}
