"""Evaluation of trained checkpoints: closed-loop rollouts in a simulator and open-loop action
error on held-out events (``python -m wallwm_pretrain.eval --help``).

- :mod:`.sampler`: rectified-flow sampling of an event (or chunk) from the current observation;
- :mod:`.policy`: a checkpoint as a policy (normalisation, captions, planning);
- :mod:`.planners`: the ways of planning (scripted events, predicted events, chunks, unified
  chunks): what conditions each plan and how much of it runs, one file each;
- :mod:`.metaworld`: closed-loop episodes in Meta-World, one loop for every planner;
- :mod:`.conditioner`: a trained text conditioner that predicts the next event;
- :mod:`.remote`: a policy server (``python -m wallwm_pretrain.serve``) as a policy (``--server``);
- :mod:`.adapter`: environment observations -> the model's views and state, actions back (YAML);
- :mod:`.gym_loop`: closed-loop episodes of any gymnasium-style environment through a server;
- :mod:`.openloop`: action error of denoised events against held-out shards;
- :mod:`.report`: success rates with confidence intervals, frame strips, the results table.
"""
