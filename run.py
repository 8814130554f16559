"""Entry point: ``python run.py`` runs flyweight's main job on its embedded default.

Until the training and comparison jobs land, the default is the layer table.
"""

from flyweight.cli import main

if __name__ == "__main__":
    raise SystemExit(main(["layers"]))
