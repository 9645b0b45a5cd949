"""Command-line plumbing shared by the examples: the options every example takes, the
--quick / full presets for the options left unset, and --threads applied."""
from __future__ import annotations

import argparse

import fusedrnn


def parser(doc: str) -> argparse.ArgumentParser:
    """An ArgumentParser described by the first line of `doc`, with --seed, --threads,
    --quick and --no-progress already added."""
    p = argparse.ArgumentParser(description=doc.splitlines()[0])
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, help="fusedrnn threads (default: library default)")
    p.add_argument("--quick", action="store_true", help="a short run (a few seconds)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p


def parse(p: argparse.ArgumentParser, argv, quick: dict, full: dict) -> argparse.Namespace:
    """Parses argv; every option of the preset (`quick` with --quick, else `full`) left unset
    takes the preset's value; --threads is applied (fusedrnn.set_num_threads)."""
    args = p.parse_args(argv)
    for key, value in (quick if args.quick else full).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if args.threads:
        fusedrnn.set_num_threads(args.threads)
    return args
