"""Training: config choices built into objects, the pure train step, the one loop and its handlers."""
