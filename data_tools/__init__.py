"""Data tools for event-centric pretraining: robot episodes in, event shards out.

Robot episodes arrive in the LeRobot v3.0 layout with an ``events.jsonl`` sidecar
(hierarchical captions with frame spans); ``build-shards`` cuts one WebDataset sample per
event. ``python -m data_tools --help`` lists the verbs.
"""
