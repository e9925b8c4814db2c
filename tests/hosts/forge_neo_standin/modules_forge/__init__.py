# Stand-in for Forge Neo modules_forge/__init__.py: its presence matters (asag.hosts.detect probes it).
