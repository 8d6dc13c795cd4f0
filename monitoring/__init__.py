"""Monitoring: drift statistics (pure numpy), drift reports, their CLI.

Imports the light tier of eldefect (settings, stats, card) and db; never torch, workers or the
gateway, so beat and the CLI stay light and the gateway may import it.
"""
