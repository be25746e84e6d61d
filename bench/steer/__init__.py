"""Steering with one unit of a trained cell (``bench steer``): the intervention (``hook``), the
sampler (``sampling``), the scores (``scoring``) and the protocol that ties them (``protocol``)."""
from bench.steer.cli import add_steer_arguments, run_steer
from bench.steer.protocol import SteeringSettings, steer

__all__ = ["SteeringSettings", "add_steer_arguments", "run_steer", "steer"]
