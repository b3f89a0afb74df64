"""User tools around the pipeline: demo, inspect, report, doctor, reference."""
