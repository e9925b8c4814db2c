# Stand-in for Forge Neo backend/args.py (exo101/sd-webui-forge-neo-v3 5692d2d,
# webui/backend/args.py:148): `dynamic_args`, the process-wide settings the models read at call
# time. Only what the Flux model reads: the Kontext reference latents (none unless a test sets them).
class dynamic_args:
    ref_latents = []
    kontext = False
