# Stand-in for Forge Neo modules_forge/forge_version.py (exo101/sd-webui-forge-neo-v3 5692d2d): the
# line names itself here; asag.hosts.detect.host_name reads `version`.
version = "neo"
release = "2.26"
