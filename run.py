"""``python run.py [experiment=NAME] [key=value ...]``: run a flyweight job (Hydra overrides)."""

from flyweight.hydra_main import main

if __name__ == "__main__":
    main()
