"""`python -m bench.drill [--objects N] [--faults N]` runs the chaos drill; `--soak SECONDS` the leak soak.

Exit status 0 when nothing was lost, duplicated or left unexplained (the soak: always 0 once it ran; read the
slopes).
"""

from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.drill", description=__doc__)
    parser.add_argument("--objects", type=int, default=5000, help="objects to send at least (default 5000)")
    parser.add_argument("--faults", type=int, default=30, help="faults to inject (default 30)")
    parser.add_argument("--gap", type=float, default=6.0, help="mean seconds between faults (default 6)")
    parser.add_argument("--threads", type=int, default=6, help="client threads (default 6)")
    parser.add_argument("--settle", type=float, default=300.0, help="seconds allowed to settle (default 300)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--soak", type=float, default=None, metavar="SECONDS", help="run the leak soak instead")
    parser.add_argument("--warmup", type=float, default=60.0, help="soak: seconds left out of the slopes")
    args = parser.parse_args(argv)
    if args.soak is not None:
        from bench.drill.soak import run_soak

        print(run_soak(args.soak, warmup_s=args.warmup, threads=args.threads).summary(), flush=True)
        return 0
    from bench.drill.drill import run_drill

    result = run_drill(
        objects=args.objects, faults=args.faults, threads=args.threads, gap_s=args.gap, settle_s=args.settle,
        seed=args.seed,
    )  # fmt: skip
    print(result.summary(), flush=True)
    return 0 if result.ok else 1


if __name__ == "__main__":
    sys.exit(main())
