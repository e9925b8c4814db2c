"""Stand-in of the WebUI's ``modules`` package for the UI tests under gradio 3.41.2 (A1111) and
3.43.2 (Forge Classic). The modules that are the same on every host are in ../../common/modules."""
import os

__path__.append(os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "common", "modules"))
