# Stand-in for Forge Neo backend/nn/ (a package marker there): flux.py and chroma.py are Neo's,
# the UNet comes from ../../forge_standin/backend/nn (Neo kept lllyasviel's file).
from pathlib import Path

__path__.append(str(Path(__file__).resolve().parents[3] / "forge_standin" / "backend" / "nn"))
