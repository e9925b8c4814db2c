# Stand-in for Forge Neo backend/modules/ (a package marker there): k_model.py and k_prediction.py
# are Neo's; the rest comes from ../../forge_standin/backend/modules.
from pathlib import Path

__path__.append(str(Path(__file__).resolve().parents[3] / "forge_standin" / "backend" / "modules"))
