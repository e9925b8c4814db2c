# Stand-in for Forge Neo backend/patcher/__init__.py (a package marker there). The modules Neo did not
# change come from ../forge_standin (see README.md).
from pathlib import Path

__path__.append(str(Path(__file__).resolve().parents[3] / "forge_standin" / "backend" / "patcher"))
