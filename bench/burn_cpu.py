"""Takes a fixed share of one core, to measure how a row fares with less CPU left to it.

Usage: python3 bench/burn_cpu.py SHARE   (SHARE from 0 to 1, e.g. 0.3)

Busy for SHARE of every 2 ms period and asleep for the rest, so the load arrives in short
slices as a store's work does, rather than as one long busy spell the scheduler can move
aside.
"""

import sys
import time

PERIOD = 0.002


def main() -> None:
    try:
        (share,) = map(float, sys.argv[1:])
    except ValueError:
        sys.exit("usage: python3 bench/burn_cpu.py SHARE   (SHARE between 0 and 1)")
    if not 0.0 < share < 1.0:
        sys.exit("SHARE must be between 0 and 1")
    busy = PERIOD * share
    while True:
        until = time.perf_counter() + busy
        while time.perf_counter() < until:
            pass
        time.sleep(PERIOD - busy)


if __name__ == "__main__":
    main()
