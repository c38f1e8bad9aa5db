"""The multi-stage WALL-WM recipe: stages in order, each a resumable training run."""
