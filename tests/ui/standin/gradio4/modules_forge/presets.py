"""Stand-in of Forge Neo 2.26's ``webui/modules_forge/presets.py`` (exo101/sd-webui-forge-neo-v3
5692d2d): the UI presets, one per model architecture (``PresetArch``). Haoming02's later neo
commits add ``ltx2`` and ``ideogram``."""
from enum import Enum


class PresetArch(Enum):
    sd = 1  # SD1
    xl = 2  # SDXL
    flux = 3  # Flux.1
    klein = 4  # Flux.2
    qwen = 5  # Qwen-Image
    lumina = 6  # Lumina-Image-2.0
    zit = 7  # Z-Image-Turbo
    wan = 8  # Wan2.2
    anima = 9  # Anima
    ernie = 10  # Ernie-Image
    pid = 11  # PiD
    krea = 12  # Krea2

    @staticmethod
    def choices() -> list[str]:
        return [preset.name for preset in PresetArch]
