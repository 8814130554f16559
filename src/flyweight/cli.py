"""The ``flyweight`` command: the same Hydra overrides as ``python run.py``.

``flyweight [SUBCOMMAND] [key=value ...]``: a subcommand is a shorthand for ``experiment=SUBCOMMAND``
(``flyweight layers layers.tokens=64``); with none, the embedded default runs.
``flyweight data fetch corpus=english`` builds a named corpus and its token cache instead.
"""

from __future__ import annotations

import sys

# subcommand -> experiment it selects
SUBCOMMANDS: dict[str, str] = {
    "layers": "layers",
    "imagenet-eval": "imagenet-t2tvit-eval",
    "fmnist-t2t": "fmnist-t2tvit",
    "models": "models",
    "bench": "bench",
    "compare": "compare",
}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["data"]:  # flyweight data fetch corpus=NAME: the named corpora (flyweight.data.build)
        from flyweight.data.build import main as data_main
        return data_main(argv[1:])
    if argv and not argv[0].startswith("-") and "=" not in argv[0]:
        name = argv.pop(0)
        if name not in SUBCOMMANDS:
            print(f"flyweight: unknown subcommand {name!r}; choose from {', '.join(SUBCOMMANDS)} "
                  "or pass Hydra overrides (experiment=...)", file=sys.stderr)
            return 2
        argv.insert(0, f"experiment={SUBCOMMANDS[name]}")
    from flyweight.hydra_main import main as hydra_main

    sys.argv = ["flyweight", *argv]
    hydra_main()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
