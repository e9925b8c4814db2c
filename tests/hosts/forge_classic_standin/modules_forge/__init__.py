# Stand-in for Forge Classic modules_forge/__init__.py: its presence matters (asag.hosts.detect probes it).
