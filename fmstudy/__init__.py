"""fmstudy: information-aware compute allocation over t in Brownian-bridge flow matching.

Layers (STUDY.md section 8): maths (``paths``, ``models``) -> study objects (``oracle``,
``data``) -> measurement and driving (later issues). Import what you need from the modules.
"""

__version__ = "0.1.0"
