"""RigPose: 3D human-pose lifters trained from calibrated multi-camera rigs with 2D supervision only."""
__version__ = "0.1.0"
