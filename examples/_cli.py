"""Command-line plumbing shared by the examples: the options every example takes and the
--quick / full presets for the options left unset."""
from __future__ import annotations

import argparse


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
    takes the preset's value."""
    args = p.parse_args(argv)
    for key, value in (quick if args.quick else full).items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    return args
