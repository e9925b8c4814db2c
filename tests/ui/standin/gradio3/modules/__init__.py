"""Stand-in of the WebUI's ``modules`` package for the UI tests under gradio 3.41.2 (A1111)."""
