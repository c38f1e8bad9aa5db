"""Simulators shared by data recording (``data_tools record-metaworld``) and closed-loop
evaluation (``wallwm_pretrain.eval``).

Both sides must see the world the same way: the same environment, the same seeded layouts,
the same cameras rendered upright at the same size and the same area resize. Keeping that code
here, rather than in either consumer, lets the training package evaluate without depending on
the offline data tools, at the cost of one more top-level package to install.

- :mod:`sim.errors`: the error type every module here raises for problems a user can fix;
- :mod:`sim.imageops`: area resizing of uint8 frames (numpy only);
- :mod:`sim.metaworld`: Meta-World tasks, environment, cameras and headless OpenGL.
"""
