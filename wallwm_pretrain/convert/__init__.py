"""Model folders for the real video tower: tiny random models for tests and laptops
(``make-tiny``). Run as ``python -m wallwm_pretrain.convert SUBCOMMAND``."""
