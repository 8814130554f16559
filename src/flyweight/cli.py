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


DESCRIPTIONS: dict[str, str] = {
    "compare": "the comparison report: dense / SS1 / Monarch / low-rank trained, evaluated and timed "
               "(the default; experiment=compare-gpu for GPT-2 small at 100M tokens each)",
    "layers": "speed of every linear kind at given shapes",
    "models": "GPT-2 sizes with every kind: parameters, FLOPs, speed",
    "bench": "layers + models in one run",
    "fmnist-t2t": "the Fashion-MNIST stand-in: T2T-ViT with approximate attention",
    "imagenet-eval": "ImageNet top-1/top-5 of a T2T-ViT checkpoint",
    "data": "data fetch corpus=NAME: build a named English corpus and its token cache (english, english_small)",
}


def usage() -> str:
    lines = ["usage: flyweight [SUBCOMMAND] [key=value ...]   (the same Hydra overrides as python run.py)", "",
             "subcommands:"]
    lines += [f"  {name:<14} {DESCRIPTIONS.get(name, '')}" for name in [*SUBCOMMANDS, "data"]]
    lines += ["", "with no subcommand the default comparison runs; experiment=NAME selects any experiment",
              "(tiny-lm, wt103/gpt2, wt103/gpt2-ss1, ...); --cfg job prints the resolved config;",
              "--hydra-help shows Hydra's own options."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in ("-h", "--help", "help"):
        print(usage())
        return 0
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
