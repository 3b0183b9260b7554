"""Synthetic datasets: recipes, motion (pybullet's motion capture, procedural), detector noise, built-in rigs."""
