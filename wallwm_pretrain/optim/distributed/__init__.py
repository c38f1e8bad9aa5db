"""Distributed Muon: each logical matrix orthogonalised once, on its home rank, with ZeRO-1 AdamW.

- :mod:`.plan`: logical matrices (fused weights split into Q, K, V / gate, up / K, V), their
  home ranks (LPT balancing on Newton-Schulz cost) and transfer buckets;
- :mod:`.layout`: where megatron-core fuses linear maps into one weight;
- :mod:`wallwm_pretrain.optim.tp_matrices` (beside this package, shared with the grad norm and
  the state pieces): whole matrices from tensor-parallel slices and back;
- :mod:`.muon`: the optimizer (owner and gather modes); :mod:`.muon_state` its momentum as a
  checkpoint sees it; :mod:`.transfers` its asynchronous all-to-all;
- :mod:`.home_reduce`: owner mode's gradients reduced straight to their homes inside megatron
  DDP's bucket sync (``optim.muon_reduce=home``);
- :mod:`.sharded_ns`: Newton-Schulz on tensor-parallel pieces through one all-reduce of the Gram
  matrix (``optim.muon_tp_ns=sharded``);
- :mod:`.adamw`: AdamW with its state sharded over data-parallel ranks;
- :mod:`.shard_reduce`: its gradients reduce-scattered into the shards inside megatron DDP's
  bucket sync (``optim.muon_reduce=home``);
- :mod:`.checkpoint`: every rank's share merged into the single-process layout;
- :mod:`.optimizer_set`: both under one :class:`~wallwm_pretrain.optim.sets.OptimizerSet`.

Process groups come in as :class:`~wallwm_pretrain.optim.groups.OptimizerGroups`; nothing here
creates one.
"""
