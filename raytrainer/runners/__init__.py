"""Runners: what a user starts. One small adapter per way of running a trainer.

``local`` runs it in this process; ``ray_train`` runs it as Ray Train workers. Each builds the
trainer from the three inputs (``raytrainer.build``) and calls ``train()``; none holds training
logic. ``result`` is what they all report, and the marker a finished run leaves.
"""
