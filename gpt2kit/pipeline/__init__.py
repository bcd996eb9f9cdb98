"""One command from a text to a model to talk to: prepare, pretrain, instruction-tune, evaluate, export, report.

:mod:`gpt2kit.pipeline.config` (settings and sizes, torch-free), :mod:`gpt2kit.pipeline.run` (the stages),
:mod:`gpt2kit.pipeline.state` (``RUN/pipeline.json``), :mod:`gpt2kit.pipeline.report` (``RUN/report.md``).
"""
