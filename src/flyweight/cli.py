"""The ``flyweight`` command: ``flyweight <subcommand> [args]``."""

from __future__ import annotations

import sys

SUBCOMMANDS = {
    "layers": ("flyweight.bench.layers", "parameters, FLOPs, CPU latency and projection error of every linear kind"),
}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print("usage: flyweight <subcommand> [args]\n\nsubcommands:")
        for name, (_, doc) in SUBCOMMANDS.items():
            print(f"  {name:10s} {doc}")
        return 0
    name, rest = argv[0], argv[1:]
    if name not in SUBCOMMANDS:
        print(f"flyweight: unknown subcommand {name!r}; choose from {', '.join(SUBCOMMANDS)}", file=sys.stderr)
        return 2
    import importlib

    importlib.import_module(SUBCOMMANDS[name][0]).main(rest)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
