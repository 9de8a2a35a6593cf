"""End-to-end tests: the seed scenarios, the demo, the retraining loop."""
