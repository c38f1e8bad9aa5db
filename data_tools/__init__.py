"""Data tools for event-centric pretraining: robot episodes in, event shards out.

Robot episodes arrive in a LeRobot layout (v2.1 or v3.0) with events: an ``events.jsonl``
sidecar (hierarchical captions with frame spans) or the dataset's own subtask / language
annotations. ``validate`` checks the events, ``sync`` lines video up with actions,
``cluster`` assigns vision-language and action clusters, ``build-shards`` cuts one WebDataset
sample per event and ``inspect`` summarises the result. ``python -m data_tools --help`` lists
the verbs.
"""
