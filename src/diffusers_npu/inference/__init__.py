"""Inference for the ``test_infer/`` scripts: flags (:mod:`.args`), pipeline loading and adapters
(:mod:`.pipelines`), fixed latents and per-step noise (:mod:`.noise`), and the timed run (:mod:`.run`).
Sampler names live in :mod:`diffusers_npu.samplers`.
"""
