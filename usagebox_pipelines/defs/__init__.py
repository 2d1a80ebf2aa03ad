"""Dagster wiring: thin assets, checks, jobs, schedules and sensors over the `stages` layer."""

import warnings

import dagster as dg

# Single-run backfills of hourly partitions are the design, not an experiment we want nagged about.
warnings.filterwarnings("ignore", category=dg.BetaWarning)
