"""Stand-in of Forge's ``modules`` package for the UI tests under gradio 4.40 (Forge, reForge)."""
