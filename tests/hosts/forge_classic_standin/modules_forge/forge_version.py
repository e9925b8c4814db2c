# Stand-in for Forge Classic modules_forge/forge_version.py (5136ce20): the line names itself here;
# asag.hosts.detect.host_name reads `version`.
version = "classic"
