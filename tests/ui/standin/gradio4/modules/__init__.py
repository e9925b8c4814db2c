"""Stand-in of Forge's ``modules`` package for the UI tests under gradio 4.40 (Forge, Forge Neo,
reForge). The modules that are the same on every host are in ../../common/modules."""
import os

__path__.append(os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "common", "modules"))
