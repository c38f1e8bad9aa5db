"""The memory plan: what a model costs per rank before any GPU is touched.

``python -m wallwm_pretrain.plan --config configs/X.yaml --gpus 8 parallel.tp=2 ...`` builds the
model of a run config on the meta device (shapes only: no memory, no weights) and prints

- parameters per tower (video tower, action tower, conditioning), whole and per pipeline rank;
- per-rank memory of weights, gradients and optimizer state for the chosen TP x PP x DP layout
  and ``optim.muon_mode`` (the busiest rank: the pipeline rank with most parameters, and for
  owner mode the home with most Muon momentum, from the optimizer's own ownership plan);
- activation memory per microbatch, with and without recomputation, *measured*: one forward of
  the model on meta tensors of the run's sample shape with autograd's saved-tensor hooks
  counting what backward would keep (``measure.py``);
- matmul and attention FLOPs per sample, counted by ``torch.utils.flop_counter`` on the same
  meta forward.

It runs on a laptop CPU in seconds for a multi-billion-parameter preset.
"""
