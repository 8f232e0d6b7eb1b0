"""The data contracts between the Beam pipelines, the trainer and serving: one module per dataset family.

Each module names feature keys, vocabularies, node sets and edge sets once; the
pipelines write data with these names and the trainer, the exported models and
the predict commands read them from here (never re-declaring them). Nothing here
imports TensorFlow at import time.
"""
