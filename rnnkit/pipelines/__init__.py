"""Pipelines: a task = data + model + loss + metrics, handed to the Trainer; one run folder each."""
