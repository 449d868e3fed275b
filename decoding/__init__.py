"""Reward-guided decoding: policy, scorers (RM/PRM, REAR, GenRM) and search methods."""
